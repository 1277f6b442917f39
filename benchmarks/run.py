"""Cross-party benchmarks of the `fed` engine importable here, with the machine's limits.

    python benchmarks/run.py                 # this repo's engine, plus the limits, one table
    python benchmarks/run.py --json out.json # also write every measurement
    python benchmarks/compare.py             # the same, side by side with RayFed

Two real parties (alice, bob): separate processes, each with its own Ray cluster, talking
over loopback. Every figure is measured in this run; nothing is a constant.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _harness import (  # noqa: E402
    MemorySampler,
    MiB,
    PartyRun,
    machine,
    median,
    memcpy_seconds,
    plain_ray_fl_seconds,
    plain_ray_tiny_seconds,
    post,
    session_processes,
    settle_memory,
    socket_round_trip,
    socket_throughput,
)

PARTIES = ("alice", "bob")
GiB = 1024 * MiB


def default_params(quick: bool = False) -> dict[str, Any]:
    return {
        "big_bytes": GiB,
        "big_reps": 3,
        "push_sizes": [(MiB, 21), (16 * MiB, 11), (128 * MiB, 7)] if not quick
        else [(MiB, 5), (16 * MiB, 3), (128 * MiB, 3)],
        "tiny_warmup": 100 if not quick else 20,
        "tiny_iters": 1000 if not quick else 100,
        "fl_warmup": 2,
        "fl_rounds": 10 if not quick else 3,
        "num_cpus": 2,
        "object_store_bytes": 3 * GiB,
        "job_name": "bench",
    }


# ---- limits -----------------------------------------------------------------------------------


def measure_limits(quick: bool = False) -> dict[str, Any]:
    """The machine's floor for each figure, measured now."""
    from suite import fl_numpy_seconds

    sizes = [(MiB, 21), (16 * MiB, 11), (128 * MiB, 7), (GiB, 3)]
    socket_mibps = {}
    for size, reps in sizes:
        secs = median(socket_throughput(size, reps if not quick else 3))
        socket_mibps[size] = size / MiB / secs
    rtt = median(socket_round_trip(2000 if not quick else 300))
    memcpy = median(memcpy_seconds(128 * MiB, 7))
    fl_numpy = median(fl_numpy_seconds())
    import ray

    plain_ray = plain_ray_tiny_seconds(1000 if not quick else 200)
    plain_ray_fl = plain_ray_fl_seconds(10 if not quick else 3)
    return {
        "plain_ray_tiny_s": plain_ray,
        "plain_ray_fl_s": plain_ray_fl,
        "plain_ray_version": ray.__version__,
        "socket_mibps": socket_mibps,
        "socket_rtt_s": rtt,
        "memcpy_128mib_mibps": 128 / memcpy,
        "fl_numpy_s": fl_numpy,
    }


# ---- one engine ---------------------------------------------------------------------------------


