"""``fed site demo`` as a user runs it: three Ray clusters and three sites on this
machine, the example job from one submit, exit 0 only when every party succeeded, and
nothing left running afterwards (the session fixture checks for leftover processes)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from sitekit import fed_env

pytestmark = pytest.mark.timeout(900)


@pytest.mark.parametrize("mode", ["poll"])
def test_site_demo_runs_the_example_job_in_every_party(mode, tmp_path):
    done = subprocess.run([sys.executable, "-m", "fed.cli.main", "site", "demo", "--sync-mode", mode,
                           "--dir", str(tmp_path / "demo")], env=fed_env(), capture_output=True,
                          text=True, timeout=840, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for party in ("alice", "bob", "carol"):
        assert f"  {party}: succeeded" in out, out
    assert f"({mode} mode)" in out
    assert "alice train accuracy:" in out, out  # FedAvg's per-round accuracy, from alice's site
    accuracies = [float(v) for v in out.split("alice train accuracy:")[1].splitlines()[0].split()]
    assert len(accuracies) == 5 and accuracies[-1] > 0.8, out
    site_logs = list((tmp_path / "demo" / "sites").glob("*/site.log"))
    assert len(site_logs) == 3
