"""``fed site``: create, start and administer a party's site (docs/sites.md).

Only argparse is set up at import; the site extra is imported when a command runs, so
``fed run`` works without it and ``fed site ...`` names the install command if missing.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fed.site.errors import SiteError

ROLES = ("admin", "submitter", "viewer")


def run_site_command(prog: str, body: Callable[[], int]) -> int:
    """Check the extra, run ``body``, and print a site error as one clear line (exit 1)."""
    from fed.site.extra import require

    try:
        require()
        return body()
    except SiteError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _tls_files(args: argparse.Namespace) -> Any:
    from fed.site.config import TlsFiles
    from fed.site.errors import SiteConfigError

    if args.certs:
        d = Path(args.certs).resolve()
        return TlsFiles(cert=str(d / f"{args.party}.crt"), key=str(d / f"{args.party}.key"), ca_cert=str(d / "ca.crt"))
    if not (args.cert and args.key and args.ca):
        raise SiteConfigError("give --certs DIR (a `fed certs` directory) or all of --cert, --key and --ca")
    return TlsFiles(cert=str(Path(args.cert).resolve()), key=str(Path(args.key).resolve()),
                    ca_cert=str(Path(args.ca).resolve()))


def _init(args: argparse.Namespace) -> int:
    from fed.site.config import (
        RunnerConfig,
        build_site_config,
        load_federation,
        write_site,
    )
    from fed.site.core.policy import ApprovalPolicy
    from fed.site.errors import SiteConfigError

    federation = load_federation(Path(args.federation))
    policy = ApprovalPolicy(auto_accept_initiators=_split(args.auto_accept_initiators),
                            auto_accept_components=_split(args.auto_accept_components))
    if args.scheduler_only and args.ray_address:
        raise SiteConfigError("--scheduler-only runs no tasks: leave out --ray-address")
    runner = RunnerConfig(kind="none") if args.scheduler_only else RunnerConfig(ray_address=args.ray_address)
    config = build_site_config(Path(args.dir), args.party, federation, _tls_files(args), args.database, policy,
                               runner)
    path = write_site(Path(args.dir), config, force=args.force)
    _database(config)  # create and migrate it now, so errors show here
    print(f"site of party {config.party} written to {path}")
    print(f"  serves {config.url} (listens on {config.listen.host}:{config.listen.port})")
    print(f"  runs tasks on the Ray cluster at {config.runner.ray_address}" if config.runner.ray_address
          else "  schedules jobs, runs no tasks (--scheduler-only)" if args.scheduler_only
          else "  approves jobs, runs no tasks (no --ray-address)")
    print(f"next: fed site token create {args.dir} --role admin; fed site start {args.dir}")
    return 0


def _database(config: Any) -> Any:
    from fed.site.core.db import Database

    db = Database(config.database)
    db.migrate()
    return db


def _with_db(site_dir: str, body: Callable[[Any, Any], int]) -> int:
    from fed.site.config import load_site

    config = load_site(Path(site_dir))
    db = _database(config)
    try:
        return body(config, db)
    finally:
        db.close()


def _start(args: argparse.Namespace) -> int:
    from fed.site.server import serve

    def ready(config: Any) -> None:
        print(f"site of party {config.party} serving {config.url} (board: {config.url}/board/)", flush=True)

    serve(Path(args.dir), args.log_level, ready)
    return 0


def _token_create(args: argparse.Namespace) -> int:
    from fed.site.core.tokens import Role, create_token

    def body(config: Any, db: Any) -> int:
        with db.session() as s:
            token = create_token(s, Role(args.role), args.name or args.role)
        print(token)
        print(f"({args.role} token for {config.url}; shown only now, store it safely)", file=sys.stderr)
        return 0

    return _with_db(args.dir, body)


def _token_list(args: argparse.Namespace) -> int:
    from fed.site.core.tokens import list_tokens

    def body(_config: Any, db: Any) -> int:
        with db.session() as s:
            for t in list_tokens(s):
                print(f"{t['id']}  {t['role']:<9}  revoked={t['revoked']:<3}  {t['name']}")
        return 0

    return _with_db(args.dir, body)


def _component_add(args: argparse.Namespace) -> int:
    from fed.site.core.components import add_component

    def body(config: Any, db: Any) -> int:
        with db.session() as s:
            add_component(s, args.name, args.version, args.entrypoint, args.share_metrics)
        shared = "shared with partners" if args.share_metrics else "private"
        print(f"party {config.party} runs component {args.name} {args.version} = {args.entrypoint} "
              f"(metrics {shared})")
        return 0

    return _with_db(args.dir, body)


def _component_list(args: argparse.Namespace) -> int:
    from fed.site.core.components import list_components

    def body(_config: Any, db: Any) -> int:
        with db.session() as s:
            for c in list_components(s):
                shared = "  share-metrics" if c["share_metrics"] else ""
                print(f"{c['name']}  {c['version']}  {c['entrypoint']}{shared}")
        return 0

    return _with_db(args.dir, body)


def _status(args: argparse.Namespace) -> int:
    from fed.site.core import views

    def body(config: Any, db: Any) -> int:
        from fed.site.core import outbox, runs

        with db.session() as s:
            counts = views.count_jobs(s)
            going = runs.own_active(s, config.party)
            backlog = outbox.pending_count(s)
        print(f"party {config.party}, site {config.url}, database {db.engine.url.render_as_string(hide_password=True)}")
        print("jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
        print(f"runs of this party going: {len(going)}" + "".join(f"\n  {r}" for r in going))
        print(f"calls to other sites waiting for delivery: {backlog}")
        return 0

    return _with_db(args.dir, body)


def _handler(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    return lambda args: run_site_command(f"fed site {args.site_command}", lambda: fn(args))


def _add_init(sub: Any) -> None:
    p = sub.add_parser("init", help="write a site directory (site.yaml, database)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--party", required=True, help="this site's party (a party of the federation)")
    p.add_argument("--federation", required=True, metavar="FILE", help="federation.yaml: every party's site URL")
    p.add_argument("--certs", metavar="DIR", help="a `fed certs` directory (ca.crt, PARTY.crt, PARTY.key)")
    p.add_argument("--cert", help="this party's certificate (instead of --certs)")
    p.add_argument("--key", help="this party's private key (instead of --certs)")
    p.add_argument("--ca", help="CA bundle verifying the other parties (instead of --certs)")
    p.add_argument("--database", metavar="URL", help="postgresql://USER@HOST:PORT/DB (default: DIR/site.db, SQLite)")
    p.add_argument("--auto-accept-initiators", default="", metavar="A,B", help="accept jobs from these initiators...")
    p.add_argument("--auto-accept-components", default="", metavar="X,Y", help="...when every component is listed here")
    p.add_argument("--ray-address", default=None, metavar="URL",
                   help="dashboard of this party's Ray cluster, where tasks are submitted, e.g. "
                        "http://127.0.0.1:8265 (none: the site approves and schedules jobs but runs no task)")
    p.add_argument("--scheduler-only", action="store_true",
                   help="a third party holding no data: schedules the jobs naming it as scheduler, runs no task")
    p.add_argument("--force", action="store_true", help="replace an existing site.yaml")
    p.set_defaults(handler=_handler(_init))


def _demo(args: argparse.Namespace) -> int:
    from fed.site.demo import run

    return run(args)


def _add_demo(sub: Any) -> None:
    from fed.site import demo

    p = sub.add_parser("demo", help="three parties' sites and Ray clusters on this machine run the example job",
                       description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(p)
    p.set_defaults(handler=_handler(_demo))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``site`` subcommand group."""
    site = subparsers.add_parser(
        "site", help="run this party's site: the job service (needs the site extra)",
        description="A party's site: approves and runs federated jobs (docs/sites.md). "
                    'Install with: pip install -e ".[site]"',
    )
    sub = site.add_subparsers(dest="site_command", metavar="SUBCOMMAND", required=True)
    _add_init(sub)
    p = sub.add_parser("start", help="serve the site (HTTPS) until Ctrl+C")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.set_defaults(handler=_handler(_start))
    _add_demo(sub)
    p = sub.add_parser("status", help="this site's party, URL, database and job counts")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(handler=_handler(_status))
    token = sub.add_parser("token", help="client API tokens").add_subparsers(dest="token_command", required=True)
    p = token.add_parser("create", help="make a token (printed once; stored hashed)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--name", help="who or what uses it (default: the role)")
    p.set_defaults(handler=_handler(_token_create))
    p = token.add_parser("list", help="list tokens (never their values)")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(handler=_handler(_token_list))
    comp = sub.add_parser("component", help="components this party runs").add_subparsers(dest="component_command", required=True)
    p = comp.add_parser("add", help="register a component version")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--entrypoint", required=True, metavar="PKG.MOD:FUNC")
    p.add_argument("--version", required=True)
    p.add_argument("--share-metrics", action="store_true",
                   help="partners of a job may read the metrics this component logs here (default: private)")
    p.set_defaults(handler=_handler(_component_add))
    p = comp.add_parser("list", help="list registered components")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(handler=_handler(_component_list))
