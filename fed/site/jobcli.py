"""``fed job``: submit and follow jobs, and approve or reject them, through a site's
client API with a token.

Which site: ``--site DIR`` (its URL and CA from DIR/site.yaml) or ``--url`` and ``--ca``;
the token: ``--token`` or the RAYFED_SITE_TOKEN variable (so it stays out of the shell
history). RAYFED_SITE_URL and RAYFED_SITE_CA stand for ``--url`` and ``--ca``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fed.site.cli import run_site_command
from fed.site.errors import SiteConfigError

TOKEN_ENV, URL_ENV, CA_ENV = "RAYFED_SITE_TOKEN", "RAYFED_SITE_URL", "RAYFED_SITE_CA"


def _client(args: argparse.Namespace) -> Any:
    from fed.site.client import SiteClient
    from fed.site.config import load_site

    url, ca = args.url or os.environ.get(URL_ENV), args.ca or os.environ.get(CA_ENV)
    if args.site:
        config = load_site(Path(args.site))
        url, ca = url or config.url, ca or config.tls.ca_cert
    token = args.token or os.environ.get(TOKEN_ENV)
    missing = [what for what, v in (("--url (or --site DIR)", url), ("--ca (or --site DIR)", ca),
                                    (f"--token (or {TOKEN_ENV})", token)) if not v]
    if missing:
        raise SiteConfigError(f"which site and token? give {', '.join(missing)}")
    return SiteClient(url, token, ca)


def _print_job(job: dict[str, Any]) -> None:
    print(f"job {job['id']}  {job['state']}" + (f"  ({job['reason']})" if job.get("reason") else ""))
    print(f"  initiator {job['initiator']}, scheduler {job['scheduler']}, sync {job['sync_mode']}")
    for p in job["parties"]:
        why = f"  {p['reason']}" if p.get("reason") else ""
        print(f"  party {p['party']:<12} {p['approval']:<9}{why}")
    for t in job.get("tasks", []):
        parties = ", ".join(f"{pt['party']}={pt['state']}" for pt in t["parties"])
        print(f"  task  {t['name']:<12} {t['state']:<9} {t['component']} {t['version']}  [{parties}]")


def _emit(args: argparse.Namespace, data: Any, text: Callable[[Any], None]) -> int:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        text(data)
    return 0


def _print_list(jobs: list[dict[str, Any]]) -> None:
    if not jobs:
        print("no jobs")
    for job in jobs:
        decided = " ".join(f"{p['party']}:{p['approval']}" for p in job["parties"])
        print(f"{job['id']}  {job['state']:<17} initiator {job['initiator']:<10} {decided}")


_FINAL = ("succeeded", "failed", "rejected", "canceled", "timeout")


def _submit(args: argparse.Namespace, client: Any) -> int:
    job = client.submit(args.spec.model_dump(exclude_none=True))
    if not args.wait:
        return _emit(args, job, _print_job)
    return _follow(args, client, job["id"])


def _progress_line(job: dict[str, Any]) -> str:
    """One line: the job's state and every task x party (what changed is printed again)."""
    cells = [f"{t['name']}:" + ",".join(f"{pt['party']}={pt['state']}" for pt in t["parties"])
             for t in job.get("tasks", [])]
    return f"{job['state']:<17} " + "  ".join(cells)


def _follow(args: argparse.Namespace, client: Any, job_id: str) -> int:
    """Print the job's progress until it ends; exit 0 only if it succeeded."""
    import time

    print(f"job {job_id} submitted; following it (Ctrl+C stops following, not the job)", flush=True)
    last = ""
    while True:
        job = client.job(job_id)
        line = _progress_line(job)
        if line != last:
            print(time.strftime("%H:%M:%S ") + line, flush=True)
            last = line
        if job["state"] in _FINAL:
            break
        time.sleep(args.interval)
    if args.json:
        print(json.dumps(job, indent=2))
    else:
        _print_job(job)
    if job["state"] != "succeeded":
        print(f"job {job_id} {job['state']}: {job.get('reason', '')}; see `fed job status {job_id}` and "
              f"`fed job logs {job_id} TASK` at each party's site", file=sys.stderr)
        return 1
    return 0


