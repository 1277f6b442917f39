"""The typed codec against the pickle wire format it replaced, same benchmark, same run.

    python benchmarks/codec.py            # full run, each engine twice (~20 min on 2 cores)
    python benchmarks/codec.py --quick    # fewer repetitions
    python benchmarks/codec.py --pickle-ref <commit> --json out.json

The pickle column runs this repo's engine as it was at ``--pickle-ref`` (the last commit
whose wire format was pickle protocol 5), extracted from git into a temporary directory;
the codec column runs the engine of this checkout. Both run benchmarks/suite.py, one
after the other, alternated (``--rounds``), on the same machine; each figure is the
engine's best run, since the machine is shared. The codec run also measures the PyTorch
workloads: the FL round with the model as a ``state_dict`` of 50 float32 tensors (the
same 25 MB as the numpy round's 50 arrays) and the 1 GiB push as a tensor.

Every figure is measured in this run; the ratios are between columns of this run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import run as bench  # noqa: E402
from _harness import MiB, plain_ray_fl_seconds  # noqa: E402

#: The last commit whose wire format was pickle (protocol 5, restricted unpickler).
PICKLE_REF = "8d6e609"
GiB = 1024 * MiB
#: Run-to-run noise on this 2-core machine: "no slower" means within this factor.
NOISE = 1.10


def extract_engine(ref: str, into: str) -> str:
    """`fed/` as it was at `ref`, written under `into`; the directory to put on PYTHONPATH."""
    archive = os.path.join(into, "fed.tar")
    with open(archive, "wb") as out:
        subprocess.run(["git", "-C", REPO, "archive", "--format=tar", ref, "fed"],
                       stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    os.unlink(archive)
    return into


def run_engine(pythonpath: str, quick: bool, label: str, torch: bool,
               extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """benchmarks/run.py --engine-only with `pythonpath` first; its measurements."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    cmd = [sys.executable, os.path.join(HERE, "run.py"), "--engine-only", "--json", out]
    cmd += ["--quick"] if quick else []
    cmd += ["--torch"] if torch else []
    env = dict(os.environ, PYTHONPATH=pythonpath, **(extra_env or {}))
    print(f"[codec] running the suite on {label} ...", flush=True)
    started = time.time()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=HERE,
                          env=env, timeout=3600)
    try:
        if done.returncode != 0:
            raise RuntimeError(f"the suite failed on {label}:\n{done.stderr[-4000:]}")
        with open(out) as f:
            result = json.load(f)["engine"]
    finally:
        os.unlink(out)
    result["push_mibps"] = {int(k): v for k, v in result["push_mibps"].items()}
    print(f"[codec]   done in {time.time() - started:.0f} s", flush=True)
    return result


