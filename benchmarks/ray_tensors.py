"""What Ray itself costs to pass a PyTorch state_dict between tasks of one party, against
the same bytes as numpy arrays: ``ray.put`` and ``ray.get`` in one plain Ray cluster, no
parties and no rayfed. This is the floor under the torch FL round of benchmarks/codec.py.

    python benchmarks/ray_tensors.py [--reps 15] [--zero-copy-tensors]

With ``--zero-copy-tensors`` the cluster runs with Ray's own opt-in
``RAY_ENABLE_ZERO_COPY_TORCH_TENSORS=1`` (tensors then pass as views of the store).
Prints the median of ``--reps`` rounds after two warm-up rounds, and the ratios.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
import warnings

import numpy as np

ARRAYS, FLOATS = 50, 125_000  # 25 MB: the FL round's model (benchmarks/suite.py)


def _models():
    import torch

    arrays = [np.full(FLOATS, i, dtype=np.float32) for i in range(ARRAYS)]
    state = collections.OrderedDict((f"layer{i}.weight", torch.full((FLOATS,), float(i)))
                                    for i in range(ARRAYS))
    return {"numpy arrays": arrays, "torch state_dict": state}


def _put_get(ray, value) -> tuple[float, float]:
    """Seconds of one ray.put and of one ray.get of that fresh object."""
    start = time.perf_counter()
    ref = ray.put(value)
    put_done = time.perf_counter()
    got = ray.get(ref)
    end = time.perf_counter()
    del ref, got
    return put_done - start, end - put_done


def _measure(ray, models: dict, reps: int) -> dict[str, tuple[float, float]]:
    """Median put and get seconds per model. The models alternate round by round, so
    both meet the store in the same state; the first two rounds only warm it up."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for i in range(reps + 2):
        for name, value in models.items():
            put_get = _put_get(ray, value)
            if i >= 2:
                times[name].append(put_get)
    return {name: (statistics.median(p for p, _ in t), statistics.median(g for _, g in t))
            for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--zero-copy-tensors", action="store_true",
                        help="run Ray with RAY_ENABLE_ZERO_COPY_TORCH_TENSORS=1")
    args = parser.parse_args(argv)
    if args.zero_copy_tensors:
        os.environ["RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"] = "1"  # read when ray is imported
    import ray

    warnings.simplefilter("ignore", UserWarning)  # torch: tensors over read-only memory
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             object_store_memory=1024**3)
    try:
        measured = _measure(ray, _models(), args.reps)
    finally:
        ray.shutdown()
    base_put, base_get = measured["numpy arrays"]
    mode = "zero-copy tensors" if args.zero_copy_tensors else "Ray's default"
    print(f"Ray {ray.__version__}, {mode}; 25 MB as {ARRAYS} float32 buffers; median of {args.reps}")
    print("| value            | ray.put ms | ray.get ms | put / numpy | get / numpy |")
    print("|------------------|------------|------------|-------------|-------------|")
    for name, (put, get) in measured.items():
        print(f"| {name:<16} | {put * 1e3:10.2f} | {get * 1e3:10.2f} | {put / base_put:11.2f} "
              f"| {get / base_get:11.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
