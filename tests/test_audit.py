"""The egress audit log: write-ahead ``sending`` records and how ``fed audit`` reads them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fed.audit import AuditLog, read_records, resolve_unfinished, summarize
from fed.cli.main import main as fed_main


def _send(log: AuditLog, ordinal: int, status: str, **extra) -> None:
    log.record(job="j", src="alice", dst="bob", call="f", call_seq=ordinal, ordinal=ordinal,
               bytes=10, status=status, **extra)


def test_a_sending_record_without_completion_reads_as_unfinished(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "a.jsonl"))
    _send(log, 0, "sending", durable=True)
    _send(log, 0, "sent", attempts=1)
    _send(log, 1, "sending", durable=True)  # the process died here
    records = [r for _, r, _ in read_records(log.path)]
    resolved = resolve_unfinished(records)
    assert [(r["ordinal"], r["status"]) for r in resolved] == [(0, "sent"), (1, "unfinished")]
    row = summarize(records)[("j", "alice", "bob")]
    assert row["values"] == 2 and row["sent"] == 1 and row["unfinished"] == 1


def test_fed_audit_shows_unfinished_sends(tmp_path: Path, capsys) -> None:
    log = AuditLog(str(tmp_path / "a.jsonl"))
    _send(log, 0, "sending", durable=True)
    assert fed_main(["audit", log.path, "--json"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["status"] for r in shown] == ["unfinished"]


def test_a_record_that_cannot_be_written_raises(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    log = AuditLog(str(directory / "a.jsonl"))
    directory.rmdir()
    with pytest.raises(OSError):
        _send(log, 0, "sending", durable=True)
