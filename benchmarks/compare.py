"""This repo's engine and RayFed, same benchmark code, same run, one table with ratios.

    python benchmarks/compare.py            # full run (~5-10 minutes on 2 cores)
    python benchmarks/compare.py --quick    # fewer repetitions
    python benchmarks/compare.py --json results.json

RayFed is PyPI's `rayfed-nightly` (its last published build, 2024-02-01). It does not start
on the Ray this repo uses (2.60: its GcsClient call and actor-method lookup break), so it
runs from its own virtual environment with a Ray release its CI covered (2.31-2.35), made
here on first use (``--venv`` to choose where; ``--rebuild`` to make it again). Both
packages import as `fed`; benchmarks/suite.py uses only the API they share.

If that environment cannot be made (no network, no wheel for this Python, ...), the RayFed
column says why and the rest of the table is still measured.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402

RAYFED_PACKAGE = "rayfed-nightly==0.1.0b20240201.dev0"  # the newest build on PyPI
RAYFED_RAY = "ray==2.35.0"  # newest of the releases RayFed's CI ran (2.31-2.35)
# numpy and psutil are what benchmarks/suite.py and _harness.py need besides fed and ray.
RAYFED_EXTRA = ["numpy", "psutil"]
DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "rayfed-bench",
                            f"venv-py{sys.version_info.major}{sys.version_info.minor}-"
                            + RAYFED_RAY.replace("==", "-"))


class Unavailable(Exception):
    """RayFed cannot be run here; the message says exactly why."""


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_rayfed_venv(path: str, rebuild: bool = False, ray_req: str = RAYFED_RAY) -> str:
    """The python of a virtual environment with RayFed and its Ray; made if missing."""
    python = os.path.join(path, "bin", "python")
    marker = os.path.join(path, ".rayfed-bench-ok")
    wanted = " ".join([RAYFED_PACKAGE, ray_req, *RAYFED_EXTRA])
    if not rebuild and os.path.exists(marker) and open(marker).read() == wanted:
        return python
    print(f"[compare] making RayFed's environment in {path} ({wanted}) ...", flush=True)
    if rebuild or not os.path.exists(python):
        made = subprocess.run([sys.executable, "-m", "venv", "--clear", path],
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise Unavailable(f"`python -m venv {path}` failed: {_tail(made.stderr)}")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q",
           RAYFED_PACKAGE, ray_req, *RAYFED_EXTRA]
    done = subprocess.run(pip, capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable(_explain_pip_failure(done.stdout + done.stderr, ray_req))
    check = subprocess.run(
        [python, "-c", "import fed, ray, fed.proxy; print(ray.__version__, fed.__file__)"],
        capture_output=True, text=True, cwd=HERE, env=_clean_env(),
    )
    if check.returncode != 0:
        raise Unavailable(f"RayFed installed but does not import: {_tail(check.stderr)}")
    with open(marker, "w") as f:
        f.write(wanted)
    return python


def _explain_pip_failure(output: str, ray_req: str = RAYFED_RAY) -> str:
    import re

    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    output = "\n".join(line for line in output.splitlines()
                       if not line.startswith("WARNING: Location"))  # local index noise
    missing = re.findall(r"no matching distribution found for (\S+)", output, re.I)
    if missing:
        what = ", ".join(missing)
        hint = ""
        if any(m.lower().startswith("ray") and "rayfed" not in m.lower() for m in missing):
            hint = (f" RayFed needs a Ray release its CI covered (2.31-2.35), and pip has no "
                    f"wheel of {ray_req} for Python {py} on this platform.")
        elif any("rayfed" in m.lower() for m in missing):
            hint = " The package index here does not serve rayfed-nightly."
        return f"pip found no distribution for {what}.{hint} pip said: {_tail(output, 4)}"
    text = output.lower()
    if any(w in text for w in ("connection", "temporary failure", "name resolution",
                               "network is unreachable", "timed out")):
        return f"the package index could not be reached: {_tail(output, 4)}"
    return f"pip install failed: {_tail(output, 8)}"


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # nothing of this checkout may leak into RayFed's run
    env.pop("PYTHONHOME", None)
    return env


def run_engine(python: str, quick: bool, label: str) -> dict[str, Any]:
    """benchmarks/run.py --engine-only under `python`; its measurements."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    cmd = [python, os.path.join(HERE, "run.py"), "--engine-only", "--json", out]
    if quick:
        cmd.append("--quick")
    print(f"[compare] running the suite on {label} ...", flush=True)
    started = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, env=_clean_env(),
                          timeout=3600)
    try:
        if done.returncode != 0:
            raise RuntimeError(f"the suite failed on {label}:\n{_tail(done.stderr, 40)}")
        with open(out) as f:
            result = json.load(f)
    finally:
        os.unlink(out)
    print(f"[compare]   done in {time.time() - started:.0f} s", flush=True)
    return _intkeys(result["engine"])