#: Figures where more is better; for the others (times, memory) less is better.
_HIGHER = ("push_mibps", "torch_push_mibps")


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure at its best over the runs: on a shared machine, the least disturbed."""
    best = dict(runs[0])
    for key in ("fl_ms", "big_peak_ratio", "torch_fl_ms", "torch_big_peak_ratio",
                "torch_push_mibps"):
        values = [r[key] for r in runs if key in r]
        if values:
            best[key] = max(values) if key in _HIGHER else min(values)
    best["push_mibps"] = {size: max(r["push_mibps"][size] for r in runs)
                          for size in runs[0]["push_mibps"]}
    best["runs"] = runs
    return best


def plain_ray_floors(rounds: int) -> dict[str, float]:
    """The FL round's calls in one plain Ray cluster (no parties), numpy and torch models,
    alternated twice; the best of each (ms). Ray copies a tensor wherever it crosses a
    task boundary (it pickles it) and passes a numpy array as a view: this is what a
    torch round costs more than a numpy round before any engine takes part."""
    numpy_ms, torch_ms = [], []
    for _ in range(2):
        numpy_ms.append(plain_ray_fl_seconds(rounds) * 1000)
        torch_ms.append(plain_ray_fl_seconds(rounds, torch=True) * 1000)
    return {"numpy": min(numpy_ms), "torch": min(torch_ms)}


def table_rows(pickled: dict[str, Any], codec: dict[str, Any],
               floors: dict[str, float] | None = None) -> list[list[str]]:
    """figure, unit, pickle, codec, ratio, target, holds."""
    rows = []

    def row(name: str, unit: str, old: float | None, new: float, target: str,
            holds: bool | None) -> None:
        ratio = new / old if old else None
        rows.append([name, unit, bench._fmt(old), bench._fmt(new), bench._fmt(ratio), target,
                     {True: "yes", False: "NO", None: "-"}[holds]])

    for size in sorted(codec["push_mibps"]):
        old, new = pickled["push_mibps"].get(size), codec["push_mibps"][size]
        row(f"push alice->bob {bench._size_label(size)} float32", "MiB/s", old, new,
            f">= 1/{NOISE:g} x pickle", new >= old / NOISE if old else None)
    row("FL round, numpy (2 x 25 MB in, mean, back)", "ms/round", pickled["fl_ms"],
        codec["fl_ms"], f"<= {NOISE:g} x pickle", codec["fl_ms"] <= pickled["fl_ms"] * NOISE)
    row("receiver peak, 1 GiB numpy push", "x payload", pickled["big_peak_ratio"],
        codec["big_peak_ratio"], "<= 1.1", codec["big_peak_ratio"] <= 1.1)
    if "torch_fl_ms" in codec:
        row("FL round, torch state_dict (vs numpy, codec)", "ms/round", codec["fl_ms"],
            codec["torch_fl_ms"], "<= 1.1 x numpy", codec["torch_fl_ms"] <= codec["fl_ms"] * 1.1)
        row("push 1 GiB torch tensor (vs numpy, codec)", "MiB/s",
            codec["push_mibps"][codec["big_bytes"]], codec["torch_push_mibps"], "-", None)
        row("receiver peak, 1 GiB tensor push", "x payload", None,
            codec["torch_big_peak_ratio"], "<= 1.1", codec["torch_big_peak_ratio"] <= 1.1)
    if floors is not None and "torch_fl_ms" in codec:
        row("FL round in one plain Ray, torch (vs numpy)", "ms/round", floors["numpy"],
            floors["torch"], "-", None)
        row("FL round minus plain Ray, torch (vs numpy)", "ms/round",
            codec["fl_ms"] - floors["numpy"], codec["torch_fl_ms"] - floors["torch"], "-", None)
    return rows


def format_rows(rows: list[list[str]]) -> str:
    head = ["figure", "unit", "pickle", "codec", "codec/pickle", "target", "holds"]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--pickle-ref", default=PICKLE_REF,
                        help=f"the commit whose engine is the pickle column ({PICKLE_REF})")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs of each engine, alternated; each figure is the best run's")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument("--ray-zero-copy-tensors", action="store_true",
                        help="run the codec column with Ray's RAY_ENABLE_ZERO_COPY_TORCH_TENSORS=1 "
                             "(tensors pass between a party's tasks as views, not copies)")
    parser.add_argument("--json", help="write every measurement to this file")
    args = parser.parse_args(argv)
    torch = not args.no_torch
    if torch:
        try:
            import torch as _  # noqa: F401
        except ImportError:
            print("[codec] PyTorch is not installed: the PyTorch rows are skipped "
                  "(pip install -e '.[torch]')", flush=True)
            torch = False
    started, load_before = time.time(), os.getloadavg()
    pickled_runs, codec_runs = [], []
    codec_env = {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"} if args.ray_zero_copy_tensors else {}
    with tempfile.TemporaryDirectory(prefix="fed-pickle-engine-") as old_tree:
        extract_engine(args.pickle_ref, old_tree)
        for _ in range(args.rounds):  # alternate, so a load spike hits both columns alike
            pickled_runs.append(run_engine(old_tree, args.quick,
                                           f"the pickle engine ({args.pickle_ref})", False))
            codec_runs.append(run_engine(REPO, args.quick, "this checkout's engine (codec)",
                                         torch, codec_env))
    floors = None
    if torch:
        print("[codec] the FL round in one plain Ray cluster, numpy and torch ...", flush=True)
        os.environ.update(codec_env)
        floors = plain_ray_floors(3 if args.quick else 10)
    pickled, codec = best_of(pickled_runs), best_of(codec_runs)
    rows = table_rows(pickled, codec, floors)
    print()
    print(f"pickle: {pickled['engine']} at {args.pickle_ref}; codec: this checkout; "
          f"Ray {codec['ray']}, Python {codec['python']}")
    print(format_rows(rows))
    load_after = os.getloadavg()
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on "
          f"{os.cpu_count()} cores; {time.time() - started:.0f} s in all")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bench.jsonable({"pickle": pickled, "codec": codec, "rows": rows,
                                      "plain_ray_fl_ms": floors, "codec_env": codec_env,
                                      "pickle_ref": args.pickle_ref}), f, indent=1)
    return 0 if all(r[-1] != "NO" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
