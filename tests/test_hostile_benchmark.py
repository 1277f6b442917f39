"""benchmarks/hostile_peer.py, short: an authenticated hostile party beside a TLS job.

Runs the benchmark script itself (two honest party processes, each its own Ray
cluster, and a third party with a valid certificate of its own speaking the wire
protocol directly) and checks its outcome: every phase stayed within the documented
per-peer memory bound, honest rounds went on during every phase, and honest
reconnections succeeded. The figures are printed, never compared with a clock.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_hostile_peer_stays_within_the_bound_while_honest_rounds_go_on(tmp_path: Path) -> None:
    out = tmp_path / "hostile.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    proc = subprocess.run(
        [sys.executable, "benchmarks/hostile_peer.py", "--quick", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False,
    )
    print(proc.stdout)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert not result["errors"], result["errors"]
    phases = result["phases"]
    assert len(phases) == 7, [p["phase"] for p in phases]
    for phase in phases:
        assert phase["growth"] <= phase["bound"], phase
        assert phase["rounds"] > 0 and phase["wrong"] == 0, phase
        assert phase["probes_ok"] == phase["probes"] > 0, phase
    assert result["parties"]["alice"]["rounds"] == result["parties"]["bob"]["rounds"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
