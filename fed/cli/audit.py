"""``fed audit``: read a party's egress audit log (``config["egress"]["audit_log"]``).

A thin layer over :mod:`fed.audit`: list what left the party (optionally filtered),
or total it per job and destination. Lines that are not audit records (a corrupted
or hand-edited file) are reported on stderr and make the exit status 1, so a script
checking a log cannot mistake a damaged log for a clean one.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fed.cli import UsageError

_COLUMNS = ("time", "job", "status", "dst", "call", "bytes", "sha256")


def _matches(record: dict[str, Any], args: argparse.Namespace) -> bool:
    return all(
        wanted is None or str(record.get(field)) == wanted
        for field, wanted in (("job", args.job), ("dst", args.dst), ("status", args.status))
    )


def _print_table(records: list[dict[str, Any]]) -> None:
    rows = [[_cell(r, c) for c in _COLUMNS] for r in records]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(_COLUMNS)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(_COLUMNS, widths)).rstrip())
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _cell(record: dict[str, Any], column: str) -> str:
    value = record.get(column)
    if value is None:
        return "-"
    if column == "sha256":
        return str(value)[:16]
    return str(value)


def _print_summary(records: list[dict[str, Any]]) -> None:
    from fed.audit import STATUSES, summarize

    table = summarize(records)
    print(f"{'JOB':20} {'FROM':12} {'TO':12} {'VALUES':>8} {'BYTES':>14}  STATUSES")
    for (job, src, dst), row in sorted(table.items()):
        statuses = ", ".join(f"{s}={row[s]}" for s in STATUSES if row.get(s))
        print(f"{job:20} {src:12} {dst:12} {row['values']:>8} {row['bytes']:>14}  {statuses}")


def _cmd_audit(args: argparse.Namespace) -> int:
    """Handler of ``fed audit``."""
    from fed.audit import read_records, resolve_unfinished

    found: list[dict[str, Any]] = []
    bad = 0
    for path in args.logs:
        try:
            for number, record, raw in read_records(path):
                if record is None:
                    bad += 1
                    print(f"fed audit: {path}:{number}: not an audit record: {raw[:120]!r}",
                          file=sys.stderr)
                else:
                    found.append(record)
        except FileNotFoundError:
            raise UsageError(f"no such audit log: {path}") from None
        except IsADirectoryError:
            raise UsageError(f"{path} is a directory, not an audit log") from None
    records = [r for r in resolve_unfinished(found) if _matches(r, args)]
    if args.json:
        for record in records:
            print(json.dumps(record))
    elif args.summary:
        _print_summary(records)
    else:
        _print_table(records)
    return 1 if bad else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` subcommand."""
    p = subparsers.add_parser(
        "audit",
        help="show what left a party, from its egress audit log",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Read egress audit logs written when fed.init(config={'egress': {'audit_log':\n"
            "PATH}}) is set: one JSON line per value that left the party (time, job, call,\n"
            "destination, bytes, sha256 of the bytes sent, status) or that the egress\n"
            "policy denied. Statuses: sent, duplicate, refused, failed (may have partly\n"
            "left), denied (nothing left), unfinished (the process ended mid-send; the\n"
            "bytes may have left). Exit status 1 if a line is not a record."
        ),
        epilog=(
            "examples:\n"
            "  fed audit alice-egress.jsonl\n"
            "  fed audit alice-egress.jsonl --summary\n"
            "  fed audit alice-egress.jsonl --dst bob --status sent --json"
        ),
    )
    p.add_argument("logs", nargs="+", metavar="LOG", help="audit log file(s)")
    p.add_argument("--job", help="only records of this job")
    p.add_argument("--dst", help="only values sent to this party")
    p.add_argument("--status", help="only records with this status (e.g. sent, denied)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--summary", action="store_true", help="totals per job, source and destination")
    view.add_argument("--json", action="store_true", help="print the matching records as JSON lines")
    p.set_defaults(handler=_cmd_audit)
