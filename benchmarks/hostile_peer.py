"""How much memory an authenticated, hostile party can make another party hold.

    python benchmarks/hostile_peer.py            # the table (about 2 minutes)
    python benchmarks/hostile_peer.py --quick    # shorter phases (the slow test runs this)
    python benchmarks/hostile_peer.py --json out.json

Two honest parties, alice and bob (real processes, each its own Ray cluster, mutual TLS
with `fed certs` certificates), run small rounds the whole time. A third party of the
job, mallory, holds a valid certificate of its own and speaks docs/protocol.md
directly to bob's port, one attack per phase (benchmarks/_hostile.py). Meanwhile the
resident memory of bob's receiver actor process (where every byte mallory sends
lands) is sampled every 5 ms. Per phase: the peak above the memory just before it,
the bound the engine documents for what one peer can make a party hold
(docs/security.md, `fed.transport.limits.peer_memory_bound`) for the connections
mallory held, honest rounds completed during the phase, and honest reconnections:
a fresh connection as alice (alice's certificate, from alice's address), HELLO then
PING, once a second. Exits 1 if a bound is exceeded, an honest round fails or
stalls for a whole phase, or an honest reconnection fails.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _hostile
from _harness import (
    MiB,
    PartyRun,
    Periodic,
    RssSampler,
    machine,
    session_processes,
    settle_rss,
)
from _honest import party_main

from fed.cli.certs import create_dev_pki, party_paths
from fed.cli.ports import PortLease
from fed.transport import wire
from fed.transport.limits import ReceiverLimits, peer_memory_bound

PARTIES = ("alice", "bob", "mallory")
VICTIM = "bob"
BUDGET = 64 * MiB


def default_params(quick: bool) -> dict[str, Any]:
    return {
        "job": f"hostile-{os.getpid()}",
        "hold_s": 2.0 if quick else 5.0,
        "pause_s": 0.05,
        "round_timeout_s": 60.0,
        "comm": {"max_buffered_bytes_per_peer": BUDGET},
    }


def phases(alice_ordinal: Callable[[], int]) -> list:
    """(name, attack) in the order they run; held values come last (they stay held)."""
    return [
        ("MSG declaring a 4 GiB buffer, 1 MiB sent, silence", _hostile.declared_4gib),
        ("MSG declaring 4,096 buffers of 1 MiB, 1 MiB sent, silence",
         _hostile.declared_small_buffers),
        ("MSG declaring 1,000,000 buffers, silence, x32 connections", _hostile.million_buffers),
        ("1 MiB PING decoding to ~73 MiB, x32 connections", _hostile.large_frames),
        ("stalled / trickling connections past the caps", _hostile.stalled_connections),
        ("NOTICEs about alice's values, posing as alice",
         lambda t, hold: _hostile.notices_about_others(t, hold, alice_ordinal())),
        ("unclaimed values (1 in 8 decodes to 256 MiB)",
         lambda t, hold: _hostile.unclaimed_values(t, hold, budget=BUDGET)),
    ]


class Prober(Periodic):
    """Once a second: a fresh connection as alice, HELLO then PING; counts successes."""

    def __init__(self, target: _hostile.Target, every_s: float = 1.0) -> None:
        super().__init__(every_s)
        self.target = target
        self.ok = self.tried = 0

    def tick(self) -> None:
        self.tried += 1
        self.ok += self._probe()

    def _probe(self) -> bool:
        sock = _hostile.session(self.target, src="alice", source="127.0.0.1")
        if sock is None:
            return False
        try:
            wire.send_control(sock, wire.PING, {})
            return _hostile.reply(sock)[0] == wire.PONG
        finally:
            _hostile.close_all([sock])


def rounds_done(run_dir: str) -> tuple[int, int]:
    """(rounds alice finished, rounds whose result was wrong) so far."""
    try:
        with open(os.path.join(run_dir, "alice.rounds")) as f:
            done, wrong = f.read().split()
        return int(done), int(wrong)
    except (OSError, ValueError):
        return 0, 0


def party_errors(run_dir: str) -> str:
    texts = []
    for party in ("alice", "bob"):
        path = os.path.join(run_dir, f"{party}.error")
        if os.path.exists(path):
            with open(path) as f:
                texts.append(f"--- {party}:\n{f.read()}")
    return "\n".join(texts)


def run_phase(name: str, attack: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    """One attack with the victim's memory sampled and honest traffic watched."""
    pid, run_dir = ctx["pid"], ctx["run_dir"]
    before = settle_rss(pid)
    rounds_before = rounds_done(run_dir)
    with RssSampler(pid) as sampler, Prober(ctx["alice"]) as prober:
        started = time.monotonic()
        connections = attack(ctx["mallory"], ctx["params"]["hold_s"])
        seconds = time.monotonic() - started
    after = settle_rss(pid)
    rounds_after = rounds_done(run_dir)
    bound = peer_memory_bound(ctx["limits"], connections)
    growth = max(0, sampler.peak - before)
    return {
        "phase": name, "connections": connections, "seconds": seconds,
        "before": before, "peak": sampler.peak, "after": after, "samples": sampler.samples,
        "growth": growth, "kept": after - before, "bound": bound, "ratio": growth / bound,
        "rounds": rounds_after[0] - rounds_before[0], "wrong": rounds_after[1] - rounds_before[1],
        "probes_ok": prober.ok, "probes": prober.tried,
    }


