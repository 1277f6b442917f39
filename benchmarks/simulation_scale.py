"""How many parties a simulation handles: FedAvg rounds with N parties in one driver.

Every party holds its own synthetic shard (generated inside its own task, so rows never
cross) and trains a logistic regression locally; the first party averages the updates
and every party fetches the new global model each round, as a real FedAvg script does.
Parties are plain remote functions, not one actor process per party.

    python benchmarks/simulation_scale.py                        # 10, 100 parties
    python benchmarks/simulation_scale.py --parties 100,300,1000 --rounds 10
    python benchmarks/simulation_scale.py --parties 20 --rounds 3 --json   # one JSON line per row

One Ray cluster (``--cpus``, default 2) serves every row; each row is its own
``fed.init(mode="simulation")`` ... ``fed.shutdown()``. Columns: wall time of the
rounds (Ray start excluded), seconds per round, values that crossed a party boundary
(each one serialized and checked against the allowlist), peak Ray worker processes,
and the test accuracy of the final global model.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import numpy as np
import psutil
import ray

import fed

N_FEATURES = 32
ROWS_PER_PARTY = 128
LOCAL_STEPS = 5
LEARNING_RATE = 0.5
SEED = 0

Weights = dict[str, np.ndarray]


def true_weights() -> np.ndarray:
    return np.random.default_rng(SEED).normal(size=N_FEATURES)


def make_rows(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic rows labelled by a fixed linear rule (plus noise)."""
    rng = np.random.default_rng([SEED, seed])
    x = rng.normal(size=(n, N_FEATURES))
    y = (x @ true_weights() + rng.normal(scale=0.5, size=n) > 0).astype(float)
    return x, y


@fed.remote
def initial_model() -> Weights:
    return {"w": np.zeros(N_FEATURES), "b": np.zeros(1)}


@fed.remote
def local_train(model: Weights, party_index: int) -> Weights:
    """A few full-batch gradient steps on this party's own rows."""
    x, y = make_rows(party_index + 1, ROWS_PER_PARTY)
    w, b = model["w"].copy(), model["b"].copy()
    for _ in range(LOCAL_STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        grad = p - y
        w -= LEARNING_RATE * x.T @ grad / len(y)
        b -= LEARNING_RATE * grad.mean(keepdims=True)
    return {"w": w, "b": b}


@fed.remote
def fedavg(*updates: Weights) -> Weights:
    """Equal shards, so the plain mean is the FedAvg average."""
    return {k: np.mean([u[k] for u in updates], axis=0) for k in updates[0]}


def accuracy(model: Weights, x: np.ndarray, y: np.ndarray) -> float:
    return float((((x @ model["w"] + model["b"]) > 0) == (y == 1)).mean())


class WorkerPeak:
    """Samples the number of Ray worker processes (``ray::...``) while a row runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _count(self) -> int:
        n = 0
        # Only this driver's cluster: its raylet is our child, the workers its children.
        for proc in psutil.Process().children(recursive=True):
            try:
                cmd = proc.cmdline()
            except psutil.Error:
                continue
            # Workers name themselves ray::IDLE, ray::<task>, ray::<Actor>; Ray's own
            # daemons (raylet, gcs, agents) are not workers.
            if cmd and cmd[0].startswith("ray::") and "Agent" not in cmd[0]:
                n += 1
        return n

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._count())
            self._stop.wait(0.25)

    def __enter__(self) -> WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._count())


def run(n_parties: int, rounds: int) -> dict[str, Any]:
    """One FedAvg simulation with `n_parties` parties; returns the measurements."""
    parties = [f"p{i:04d}" for i in range(n_parties)]
    # Simulation opens no port: the addresses only name the parties.
    addresses = {p: f"127.0.0.1:{20000 + i}" for i, p in enumerate(parties)}
    fed.init(addresses=addresses, party=parties[0], mode="simulation",
             job_name=f"scale-{n_parties}", logging_level="warning")
    x_test, y_test = make_rows(0, 2000)
    aggregator = parties[0]
    with WorkerPeak() as workers:
        started = time.monotonic()
        model = initial_model.party(aggregator).remote()
        for _ in range(rounds):
            updates = [local_train.party(p).remote(model, i) for i, p in enumerate(parties)]
            model = fedavg.party(aggregator).remote(*updates)
            acc = accuracy(fed.get(model), x_test, y_test)  # every party fetches it
        elapsed = time.monotonic() - started
    crossed = sum(fed.stats().get("values", {}).values())
    fed.shutdown()
    return {
        "parties": n_parties, "rounds": rounds, "seconds": round(elapsed, 2),
        "s_per_round": round(elapsed / rounds, 3), "crossings": crossed,
        "peak_workers": workers.peak, "accuracy": round(acc, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", default="10,100",
                        help="comma-separated party counts, one row each (default 10,100)")
    parser.add_argument("--rounds", type=int, default=10, help="FedAvg rounds (default 10)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray cluster (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per row")
    args = parser.parse_args()
    counts = [int(n) for n in args.parties.split(",") if n.strip()]
    if not counts or min(counts) < 2 or args.rounds < 1:
        parser.error("need party counts >= 2 and --rounds >= 1")

    ray.init(num_cpus=args.cpus, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    header = f"{'parties':>8} {'rounds':>6} {'seconds':>8} {'s/round':>8} " \
             f"{'crossings':>9} {'workers':>7} {'accuracy':>8}"
    if not args.json:
        print(f"FedAvg in simulation, {args.cpus} CPUs, {N_FEATURES} features, "
              f"{ROWS_PER_PARTY} rows per party")
        print(header)
    run(2, 1)  # warm-up: Ray starts its workers and imports numpy in them once
    for n in counts:
        row = run(n, args.rounds)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{row['parties']:>8} {row['rounds']:>6} {row['seconds']:>8.2f} "
                  f"{row['s_per_round']:>8.3f} {row['crossings']:>9} "
                  f"{row['peak_workers']:>7} {row['accuracy']:>8.3f}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
