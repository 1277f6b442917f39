"""Run a function as N parties, each in its own process with its own Ray cluster.

`run_parties(fn, ["alice", "bob"])` starts one process per party (spawned, in its
own session so every process Ray starts there can be found and stopped), calls
``fn(party, addresses, *args)`` in each, and returns each party's result,
exception and exit code. Ports are loopback ports reserved per call outside the
ranges the kernel and Ray assign by themselves, locked against concurrent runs
(fed/cli/ports.py); a party that still cannot bind its port makes the scenario
rerun with fresh ports. A timeout kills everything that is left.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import secrets
import time
import traceback
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import psutil

from fed.cli.ports import PortLease
from fed.names import JOB_SECRET_ENV

_log = logging.getLogger("multiparty")


@dataclass
class PartyOutcome:
    party: str
    result: Any = None
    error: BaseException | None = None
    error_text: str = ""
    exitcode: int | None = None
    elapsed_s: float = 0.0
    killed_at: float | None = None  # wall time of a kill requested by the test

    @property
    def ok(self) -> bool:
        return self.error is None and not self.error_text and self.exitcode == 0


def start_ray(num_cpus: int = 2, object_store_memory: int | None = None) -> None:
    """A small local Ray cluster for one party process."""
    import ray

    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=object_store_memory or 512 * 1024 * 1024,
        configure_logging=False,
    )


def _child(fn: Callable, party: str, addresses: dict, args: tuple, conn, secret: str) -> None:
    os.setsid()
    os.environ[JOB_SECRET_ENV] = secret  # as `fed run` does: the run's parties share it
    started = time.monotonic()
    try:
        result = fn(party, addresses, *args)
        payload = ("ok", result, None, "")
    except BaseException as exc:  # report everything, including SystemExit
        text = "".join(traceback.format_exception(exc))
        try:
            import pickle

            pickle.dumps(exc)
            payload = ("err", None, exc, text)
        except Exception:
            payload = ("err", None, None, text)
    try:
        conn.send((*payload, time.monotonic() - started))
    except Exception:
        conn.send(("err", None, None, "unpicklable result", time.monotonic() - started))
    conn.close()
    code = 0 if payload[0] == "ok" else 1
    if isinstance(payload[2], SystemExit) and isinstance(payload[2].code, int):
        code = payload[2].code
    os._exit(code)


def kill_sessions(sids: Collection[int], *, marker: str | None = None,
                  timeout_s: float = 10) -> None:
    """Stop every process of the sessions `sids` (a party's Ray cluster started there),
    and with `marker` every process whose command line contains it; wait for them."""
    victims = []
    for proc in psutil.process_iter(["pid", "cmdline"] if marker else ["pid"]):
        try:
            if proc.pid == os.getpid():
                continue
            marked = marker is not None and marker in " ".join(proc.info["cmdline"] or ())
            if os.getsid(proc.pid) in sids or marked:
                victims.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    for proc in victims:
        try:
            proc.kill()
        except psutil.Error:
            pass
    # Our own children are reaped by whoever started them (multiprocessing needs the
    # exit code, subprocess.Popen.wait too), not here.
    mine = {c.pid for c in psutil.Process().children()}
    psutil.wait_procs([v for v in victims if v.pid not in mine], timeout=timeout_s)


AddressSpec = Union[None, Mapping[str, Any], Callable[[PortLease], Mapping[str, Any]]]
ArgsSpec = Union[tuple, Callable[[PortLease], tuple]]

PORT_CLASH = ("cannot listen on", "Address already in use")
ATTEMPTS = 3


def port_clash(outcomes: dict[str, PartyOutcome]) -> bool:
    """A party could not bind its port: nothing was exchanged, the scenario may rerun."""
    texts = [o.error_text + repr(o.result) for o in outcomes.values()]
    return any(all(part in text for part in PORT_CLASH) for text in texts)


def run_parties(
    fn: Callable,
    parties: Sequence[str] = ("alice", "bob"),
    *,
    timeout: float = 120,
    args: ArgsSpec = (),
    addresses: AddressSpec = None,
    kill_after: dict[str, Any] | None = None,
) -> dict[str, PartyOutcome]:
    """Run ``fn(party, addresses, *args)`` in one process per party; wait for all.

    ``addresses``: None gives each party a port reserved for this call (see
    fed/cli/ports.py); a function of a :class:`PortLease` may build the book from ports
    it reserves (``lease.reserve(n)``, ``lease.addresses(names)``), and so may ``args``
    (e.g. a second job's book). Those ports are held until the call returns. If a party
    cannot bind its port anyway, the scenario reruns with fresh ports (at most
    ``ATTEMPTS`` runs in all). A plain dict is used as is, without reruns: its ports
    are the caller's to hold.

    ``kill_after={"bob": 5.0}`` SIGKILLs bob's whole session 5 s after the start;
    ``kill_after={"bob": "/path"}`` does it as soon as that file exists (written by
    bob's code at the moment the test wants it dead). The kill time is recorded in
    the outcome. Raises TimeoutError (after killing everything) if a party is still
    running after `timeout` seconds.
    """
    parties = list(parties)
    fixed = addresses is not None and not callable(addresses)
    for attempt in range(1, ATTEMPTS + 1):
        with PortLease() as lease:
            book = _address_book(addresses, parties, lease)
            call_args = args(lease) if callable(args) else args
            rerun = not fixed and attempt < ATTEMPTS
            outcomes = _run_once(fn, parties, dict(book), tuple(call_args), timeout, kill_after,
                                 stop_on_clash=rerun)
        if not rerun or not port_clash(outcomes):
            return outcomes
        _log.warning("a party could not bind its reserved port (attempt %d of %d); rerunning "
                     "with fresh ports:\n%s", attempt, ATTEMPTS, describe(outcomes))
    raise AssertionError("unreachable")


def _address_book(spec: AddressSpec, parties: list[str], lease: PortLease) -> Mapping[str, Any]:
    if spec is None:
        return lease.addresses(parties)
    return spec(lease) if callable(spec) else spec


def _run_once(fn: Callable, parties: list[str], addresses: dict, args: tuple, timeout: float,
              kill_after: dict[str, Any] | None, stop_on_clash: bool) -> dict[str, PartyOutcome]:
    """One run of the scenario: start, watch (and kill on request), collect, clean up.

    With `stop_on_clash`, a party that cannot bind its port ends the run at once (the
    others would only wait for it): the caller reruns the scenario."""
    ctx = mp.get_context("spawn")
    procs, pipes = {}, {}
    secret = os.environ.get(JOB_SECRET_ENV) or secrets.token_hex(32)
    for party in parties:
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(fn, party, addresses, args, send, secret),
                           daemon=False)
        proc.start()
        send.close()
        procs[party], pipes[party] = proc, recv
    outcomes = {p: PartyOutcome(p) for p in parties}
    try:
        pending = _watch(procs, pipes, outcomes, timeout, kill_after or {}, stop_on_clash)
        if stop_on_clash and port_clash(outcomes):
            return outcomes  # the others are stopped below
        deadline = time.monotonic() + (0.1 if pending else 30)  # reported: just exiting
        for party in parties:
            procs[party].join(max(0.1, deadline - time.monotonic()))
            outcomes[party].exitcode = procs[party].exitcode
        if pending or any(p.is_alive() for p in procs.values()):
            raise TimeoutError(
                f"parties {sorted(pending)} still running after {timeout} s; outcomes: {outcomes}"
            )
        return outcomes
    finally:
        for proc in procs.values():
            if proc.pid is not None:
                kill_sessions({proc.pid})
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def _watch(procs: dict, pipes: dict, outcomes: dict[str, PartyOutcome], timeout: float,
           kill_after: dict[str, Any], stop_on_clash: bool) -> set[str]:
    """Collect each party's report until all are in, `timeout`, or (with `stop_on_clash`)
    a party that could not bind its port; return the parties not heard from."""
    start = time.monotonic()
    deadline = start + timeout
    killed: set[str] = set()
    pending = set(procs)
    while pending and time.monotonic() < deadline:
        for party in list(pending):
            when = kill_after.get(party)
            if when is not None and party not in killed:
                due = os.path.exists(when) if isinstance(when, str) else \
                    time.monotonic() - start >= when
                if due:
                    killed.add(party)
                    outcomes[party].killed_at = time.time()
                    kill_sessions({procs[party].pid})
                    procs[party].join(10)
            if pipes[party].poll(0.05):
                try:
                    status, result, error, text, elapsed = pipes[party].recv()
                    outcomes[party].result = result
                    outcomes[party].error = error
                    outcomes[party].error_text = text if status == "err" else ""
                    outcomes[party].elapsed_s = elapsed
                except EOFError:
                    pass
                pending.discard(party)
                if stop_on_clash and port_clash({party: outcomes[party]}):
                    return pending
            elif not procs[party].is_alive():
                outcomes[party].error_text = outcomes[party].error_text or "process died"
                pending.discard(party)
    return pending


def meet(rendezvous: str | os.PathLike, stage: str, name: str, processes: int,
         timeout: float = 90) -> None:
    """Wait until `processes` processes reached `stage` (each touches a file in `rendezvous`).

    Parties whose start-up takes seconds apart on a loaded machine meet here before a
    step whose timing the test depends on (e.g. a short startup_timeout_s)."""
    Path(rendezvous, f"{stage}-{name}").touch()
    deadline = time.monotonic() + timeout
    while sum(f.startswith(f"{stage}-") for f in os.listdir(rendezvous)) < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only some processes reached {stage!r}")
        time.sleep(0.05)


def describe(outcomes: dict[str, PartyOutcome]) -> str:
    """Readable summary for assertion messages."""
    lines = []
    for o in outcomes.values():
        lines.append(f"--- {o.party}: exit {o.exitcode}, result {o.result!r}")
        if o.error_text:
            lines.append(o.error_text)
    return "\n".join(lines)


def assert_all_ok(outcomes: dict[str, PartyOutcome]) -> None:
    bad = [o for o in outcomes.values() if not o.ok]
    if bad:
        raise AssertionError("some parties failed:\n" + describe(outcomes))


__all__ = [
    "PartyOutcome", "PortLease", "run_parties", "port_clash", "start_ray",
    "assert_all_ok", "describe", "meet",
]
