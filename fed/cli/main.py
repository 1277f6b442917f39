"""Entry point of the ``fed`` command: builds one argparse subparser per module.

To add a subcommand (e.g. ``fed audit``), write ``fed/cli/audit.py`` with a
``register(subparsers)`` function that adds its parser and calls
``parser.set_defaults(handler=...)`` (a callable taking the parsed
``argparse.Namespace`` and returning an exit code), then list the module in
:data:`SUBCOMMAND_MODULES`. A subcommand that accepts pass-through arguments
after ``--`` sets ``accepts_extra=True``; they arrive as ``args.extra``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fed.cli import EXIT_USAGE, UsageError

#: Modules providing subcommands, in the order shown by ``fed --help``.
#: ``fed site`` and ``fed job`` live with the site (fed/site): their modules import only
#: argparse at start, and load the site extra when one of their commands runs.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "fed.cli.run", "fed.cli.certs", "fed.cli.audit", "fed.site.cli", "fed.site.jobcli", "fed.deploy.cli",
)

_DESCRIPTION = """\
Tools for rayfed multi-party programs.

Every party of a rayfed program runs the same driver script
(`python script.py alice` runs party alice). `fed run` starts all the parties
of such a script on this machine with wired-up addresses, and `fed certs`
makes a development PKI for mutual TLS between parties. `fed site` runs a
party's job service and `fed job` talks to it (pip install -e ".[site]").
"""

_EPILOG = """\
examples:
  fed run examples/hello.py --parties alice,bob
  fed run train.py --parties alice,bob --tls --timeout 600 -- --epochs 3
  fed run train.py --parties alice,bob --simulate
  fed certs --parties alice,bob --out ./certs
  fed audit alice-egress.jsonl --summary
  fed site init ./alice-site --party alice --federation federation.yaml --certs ./certs
  fed job submit job.yaml --site ./alice-site
  fed deploy render --party alice --federation federation.yaml --values values.yaml -o out/alice

Run `fed COMMAND --help` for the options of a command.
"""


def build_parser() -> argparse.ArgumentParser:
    """Assemble the top-level parser from every subcommand module."""
    parser = argparse.ArgumentParser(
        prog="fed",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _split_extra(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Split at the first ``--``: argparse (3.11) mishandles ``--`` with nargs='*'."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fed`` command; returns the exit code (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    head, extra = _split_extra(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(head)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if extra is not None and not getattr(args, "accepts_extra", False):
        print(f"fed {args.command}: error: unexpected arguments after '--': {extra}", file=sys.stderr)
        return EXIT_USAGE
    args.extra = extra or []
    try:
        return int(args.handler(args))
    except UsageError as exc:
        print(f"fed {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