def _wait_all(run: PartyRun, run_dir: str, name: str, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    for party in PARTIES:
        path = os.path.join(run_dir, f"{party}.{name}")
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{party} did not reach {name!r} in {timeout:.0f} s")
            dead = [p for p, proc in run.procs.items() if not proc.is_alive()]
            if dead:
                run.wait()  # raises with the party's traceback
                raise RuntimeError(f"{dead} ended before {name!r}")
            time.sleep(0.02)


def _sample_big_pushes(run: PartyRun, run_dir: str, step: str, reps: int) -> list[dict]:
    """bob's memory before and during each big push (the party steps `step`_i)."""
    out = []
    for i in range(reps):
        _wait_all(run, run_dir, f"{step}_{i}")
        before = settle_memory(run.sid("bob"), quiet_s=1.0, max_s=10.0)
        with MemorySampler(run.sid("bob")) as sampler:
            post(run_dir, f"go.{step}_{i}")
            _wait_all(run, run_dir, f"{step}_{i}_done")
        out.append({"before": before, "peak": dict(sampler.peak), "samples": sampler.samples})
        post(run_dir, f"go.{step}_{i}_done")
    return out


def _peak_ratio(pushes: list[dict], nbytes: int) -> float:
    """The worst push: bob's peak during it minus his settled memory before, x payload."""
    return max(b["peak"]["pss"] - b["before"]["pss"] for b in pushes) / nbytes


def measure_engine(params: dict[str, Any]) -> dict[str, Any]:
    """Run the suite as two parties; measure their memory from outside meanwhile."""
    import suite

    run_dir = tempfile.mkdtemp(prefix="fed-bench-")
    run = PartyRun(suite.party_main, PARTIES, args=(run_dir, params), timeout=1800)
    memory: dict[str, Any] = {}
    try:
        run.start()
        _wait_all(run, run_dir, "ray_up")
        memory["ray_only"] = {p: settle_memory(run.sid(p)) for p in PARTIES}
        post(run_dir, "go.ray_up")
        _wait_all(run, run_dir, "engine_idle")
        memory["engine_idle"] = {p: settle_memory(run.sid(p)) for p in PARTIES}
        memory["engine_idle_processes"] = {p: session_processes(run.sid(p)) for p in PARTIES}
        post(run_dir, "go.engine_idle")
        memory["big"] = _sample_big_pushes(run, run_dir, "big", params["big_reps"])
        if params.get("torch"):
            memory["tbig"] = _sample_big_pushes(run, run_dir, "tbig", params["big_reps"])
        results = run.wait()
    finally:
        run.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    alice, bob = results["alice"], results["bob"]
    push = {int(size): times for size, times in alice["push"].items()}
    engine_add = {
        p: memory["engine_idle"][p]["pss"] - memory["ray_only"][p]["pss"] for p in PARTIES
    }
    idle_bob = memory["engine_idle"]["bob"]["pss"]
    return {
        "engine": alice["engine"],
        "ray": alice["ray"],
        "python": sys.version.split()[0],
        "tiny_ms": alice["tiny_s_per_iter"] * 1000,
        "push_mibps": {size: size / MiB / median(times) for size, times in push.items()},
        "push_times_s": push,
        "fl_ms": sum(alice["fl_round_s"]) / len(alice["fl_round_s"]) * 1000,
        "fl_round_s": alice["fl_round_s"],
        "big_bytes": params["big_bytes"],
        # Per push: bob's peak during it minus bob's settled memory just before it; the
        # figure is the worst push. (Ray's object store keeps freed pages resident, so
        # the peak over the *first* idle also counts earlier pushes' retained pages
        # whenever Ray places the next object in fresh store memory: kept for the docs.)
        "big_peak_ratio": _peak_ratio(memory["big"], params["big_bytes"]),
        "big_peak_ratios": [(b["peak"]["pss"] - b["before"]["pss"]) / params["big_bytes"]
                            for b in memory["big"]],
        "big_peak_over_first_idle_ratio": (max(b["peak"]["pss"] for b in memory["big"])
                                           - idle_bob) / params["big_bytes"],
        **_torch_figures(alice, memory, params),
        "engine_idle_add_bytes": engine_add,
        "engine_idle_add_mib": max(engine_add.values()) / MiB,
        # The proxy actors' own processes (ray::ReceiverProxy here; RayFed's
        # ray::SenderProxyActor and ray::ReceiverProxyActor), RSS as `ps` shows it.
        "proxy_rss_mib": max(
            sum(x["rss"] for x in memory["engine_idle_processes"][p] if "Proxy" in x["title"])
            for p in PARTIES
        ) / MiB,
        "fed_init_s": max(alice["fed_init_s"], bob["fed_init_s"]),
        "memory": memory,
    }


def _torch_figures(alice: dict[str, Any], memory: dict[str, Any],
                   params: dict[str, Any]) -> dict[str, Any]:
    """The PyTorch rows (params["torch"]): FL round and 1 GiB tensor push."""
    if not params.get("torch"):
        return {}
    big = params["big_bytes"]
    return {
        "torch_fl_ms": sum(alice["torch_fl_round_s"]) / len(alice["torch_fl_round_s"]) * 1000,
        "torch_fl_round_s": alice["torch_fl_round_s"],
        "torch_push_mibps": big / MiB / median(alice["torch_push"][big]),
        "torch_big_peak_ratio": _peak_ratio(memory["tbig"], big),
    }


# ---- the table -----------------------------------------------------------------------------------


def _size_label(size: int) -> str:
    return f"{size // GiB} GiB" if size >= GiB else f"{size // MiB} MiB"


def rows(ours: dict[str, Any], limits: dict[str, Any],
         rayfed: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per figure: value(s), the limit, value as a multiple of the limit, target."""
    sock = limits["socket_mibps"]
    out = []

    def row(name, unit, key, get, limit=None, limit_text="", better="lower", target=None):
        mine = get(ours)
        theirs = get(rayfed) if rayfed is not None else None
        out.append({
            "name": name, "unit": unit, "key": key, "ours": mine, "rayfed": theirs,
            "limit": limit, "limit_text": limit_text, "better": better, "target": target,
        })

    row("tiny tasks (alice+bob call, aggregate, fed.get)", "ms/iter", "tiny",
        lambda r: r["tiny_ms"], limits["plain_ray_tiny_s"] * 1000,
        "same calls, one plain Ray cluster", target=("rayfed_ratio_max", 0.2))
    for size in sorted(ours["push_mibps"]):
        target = ("limit_ratio_min", 0.5) if size == 128 * MiB else None
        row(f"push alice->bob {_size_label(size)} float32", "MiB/s", f"push_{size}",
            lambda r, s=size: r["push_mibps"].get(s), sock.get(size),
            f"socket {_size_label(size)}", better="higher", target=target)
    fl_floor = 2 * 25e6 / MiB / sock[128 * MiB] * 1000 + limits["plain_ray_fl_s"] * 1000
    row("FL round (2 x 25 MB in, mean, back to both)", "ms/round", "fl",
        lambda r: r["fl_ms"], fl_floor, "same calls in one plain Ray + 2 x 25 MB by socket",
        target=("rayfed_ratio_max", 0.25))
    row("receiver peak during a 1 GiB push, above before", "x payload", "big_peak",
        lambda r: r["big_peak_ratio"], 1.0, "payload once", target=("max", 1.5))
    row("engine adds to an idle party (PSS)", "MiB", "engine_idle",
        lambda r: r["engine_idle_add_mib"], None, "", target=("max", 150))
    row("proxy actor processes, own RSS (idle)", "MiB", "proxy_rss",
        lambda r: r.get("proxy_rss_mib"), None, "")
    row("fed.init after Ray is up", "s", "fed_init",
        lambda r: r["fed_init_s"], None, "", target=("max", 0.5))
    return out


def verdict(r: dict[str, Any]) -> bool | None:
    target = r["target"]
    if target is None or r["ours"] is None:
        return None
    kind, bound = target
    if kind == "max":
        return r["ours"] <= bound
    if kind == "limit_ratio_min":
        return r["limit"] is not None and r["ours"] / r["limit"] >= bound
    if kind == "rayfed_ratio_max":
        if r["rayfed"] is None:
            return None
        return r["ours"] / r["rayfed"] <= bound
    return None


def target_text(r: dict[str, Any]) -> str:
    target = r["target"]
    if target is None:
        return ""
    kind, bound = target
    if kind == "max":
        return f"<= {bound:g}"
    if kind == "limit_ratio_min":
        return f">= {bound:g} x limit"
    return f"<= {bound:g} x RayFed"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_table(table: list[dict[str, Any]], ours_name: str,
                 rayfed_name: str | None = None, rayfed_note: str = "") -> str:
    head = ["figure", "unit", "this repo"]
    if rayfed_name is not None:
        head += ["RayFed", "this/RayFed"]
    head += ["limit", "this/limit", "target", "holds"]
    lines = []
    for r in table:
        line = [r["name"], r["unit"], _fmt(r["ours"])]
        if rayfed_name is not None:
            ratio = (r["ours"] / r["rayfed"]) if (r["rayfed"] and r["ours"] is not None) else None
            line += [_fmt(r["rayfed"]) if r["rayfed"] is not None else rayfed_note or "-",
                     _fmt(ratio)]
        lim = r["limit"]
        line += [f"{_fmt(lim)} ({r['limit_text']})" if lim is not None else "-",
                 _fmt(r["ours"] / lim) if lim and r["ours"] is not None else "-",
                 target_text(r)]
        v = verdict(r)
        line.append({True: "yes", False: "NO", None: "-" if r["target"] is None else "n/a"}[v])
        lines.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]

    def fmt_line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [fmt_line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt_line(line) for line in lines]
    return "\n".join(out)


def format_limits(limits: dict[str, Any]) -> str:
    sock = ", ".join(f"{_size_label(s)} {v:,.0f} MiB/s"
                     for s, v in sorted(limits["socket_mibps"].items()))
    return (
        f"limits (same run): plain TCP socket between two processes: {sock}; small-message "
        f"round trip {limits['socket_rtt_s'] * 1e6:.0f} us; the tiny-task calls in one plain "
        f"Ray {limits['plain_ray_version']} cluster {limits['plain_ray_tiny_s'] * 1e3:.2f} "
        f"ms/iter, the FL round's calls {limits['plain_ray_fl_s'] * 1e3:.1f} ms/round; "
        f"memcpy 128 MiB "
        f"{limits['memcpy_128mib_mibps']:,.0f} MiB/s; numpy mean of two 25 MB models "
        f"{limits['fl_numpy_s'] * 1000:.1f} ms"
    )


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    parser.add_argument("--engine-only", action="store_true",
                        help="skip the limits (compare.py measures them once)")
    parser.add_argument("--torch", action="store_true",
                        help="also the FL round and the 1 GiB push with PyTorch tensors")
    args = parser.parse_args(argv)

    json_path = os.path.abspath(args.json) if args.json else None
    # Ray puts the driver's working directory on its workers' sys.path: run from here, so
    # a checkout's `fed/` never shadows the engine under test (compare.py's RayFed).
    os.chdir(HERE)
    params = default_params(args.quick)
    params["torch"] = args.torch
    started = time.time()
    load_before = os.getloadavg()
    limits = None if args.engine_only else measure_limits(args.quick)
    ours = measure_engine(params)
    result = {"engine": ours, "limits": limits, "machine": machine(),
              "load_before": load_before, "load_after": os.getloadavg(),
              "params": params, "seconds": time.time() - started}
    if json_path:
        with open(json_path, "w") as f:
            json.dump(jsonable(result), f, indent=1)
    if limits is not None:
        print(f"engine: {ours['engine']} on Ray {ours['ray']}, Python {ours['python']}")
        print(format_table(rows(ours, limits), ours["engine"]))
        print(format_limits(limits))
        print(f"load average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
