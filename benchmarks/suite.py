"""The benchmark workloads, written against the public RayFed API only.

The same code runs on this repo's engine and on RayFed (`rayfed-nightly`): both import
as `fed`, and both accept ``ray.init(address="local")`` followed by
``fed.init(addresses=..., party=...)``, which is the form used here.

`party_main` is what each party process runs. It talks to the parent (benchmarks/run.py)
through small files in a run directory, so the parent can measure the party's memory at
the right moments (before the engine starts, idle, during the 1 GiB push) without the
benchmark touching any engine internals.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import ray
from _harness import MiB, await_signal, post

import fed  # this repo's engine, or RayFed in compare.py's virtual environment

FL_ARRAYS = 50
FL_ARRAY_FLOATS = 125_000  # 50 x 125,000 float32 = 25,000,000 bytes = 25 MB


def engine_name() -> str:
    try:
        from importlib.metadata import version

        return f"rayfed-nightly {version('rayfed-nightly')}"
    except Exception:
        pass
    try:
        from importlib.metadata import version

        return f"rayfed {version('rayfed')} (this repo)"
    except Exception:
        return "fed (unknown build)"


# ---- remote functions and actors ------------------------------------------------------------


@fed.remote
class Tiny:
    def run(self):
        return 1


@fed.remote
class Aggregator:
    def aggr(self, a, b):
        return a + b


@fed.remote
def make_array(nbytes, seed):
    return np.full(nbytes // 4, seed, dtype=np.float32)


@fed.remote
def size_of(x):
    return int(x.nbytes)  # a numpy array's or a torch tensor's


@fed.remote
def marker():
    return 0


@fed.remote
def arrival(x):
    """Runs in the receiving party once the pushed array is there: when, and a check."""
    return time.time(), int(x.nbytes), float(x[-1])


@fed.remote
class Trainer:
    """Holds one party's 25 MB model: 50 float32 arrays."""

    def __init__(self, seed):
        self.weights = [np.full(FL_ARRAY_FLOATS, seed + i, dtype=np.float32)
                        for i in range(FL_ARRAYS)]

    def train(self, mean=None):
        if mean is not None:
            self.weights = mean
        return self.weights


@fed.remote
def fl_mean(a, b):
    return [(x + y) * np.float32(0.5) for x, y in zip(a, b)]


# ---- the same workloads with PyTorch values (only when params["torch"] is set) -------------