def _logs(args: argparse.Namespace, client: Any) -> int:
    print(client.logs(args.job, args.task), end="")
    return 0


def _metric_rows(data: dict[str, Any]) -> list[list[Any]]:
    return [[m["party"], m["task"], m["name"], step, value, at]
            for m in data["metrics"] for step, value, at in m["points"]]


def _print_metrics(data: dict[str, Any]) -> None:
    rows = _metric_rows(data)
    if not rows:
        print("no metrics")
    for party, task, name, step, value, _at in rows:
        print(f"{party:<12} {task:<12} {name:<20} {'-' if step is None else step:>6}  {value:.6g}")
    for party, why in sorted(data.get("unavailable", {}).items()):
        print(f"(party {party}'s shared metrics unavailable: {why})")


def _metrics(args: argparse.Namespace, client: Any) -> int:
    data = client.metrics(args.job)
    if not args.csv:
        return _emit(args, data, _print_metrics)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["party", "task", "name", "step", "value", "at"])
    out.writerows(_metric_rows(data))
    return 0


_ACTIONS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "submit": _submit,
    "list": lambda a, c: _emit(a, c.jobs(a.state), _print_list),
    "status": lambda a, c: _emit(a, c.job(a.job), _print_job),
    "pending": lambda a, c: _emit(a, c.pending(), _print_list),
    "approve": lambda a, c: _emit(a, c.decide(a.job, True, a.reason), _print_job),
    "reject": lambda a, c: _emit(a, c.decide(a.job, False, a.reason), _print_job),
    "stop": lambda a, c: _emit(a, c.stop(a.job, a.reason), _print_job),
    "logs": _logs,
    "wait": lambda a, c: _follow(a, c, a.job),
    "metrics": _metrics,
}


def _run(args: argparse.Namespace) -> int:
    def body() -> int:
        if args.job_command == "submit":  # the site's own checks, before any call
            from fed.site.core.spec import load_spec_file

            args.spec = load_spec_file(args.file)
        with _client(args) as client:
            return _ACTIONS[args.job_command](args, client)

    return run_site_command(f"fed job {args.job_command}", body)


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", metavar="DIR", help="a site directory: its URL and CA")
    p.add_argument("--url", help=f"the site's URL (or {URL_ENV})")
    p.add_argument("--ca", metavar="FILE", help=f"CA bundle verifying the site (or {CA_ENV})")
    p.add_argument("--token", help=f"client API token (or {TOKEN_ENV})")
    p.add_argument("--json", action="store_true", help="print the site's JSON answer")
    p.set_defaults(handler=_run)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``job`` subcommand group."""
    job = subparsers.add_parser("job", help="submit, list and approve jobs at a site (needs the site extra)")
    sub = job.add_subparsers(dest="job_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("submit", help="propose a job (YAML/JSON spec) from this party's site")
    p.add_argument("file", metavar="JOB.yaml")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; exit 0 only if it succeeded")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between looks with --wait")
    _connection(p)
    p = sub.add_parser("wait", help="follow a job until it ends; exit 0 only if it succeeded")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between looks")
    _connection(p)
    p = sub.add_parser("stop", help="stop a job in every party (from any party's site)")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--reason", default="", help="shown to every party")
    _connection(p)
    p = sub.add_parser("logs", help="this party's own log tail of a task")
    p.add_argument("job", metavar="JOB")
    p.add_argument("task", metavar="TASK")
    _connection(p)
    p = sub.add_parser("list", help="jobs at the site, newest first")
    p.add_argument("--state", help="only jobs in this state")
    _connection(p)
    p = sub.add_parser("status", help="a job's parties, tasks and states")
    p.add_argument("job", metavar="JOB")
    _connection(p)
    p = sub.add_parser("pending", help="jobs waiting for this party's decision")
    _connection(p)
    p = sub.add_parser("metrics", help="a job's metrics: this party's and what partners share")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--csv", action="store_true", help="print CSV: party,task,name,step,value,at")
    _connection(p)
    for name, what in (("approve", "accept a job held for this party"), ("reject", "reject a job (ends it for all)")):
        p = sub.add_parser(name, help=what)
        p.add_argument("job", metavar="JOB")
        p.add_argument("--reason", default="", help="shown to every party")
        _connection(p)
