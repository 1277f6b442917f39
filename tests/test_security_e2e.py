"""`fed run --tls` end to end: two real parties (each its own Ray cluster) over mutual
TLS with party identity enforced, an egress policy vetoing one send, and both
parties' egress audit logs read back with `fed audit`."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = '''
import os
import sys

import fed


@fed.remote
class Counter:
    def __init__(self, value):
        self.value = value

    def inc(self, num):
        self.value = self.value + num
        return self.value


@fed.remote
def aggregate(a, b):
    return a + b


@fed.remote
def raw_rows():
    return ["alice's row-level data"]


@fed.remote
def count(rows):
    return len(rows)


def no_raw_rows(request):
    """alice's data owner: row-level data never leaves."""
    return not request.call.endswith(".raw_rows")


def main(party, out_dir):
    # No addresses and no tls_config: `fed run --tls` provides both.
    config = {"egress": {"audit_log": os.path.join(out_dir, party + ".jsonl"),
                         "policy": no_raw_rows}}
    fed.init(address="local", party=party, config=config, job_name="tls-quickstart")
    from fed import _context

    tls = _context.get().config.tls
    print("TLS", tls is not None and tls.verify_party)
    a = Counter.party("alice").remote(1)
    b = Counter.party("bob").remote(1)
    total = aggregate.party("bob").remote(a.inc.remote(1), b.inc.remote(2))
    print("RESULT", fed.get(total))
    rows = raw_rows.party("alice").remote()
    try:
        count.party("bob").remote(rows)
        print("SENT raw rows")
    except fed.FedEgressDenied as exc:
        print("DENIED", exc)
    fed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
'''


def fed_cli(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for var in ("RAYFED_MODE", "RAYFED_TLS_DIR", "RAYFED_ADDRESSES", "RAYFED_PARTY"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "fed.cli.main", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def lines(stdout: str, party: str, prefix: str) -> list[str]:
    head = f"({party}) {prefix}"
    return [ln[len(f"({party}) "):] for ln in stdout.splitlines() if ln.startswith(head)]


@pytest.mark.timeout(200)
def test_tls_quickstart_with_egress_policy_and_audit(tmp_path: Path) -> None:
    script = tmp_path / "secure_quickstart.py"
    script.write_text(SCRIPT)
    out = tmp_path / "audit"
    out.mkdir()
    res = fed_cli("run", str(script), "--parties", "alice,bob", "--tls", "--timeout", "120",
                  "--", str(out))
    assert res.returncode == 0, f"{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    for party in ("alice", "bob"):
        assert lines(res.stdout, party, "TLS") == ["TLS True"], res.stdout
        assert lines(res.stdout, party, "RESULT") == ["RESULT 5"], res.stdout
    # alice's policy stopped her raw rows at the call site; bob had nothing to veto.
    (denied,) = lines(res.stdout, "alice", "DENIED")
    assert "raw_rows" in denied and "'bob'" in denied
    assert lines(res.stdout, "bob", "SENT") == ["SENT raw rows"]

    records = {p: [json.loads(x) for x in (out / f"{p}.jsonl").read_text().splitlines()]
               for p in ("alice", "bob")}
    alice_sent = [r for r in records["alice"] if r["status"] == "sent"]
    assert [r["dst"] for r in alice_sent] == ["bob"] and alice_sent[0]["call"].endswith("Counter.inc")
    assert re.fullmatch(r"[0-9a-f]{64}", alice_sent[0]["sha256"]) and alice_sent[0]["bytes"] > 0
    (veto,) = [r for r in records["alice"] if r["status"] == "denied"]
    assert veto["call"].endswith("raw_rows") and veto["bytes"] == 0
    bob_sent = [r for r in records["bob"] if r["status"] == "sent"]
    assert [(r["dst"], r["consumer"]) for r in bob_sent] == [("alice", "fed.get")]
    assert all(r["job"] == "tls-quickstart" for rs in records.values() for r in rs)

    summary = fed_cli("audit", str(out / "alice.jsonl"), str(out / "bob.jsonl"), "--summary")
    assert summary.returncode == 0, summary.stderr
    rows = {tuple(ln.split()[1:3]): ln for ln in summary.stdout.splitlines()[1:]}
    assert "sent=1" in rows[("alice", "bob")] and "denied=1" in rows[("alice", "bob")]
    assert "sent=1" in rows[("bob", "alice")]