@fed.remote
def make_tensor(nbytes, seed):
    import torch

    return torch.full((nbytes // 4,), float(seed), dtype=torch.float32)


@fed.remote
def tensor_arrival(x):
    """Runs in the receiving party once the pushed tensor is there: when, and a check."""
    return time.time(), int(x.numel() * x.element_size()), float(x[-1])


@fed.remote
class TorchTrainer:
    """Holds one party's 25 MB model as a state_dict: 50 float32 tensors."""

    def __init__(self, seed):
        import collections

        import torch

        self.state = collections.OrderedDict(
            (f"layer{i}.weight", torch.full((FL_ARRAY_FLOATS,), float(seed + i)))
            for i in range(FL_ARRAYS))

    def train(self, mean=None):
        if mean is not None:
            self.state = mean
        return self.state


@fed.remote
def torch_fl_mean(a, b):
    import collections

    return collections.OrderedDict((k, (a[k] + b[k]) * 0.5) for k in a)


# ---- one party -----------------------------------------------------------------------------


def _step(run_dir: str, party: str, name: str, text: str = "") -> None:
    """Tell the parent we reached `name`, then wait until it lets us go on."""
    post(run_dir, f"{party}.{name}", text)
    await_signal(run_dir, f"go.{name}", timeout=600)


def _sync() -> None:
    """Both parties pass this line before either goes on (a value each way)."""
    fed.get([marker.party("alice").remote(), marker.party("bob").remote()])


def _push_once(nbytes: int, seed: int, torch: bool = False) -> tuple[float, int, float]:
    """One alice -> bob push of a fresh float32 array (or tensor); seconds to arrival."""
    make, arrive = (make_tensor, tensor_arrival) if torch else (make_array, arrival)
    x = make.party("alice").remote(nbytes, seed)
    # alice has x, and bob is at this line too; then alice sends at t0.
    fed.get([size_of.party("alice").remote(x), marker.party("bob").remote()])
    t0 = time.time()
    t_arrived, got, last = fed.get(arrive.party("bob").remote(x))
    if got != nbytes // 4 * 4 or last != float(seed):
        raise AssertionError(f"bob received {got} bytes ending in {last}, expected "
                             f"{nbytes} ending in {seed}")
    return t_arrived - t0, got, last


def party_main(party: str, addresses: dict, run_dir: str, params: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"engine": engine_name(), "ray": ray.__version__, "party": party}
    ray.init(
        address="local",
        num_cpus=params.get("num_cpus", 2),
        object_store_memory=params.get("object_store_bytes", 3 * 1024 * MiB),
        include_dashboard=False,
        log_to_driver=False,
    )
    _step(run_dir, party, "ray_up")  # parent: idle memory without the engine

    config = {"cross_silo_comm": {"messages_max_size_in_bytes": 2**31 - 1}}
    start = time.perf_counter()
    fed.init(addresses=addresses, party=party, config=config,
             job_name=params.get("job_name", "bench"), logging_level="warning")
    out["fed_init_s"] = time.perf_counter() - start
    for _ in range(3):  # first connections: then the channel is what a running job holds
        _sync()
    _step(run_dir, party, "engine_idle")  # parent: idle memory with the engine

    # ---- 1 GiB push; the parent samples bob's memory during each one ----
    big = params["big_bytes"]
    out["push"] = {big: _big_pushes(run_dir, party, big, params["big_reps"], "big")}
    if params.get("torch"):
        out["torch_push"] = {big: _big_pushes(run_dir, party, big, params["big_reps"],
                                              "tbig", torch=True)}

    # ---- push throughput, smaller sizes ----
    for nbytes, reps in params["push_sizes"]:
        for i in range(2):
            _push_once(nbytes, 100 + i)  # warm-up
        out["push"][nbytes] = [_push_once(nbytes, 200 + i)[0] for i in range(reps)]

    # ---- tiny tasks (RayFed's many_tiny_tasks shape) ----
    out["tiny_s_per_iter"] = _tiny_seconds_per_iteration(params)

    # ---- FL round: 25 MB model per party, mean in alice, back to both ----
    out["fl_round_s"] = _fl_rounds(params, Trainer, fl_mean, _numpy_model_ok)
    if params.get("torch"):
        out["torch_fl_round_s"] = _fl_rounds(params, TorchTrainer, torch_fl_mean, _torch_model_ok)

    _sync()
    fed.shutdown()
    ray.shutdown()
    return out


def _tiny_seconds_per_iteration(params: dict) -> float:
    """An actor call in alice and one in bob, an aggregate in alice, fed.get of it."""
    a = Tiny.party("alice").remote()
    b = Tiny.party("bob").remote()
    agg = Aggregator.party("alice").remote()

    def tiny_iteration():
        va = a.run.remote()
        vb = b.run.remote()
        total = agg.aggr.remote(va, vb)
        if fed.get(total) != 2:
            raise AssertionError("tiny task gave a wrong result")

    for _ in range(params["tiny_warmup"]):
        tiny_iteration()
    _sync()
    start = time.perf_counter()
    for _ in range(params["tiny_iters"]):
        tiny_iteration()
    return (time.perf_counter() - start) / params["tiny_iters"]


def _big_pushes(run_dir: str, party: str, nbytes: int, reps: int, step: str,
                torch: bool = False) -> list[float]:
    """Pushes of `nbytes`; the parent samples bob's memory between the two steps of each."""
    times = []
    for i in range(reps):
        _step(run_dir, party, f"{step}_{i}")  # parent: baseline, then start sampling
        times.append(_push_once(nbytes, 7 + i, torch=torch)[0])
        _step(run_dir, party, f"{step}_{i}_done")  # parent: stop sampling
    return times


def _fl_rounds(params: dict, trainer: Any, mean_of: Any, model_ok: Any) -> list[float]:
    """Seconds per FL round (after the warm-up rounds): each party's trainer returns its
    model, alice averages both, the mean goes back to both for the next round."""
    ta = trainer.party("alice").remote(0)
    tb = trainer.party("bob").remote(1000)
    mean = None
    round_times = []
    for _ in range(params["fl_warmup"] + params["fl_rounds"]):
        start = time.perf_counter()
        wa = ta.train.remote(mean) if mean is not None else ta.train.remote()
        wb = tb.train.remote(mean) if mean is not None else tb.train.remote()
        mean = mean_of.party("alice").remote(wa, wb)
        model = fed.get(mean)
        round_times.append(time.perf_counter() - start)
        if not model_ok(model):
            raise AssertionError(f"the FL round of {trainer} gave a wrong model")
    return round_times[params["fl_warmup"]:]


def _numpy_model_ok(weights: list) -> bool:
    return len(weights) == FL_ARRAYS and weights[0].nbytes == FL_ARRAY_FLOATS * 4


def _torch_model_ok(state: dict) -> bool:
    return len(state) == FL_ARRAYS and state["layer0.weight"].numel() == FL_ARRAY_FLOATS


# ---- the numpy part of an FL round, measured alone (for the FL row's limit) ---------------


def fl_numpy_seconds(reps: int = 10) -> list[float]:
    a = [np.full(FL_ARRAY_FLOATS, i, dtype=np.float32) for i in range(FL_ARRAYS)]
    b = [np.full(FL_ARRAY_FLOATS, 1000 + i, dtype=np.float32) for i in range(FL_ARRAYS)]
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        [(x + y) * np.float32(0.5) for x, y in zip(a, b)]
        times.append(time.perf_counter() - start)
    return times


if __name__ == "__main__":  # pragma: no cover
    print("run benchmarks/run.py (this repo's engine) or benchmarks/compare.py (both)")
    os._exit(2)
