"""End-to-end runs of the federated learning examples (numpy and PyTorch) with `fed run`.

Each test starts every party as its own process (each with its own Ray cluster),
so they take tens of seconds; they check the exit code, that every party printed
the same results, and the accuracy the examples promise.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("sklearn", reason="the examples need scikit-learn")


def fed_run(script: str, parties: list[str], *script_args: str,
            timeout: float = 240, simulate: bool = False) -> subprocess.CompletedProcess:
    """`fed run SCRIPT --parties ...` from the repo root; fails the test on a non-zero exit.

    With `simulate`, `fed run --simulate`: one process runs every party (its output
    lines are prefixed `(simulation) `)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for var in ("RAYFED_MODE", "RAYFED_TLS_DIR", "RAYFED_ADDRESSES", "RAYFED_PARTY"):
        env.pop(var, None)  # `fed run` sets the ones it needs; stale values must not leak in
    cmd = [sys.executable, "-m", "fed.cli.main", "run", script, "--parties", ",".join(parties),
           "--timeout", str(int(timeout))]
    if simulate:
        cmd.append("--simulate")
    if script_args:
        cmd += ["--", *script_args]
    # The subprocess timeout is a backstop: `fed run --timeout` stops the parties first.
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout + 30)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited with {proc.returncode}\n"
        f"--- stdout (tail)\n{proc.stdout[-4000:]}\n--- stderr (tail)\n{proc.stderr[-4000:]}"
    )
    return proc


_outputs: dict[tuple, str] = {}


def example_output(script: str, parties: list[str], *script_args: str,
                   simulate: bool = False) -> str:
    """The stdout of a `fed run` of an example; each distinct run happens once per session,
    so the production and the simulation tests share the production run."""
    key = (script, tuple(parties), script_args, simulate)
    if key not in _outputs:
        _outputs[key] = fed_run(script, parties, *script_args, simulate=simulate).stdout
    return _outputs[key]


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


ROUND_RE = r"round +(?P<step>\d+)/(?P<total>\d+): test accuracy (?P<value>\d\.\d+)"
FEDAVG_FINAL_RE = (r"federated accuracy (\d\.\d+) \| centralized (\d\.\d+) "
                   r"\| gap (-?\d+\.\d) points")
EPOCH_RE = r"epoch +(?P<step>\d+)/(?P<total>\d+): loss (?P<value>\d+\.\d+)"
SPLIT_FINAL_RE = r"split learning accuracy (\d\.\d+) \| centralized (\d\.\d+)"


def example_case(script: str, *args: object) -> Any:
    """A test case (pytest.param) for `script`; the PyTorch examples are skipped where
    torch is missing (.ci/run installs it: the [torch] extra)."""
    missing = "torch" in script and importlib.util.find_spec("torch") is None
    return pytest.param(script, *args, id=Path(script).stem, marks=pytest.mark.skipif(
        missing, reason='needs PyTorch: pip install torch==2.13.0 -e ".[torch]"'))


# (script, parties, rounds): the numpy and the PyTorch FedAvg print the same lines.
FEDAVG_RUNS = [
    example_case("examples/fedavg.py", ["alice", "bob", "carol"], 15),
    example_case("examples/torch_fedavg.py", ["alice", "bob", "carol"], 10),
]
# (script, parties, epochs): the last party holds the labels and computes the losses.
SPLIT_RUNS = [
    example_case("examples/split_learning.py", ["alice", "bob"], 20),
    example_case("examples/torch_split_learning.py", ["alice", "bob", "carol"], 15),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script,parties,rounds", FEDAVG_RUNS)
def test_fedavg_matches_centralized_training(script: str, parties: list[str],
                                             rounds: int) -> None:
    out = example_output(script, parties, "--rounds", str(rounds))

    accuracies = {p: progress_values(out, p, ROUND_RE, rounds) for p in parties}
    finals = {p: final_line(out, p, FEDAVG_FINAL_RE) for p in parties}

    # Every party evaluates the same global model on the same test split.
    assert all(accuracies[p] == accuracies["alice"] for p in parties), accuracies
    assert all(finals[p] == finals["alice"] for p in parties), finals

    federated, centralized, gap = finals["alice"]
    assert federated > 0.9 and centralized > 0.9, out
    assert abs(gap - 100 * (centralized - federated)) < 0.2, f"gap is not the difference: {out}"
    assert abs(gap) <= 2.0, f"federated {federated} vs centralized {centralized}: {gap} points"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script,parties,epochs", SPLIT_RUNS)
def test_split_learning_is_accurate(script: str, parties: list[str], epochs: int) -> None:
    out = example_output(script, parties, "--epochs", str(epochs))

    losses = {p: [float(v) for v in progress_values(out, p, EPOCH_RE, epochs)] for p in parties}
    finals = {p: final_line(out, p, SPLIT_FINAL_RE) for p in parties}

    # The label party computes the losses and the others print what they fetched.
    label_party = parties[-1]
    assert all(losses[p] == losses[label_party] for p in parties), losses
    assert losses[label_party][-1] < 0.5 * losses[label_party][0], \
        f"the loss did not go down: {losses}"
    assert all(finals[p] == finals[label_party] for p in parties), finals
    split_acc, central_acc = finals[label_party]
    assert split_acc > 0.9 and central_acc > 0.9, out
    # Split learning computes the gradients centralized training computes.
    assert abs(split_acc - central_acc) <= 0.02, f"split {split_acc} vs centralized {central_acc}"


# ---- the same scripts, unchanged, under `fed run --simulate` --------------------------


@pytest.mark.timeout(420)
@pytest.mark.parametrize("script,parties,rounds", FEDAVG_RUNS)
def test_fedavg_simulation_gives_the_production_results(script: str, parties: list[str],
                                                        rounds: int) -> None:
    args = ("--rounds", str(rounds))
    sim = example_output(script, parties, *args, simulate=True)
    prod = example_output(script, parties, *args)
    # The simulation runs the script as the first party, alice.
    assert progress_values(sim, "simulation", ROUND_RE, rounds) == \
        progress_values(prod, "alice", ROUND_RE, rounds)
    assert final_line(sim, "simulation", FEDAVG_FINAL_RE) == \
        final_line(prod, "alice", FEDAVG_FINAL_RE)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("script,parties,epochs", SPLIT_RUNS)
def test_split_learning_simulation_gives_the_production_results(
        script: str, parties: list[str], epochs: int) -> None:
    args = ("--epochs", str(epochs))
    sim = example_output(script, parties, *args, simulate=True)
    prod = example_output(script, parties, *args)
    assert progress_values(sim, "simulation", EPOCH_RE, epochs) == \
        progress_values(prod, "alice", EPOCH_RE, epochs)
    assert final_line(sim, "simulation", SPLIT_FINAL_RE) == \
        final_line(prod, "alice", SPLIT_FINAL_RE)