# ---- setup -------------------------------------------------------------------------------------


def _await_ready(run: PartyRun, run_dir: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    for party in ("alice", "bob"):
        while not os.path.exists(os.path.join(run_dir, f"{party}.ready")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{party} did not start in {timeout:.0f} s")
            if not all(p.is_alive() for p in run.procs.values()):
                run.wait()  # raises with the party's traceback
            time.sleep(0.05)


def _receiver_pid(run: PartyRun, timeout: float = 60.0) -> int:
    """The process of the victim's receiver actor (Ray titles it ray::ReceiverProxy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in session_processes(run.sid(VICTIM)):
            if proc["title"].startswith("ray::ReceiverProxy"):
                return proc["pid"]
        time.sleep(0.2)
    raise TimeoutError(f"{VICTIM}'s receiver actor process did not appear")


def _target(book: dict[str, str], pki: str, job: str, who: str) -> _hostile.Target:
    host, port = book[VICTIM].rsplit(":", 1)
    cert, key = party_paths(Path(pki), who)
    return _hostile.Target(host, int(port), job, VICTIM, str(cert), str(key),
                           os.path.join(pki, "ca.crt"), ReceiverLimits().max_header_bytes)


def _sink(book: dict[str, str], pki: str, job: str) -> _hostile.Sink:
    host, port = book["mallory"].rsplit(":", 1)
    cert, key = party_paths(Path(pki), "mallory")
    return _hostile.Sink(host, int(port), str(cert), str(key), os.path.join(pki, "ca.crt"),
                         "mallory", job).start()


def _attack_all(run: PartyRun, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """Every phase in turn; stops early if an honest party failed."""
    results = []
    alice_ordinal = lambda: 2 * rounds_done(ctx["run_dir"])[0]
    for name, attack in phases(alice_ordinal):
        results.append(run_phase(name, attack, ctx))
        print(format_row(results[-1]), flush=True)
        if party_errors(ctx["run_dir"]):
            break
    return results


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Start the honest parties and mallory's sink, run the phases, stop everything."""
    from _harness import post

    run_dir = tempfile.mkdtemp(prefix="fed-hostile-")
    pki = os.path.join(run_dir, "pki")
    create_dev_pki(list(PARTIES), Path(pki))
    limits = ReceiverLimits.from_comm(params["comm"])
    try:
        with PortLease() as lease:
            book = lease.addresses(PARTIES)
            sink = _sink(book, pki, params["job"])
            run = PartyRun(party_main, ("alice", "bob"), args=(pki, run_dir, params),
                           addresses=book, timeout=300)
            try:
                run.start()
                _await_ready(run, run_dir)
                ctx = {"run_dir": run_dir, "params": params, "limits": limits,
                       "pid": _receiver_pid(run),
                       "mallory": _target(book, pki, params["job"], "mallory"),
                       "alice": _target(book, pki, params["job"], "alice")}
                results = _attack_all(run, ctx)
                errors = party_errors(run_dir)
                post(run_dir, "stop")
                parties = {} if errors else run.wait()
            finally:
                run.stop()
                sink.stop()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"phases": results, "parties": parties, "errors": errors, "limits": limits.__dict__}


# ---- the table ---------------------------------------------------------------------------------


def holds(r: dict[str, Any]) -> bool:
    return (r["growth"] <= r["bound"] and r["rounds"] > 0 and r["wrong"] == 0
            and r["probes_ok"] == r["probes"])


COLUMNS = ("phase", "conns", "peak growth", "kept after", "bound", "growth/bound",
           "honest rounds", "honest reconnects OK", "holds")


def cells(r: dict[str, Any]) -> list[str]:
    return [r["phase"], str(r["connections"]), f"{r['growth'] / MiB:.1f} MiB",
            f"{r['kept'] / MiB:.1f} MiB", f"{r['bound'] / MiB:.1f} MiB", f"{r['ratio']:.2f}",
            f"{r['rounds']}" + (f" ({r['wrong']} wrong)" if r["wrong"] else ""),
            f"{r['probes_ok']}/{r['probes']}", "yes" if holds(r) else "NO"]


def format_row(r: dict[str, Any]) -> str:
    return "  " + " | ".join(f"{c}: {v}" for c, v in zip(COLUMNS, cells(r)))


def format_table(results: list[dict[str, Any]]) -> str:
    rows = [list(COLUMNS)] + [cells(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(row) for row in rows[1:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases (smoke test)")
    parser.add_argument("--json", help="also write every measurement to this file")
    args = parser.parse_args(argv)
    params = default_params(args.quick)
    started, load_before = time.time(), os.getloadavg()
    result = measure(params)
    result.update(machine=machine(), params=params, seconds=time.time() - started,
                  load_before=load_before, load_after=os.getloadavg())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    limits = result["limits"]
    print(f"victim: {VICTIM}'s receiver actor process, RSS sampled every 5 ms; "
          f"max_buffered_bytes_per_peer={limits['max_buffered_bytes_per_peer'] // MiB} MiB, "
          f"max_header_bytes={limits['max_header_bytes'] // 1024} KiB; "
          f"{result['seconds']:.0f} s; load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(format_table(result["phases"]))
    ok = bool(result["phases"]) and all(holds(r) for r in result["phases"])
    if result["errors"]:
        print(f"an honest party failed:\n{result['errors']}")
    complete = len(result["phases"]) == len(phases(lambda: 0))
    return 0 if ok and complete and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
