"""End-to-end runs of the federated learning examples with the real `fed run` launcher.

Each test starts every party as its own process (each with its own Ray cluster),
so they take tens of seconds; they check the exit code, that every party printed
the same results, and the accuracy the examples promise.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("sklearn", reason="the examples need scikit-learn")


def fed_run(script: str, parties: list[str], *script_args: str,
            timeout: float = 240) -> subprocess.CompletedProcess:
    """`fed run SCRIPT --parties ...` from the repo root; fails the test on a non-zero exit."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for var in ("RAYFED_MODE", "RAYFED_TLS_DIR", "RAYFED_ADDRESSES", "RAYFED_PARTY"):
        env.pop(var, None)  # `fed run` sets the ones it needs; stale values must not leak in
    cmd = [sys.executable, "-m", "fed.cli.main", "run", script, "--parties", ",".join(parties),
           "--timeout", str(int(timeout))]
    if script_args:
        cmd += ["--", *script_args]
    # The subprocess timeout is a backstop: `fed run --timeout` stops the parties first.
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout + 30)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited with {proc.returncode}\n"
        f"--- stdout (tail)\n{proc.stdout[-4000:]}\n--- stderr (tail)\n{proc.stderr[-4000:]}"
    )
    return proc


def party_lines(stdout: str, party: str, pattern: str) -> list[re.Match]:
    """The lines `fed run` prefixed with `(party) ` whose text fully matches `pattern`."""
    prefix = f"({party}) "
    texts = [line[len(prefix):] for line in stdout.splitlines() if line.startswith(prefix)]
    return [m for m in (re.fullmatch(pattern, text) for text in texts) if m]


def progress_values(stdout: str, party: str, pattern: str, steps: int) -> list[str]:
    """The value of each `<step>/<steps>: ... <value>` progress line, checking that
    `party` printed steps 1..steps once each, in order."""
    lines = party_lines(stdout, party, pattern)
    numbering = [(int(m["step"]), int(m["total"])) for m in lines]
    assert numbering == [(i, steps) for i in range(1, steps + 1)], stdout
    return [m["value"] for m in lines]


def final_line(stdout: str, party: str, pattern: str) -> tuple[float, ...]:
    """The numbers in the one result line `party` printed."""
    lines = party_lines(stdout, party, pattern)
    assert len(lines) == 1, f"expected one result line from {party}:\n{stdout}"
    return tuple(map(float, lines[0].groups()))


@pytest.mark.timeout(300)
def test_fedavg_matches_centralized_training() -> None:
    parties = ["alice", "bob", "carol"]
    rounds = 15
    out = fed_run("examples/fedavg.py", parties, "--rounds", str(rounds)).stdout

    round_re = r"round +(?P<step>\d+)/(?P<total>\d+): test accuracy (?P<value>\d\.\d+)"
    final_re = r"federated accuracy (\d\.\d+) \| centralized (\d\.\d+) \| gap (-?\d+\.\d) points"
    accuracies = {p: progress_values(out, p, round_re, rounds) for p in parties}
    finals = {p: final_line(out, p, final_re) for p in parties}

    # Every party evaluates the same global model on the same test split.
    assert all(accuracies[p] == accuracies["alice"] for p in parties), accuracies
    assert all(finals[p] == finals["alice"] for p in parties), finals

    federated, centralized, gap = finals["alice"]
    assert federated > 0.9 and centralized > 0.9, out
    assert abs(gap - 100 * (centralized - federated)) < 0.2, f"gap is not the difference: {out}"
    assert abs(gap) <= 2.0, f"federated {federated} vs centralized {centralized}: {gap} points"


@pytest.mark.timeout(300)
def test_split_learning_is_accurate() -> None:
    parties = ["alice", "bob"]
    epochs = 20
    out = fed_run("examples/split_learning.py", parties, "--epochs", str(epochs)).stdout

    epoch_re = r"epoch +(?P<step>\d+)/(?P<total>\d+): loss (?P<value>\d+\.\d+)"
    final_re = r"split learning accuracy (\d\.\d+) \| centralized (\d\.\d+)"
    losses = {p: [float(v) for v in progress_values(out, p, epoch_re, epochs)] for p in parties}
    finals = {p: final_line(out, p, final_re) for p in parties}

    # bob computes the losses and alice prints what it fetched: the same numbers.
    assert losses["alice"] == losses["bob"], losses
    assert losses["bob"][-1] < 0.5 * losses["bob"][0], f"the loss did not go down: {losses}"
    assert finals["alice"] == finals["bob"], finals
    split_acc, central_acc = finals["bob"]
    assert split_acc > 0.9 and central_acc > 0.9, out