def _intkeys(engine: dict[str, Any]) -> dict[str, Any]:
    for key in ("push_mibps", "push_times_s"):
        engine[key] = {int(k): v for k, v in engine[key].items()}
    return engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--venv", default=DEFAULT_VENV, help="RayFed's virtual environment")
    parser.add_argument("--rebuild", action="store_true", help="make that environment again")
    parser.add_argument("--rayfed-ray", default=RAYFED_RAY,
                        help=f"the Ray RayFed runs on (default {RAYFED_RAY}; its CI covered "
                             "2.31-2.35)")
    parser.add_argument("--skip-rayfed", action="store_true", help="this repo's engine only")
    args = parser.parse_args(argv)
    json_path = os.path.abspath(args.json) if args.json else None

    started = time.time()
    load_before = os.getloadavg()
    rayfed_python, rayfed_note, rayfed_reason = None, "", ""
    if not args.skip_rayfed:
        venv = args.venv
        if args.rayfed_ray != RAYFED_RAY and venv == DEFAULT_VENV:
            venv = venv.replace(RAYFED_RAY.replace("==", "-"), args.rayfed_ray.replace("==", "-"))
        try:
            rayfed_python = ensure_rayfed_venv(venv, args.rebuild, args.rayfed_ray)
        except Unavailable as exc:
            rayfed_note, rayfed_reason = "unavailable", str(exc)
            print(f"[compare] RayFed cannot run here: {exc}", flush=True)
    else:
        rayfed_note = "skipped"

    os.chdir(HERE)
    print("[compare] measuring the machine's limits ...", flush=True)
    limits = bench.measure_limits(args.quick)
    ours = run_engine(sys.executable, args.quick, "this repo's engine")
    rayfed = None
    if rayfed_python is not None:
        try:
            rayfed = run_engine(rayfed_python, args.quick, "RayFed")
        except Exception as exc:  # report, and still print our column
            rayfed_note, rayfed_reason = "failed", str(exc)
            print(f"[compare] RayFed's run failed: {exc}", flush=True)
    load_after = os.getloadavg()

    table = bench.rows(ours, limits, rayfed)
    print()
    print(f"this repo: {ours['engine']} on Ray {ours['ray']}, Python {ours['python']}")
    if rayfed is not None:
        print(f"RayFed:    {rayfed['engine']} on Ray {rayfed['ray']}, Python {rayfed['python']}")
    else:
        print(f"RayFed:    {rayfed_note}: {rayfed_reason or 'skipped with --skip-rayfed'}")
    m = bench.machine()
    print(f"machine:   {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux "
          f"{m['kernel']}")
    print(bench.format_table(table, ours["engine"], "RayFed", rayfed_note))
    print(bench.format_limits(limits))
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on "
          f"{os.cpu_count()} cores; {time.time() - started:.0f} s in all")
    held = [bench.verdict(r) for r in table if r["target"] is not None]
    print(f"targets: {sum(1 for v in held if v)} of {len(held)} hold"
          + ("" if all(v is not None for v in held) else " (some need the RayFed column)"))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(bench.jsonable({
                "ours": ours, "rayfed": rayfed, "rayfed_note": rayfed_note, "limits": limits,
                "machine": bench.machine(), "load_before": load_before,
                "load_after": load_after, "table": table,
            }), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
