"""The example job's components: each party registers them with its site and runs them
as party tasks (docs/sites.md, "Running tasks")::

    fed site component add sites/alice stats  --entrypoint examples.jobs.components:stats  --version 1
    fed site component add sites/alice fedavg --entrypoint examples.jobs.components:fedavg --version 1

(``examples.jobs.components`` must be importable where the party's Ray cluster runs:
start the cluster from the repository root, or put the root on its ``PYTHONPATH``.)

Each party's local data is its own shard of scikit-learn's handwritten digits, the
same split as ``examples/fedavg.py`` for any number of parties (parties in name order).
Only summaries (``stats``) and model weights (``fedavg``) cross party boundaries.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

import fed
from examples.fedavg import (
    LOCAL_EPOCHS,
    SEED,
    Weights,
    accuracy,
    init_weights,
    load_all,
    load_test_split,
    sgd,
    split_rows,
)
from examples.fedavg import fedavg as average  # the FedAvg step, a fed.remote function
from fed.site.taskcontext import TaskContext


def _shard(index: int, n_parties: int) -> tuple[np.ndarray, np.ndarray]:
    """One party's training rows (called only inside that party)."""
    x, y = load_all()
    _, shards = split_rows(len(y), n_parties)
    return x[shards[index]], y[shards[index]]


def _aggregator(ctx: TaskContext, parties: list[str]) -> str:
    name = ctx.params.get("aggregator", parties[0])
    if name not in parties:
        raise ValueError(f"params.aggregator {name!r} is not a party of the task ({', '.join(parties)})")
    return name


# --------------------------------------------------------------------------- stats

def summarize(index: int, n_parties: int) -> dict[str, Any]:
    """Sums that describe one party's rows without revealing any row."""
    x, y = _shard(index, n_parties)
    return {"count": len(y), "sum": x.sum(axis=0), "sumsq": (x * x).sum(axis=0),
            "min": x.min(axis=0), "max": x.max(axis=0), "labels": np.bincount(y, minlength=10)}


local_summary = fed.remote(summarize)


@fed.remote
def combine(*summaries: dict[str, Any]) -> dict[str, Any]:
    count = sum(s["count"] for s in summaries)
    total = sum(s["sum"] for s in summaries)
    mean = total / count
    var = sum(s["sumsq"] for s in summaries) / count - mean * mean
    return {"count": count, "mean": mean, "std": np.sqrt(np.maximum(var, 0.0)),
            "min": np.min([s["min"] for s in summaries], axis=0),
            "max": np.max([s["max"] for s in summaries], axis=0),
            "labels": sum(s["labels"] for s in summaries)}


def _plain(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else int(v)) for k, v in summary.items()
            if k not in ("sum", "sumsq")}


def stats(ctx: TaskContext) -> None:
    """Every party summarises its own rows; the aggregator combines the summaries and
    every party gets the federated summary. Writes ``stats.json``."""
    parties = sorted(ctx.addresses)
    aggregator = _aggregator(ctx, parties)
    me = parties.index(ctx.party)
    fed.init(**ctx.fed_init_kwargs())
    try:
        summaries = [local_summary.party(p).remote(i, len(parties)) for i, p in enumerate(parties)]
        federated = fed.get(combine.party(aggregator).remote(*summaries))
    finally:
        fed.shutdown()
    local = summarize(me, len(parties))  # this party's own rows: read here, never sent
    result = {"party": ctx.party, "local": _plain(local), "federated": _plain(federated)}
    (ctx.output_dir / "stats.json").write_text(json.dumps(result, indent=1))
    ctx.log_metrics({"rows": float(local["count"]), "federated_rows": float(federated["count"])})
    print(f"{ctx.party}: {local['count']} rows here, {federated['count']} in the federation")


# --------------------------------------------------------------------------- fedavg

@fed.remote
def shard_size(index: int, n_parties: int) -> int:
    return len(_shard(index, n_parties)[1])


@fed.remote
def local_update(weights: Weights, index: int, n_parties: int, round_: int, epochs: int) -> Weights:
    """A few local epochs from the global weights, on this party's rows only."""
    x, y = _shard(index, n_parties)
    return sgd(weights, x, y, epochs, np.random.default_rng([SEED, index, round_]))


def fedavg(ctx: TaskContext) -> None:
    """FedAvg of a softmax regression over the parties' digit shards. Logs the global
    model's test accuracy each round; writes the final model to ``model.npz``."""
    parties = sorted(ctx.addresses)
    aggregator = _aggregator(ctx, parties)
    rounds = int(ctx.params.get("rounds", 5))
    epochs = int(ctx.params.get("local_epochs", LOCAL_EPOCHS))
    if rounds < 1 or epochs < 1:
        raise ValueError(f"params.rounds and params.local_epochs must be at least 1, got {rounds}, {epochs}")
    x_test, y_test = load_test_split()  # the same rows in every party, whatever their number
    fed.init(**ctx.fed_init_kwargs())
    try:
        sizes = fed.get([shard_size.party(p).remote(i, len(parties)) for i, p in enumerate(parties)])
        weights: Any = init_weights()
        for round_ in range(1, rounds + 1):
            updates = [local_update.party(p).remote(weights, i, len(parties), round_, epochs)
                       for i, p in enumerate(parties)]
            weights = average.party(aggregator).remote(sizes, *updates)
            acc = accuracy(fed.get(weights), x_test, y_test)
            ctx.log_metric("accuracy", acc, step=round_)
            print(f"{ctx.party}: round {round_}/{rounds} test accuracy {acc:.3f}", flush=True)
        final = fed.get(weights)
    finally:
        fed.shutdown()
    np.savez(ctx.output_dir / "model.npz", **final)
