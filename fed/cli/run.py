"""``fed run``: start every party of a rayfed driver script on this machine.

Every party runs the same script (``python script.py <party>``), so trying a
program locally means starting N processes with agreed addresses and watching
N outputs. This module does that: it reserves one loopback port per party
(outside the ranges the kernel and Ray hand out by themselves, locked against
other runs until this one ends, see :mod:`fed.cli.ports`), passes the address
book in ``RAYFED_ADDRESSES`` (``fed.init`` uses it when the script gives no
addresses), prefixes each output line with its party, and makes sure that one failing party (or Ctrl+C, or a timeout) stops all of them,
including grandchildren such as the Ray processes each party starts.

Environment exported to each party process:

* ``RAYFED_ADDRESSES`` – JSON ``{"alice": "127.0.0.1:PORT", ...}``
* ``RAYFED_PARTY`` – the party this process runs
* ``RAYFED_MODE=simulation`` – only with ``--simulate`` (removed otherwise)
* ``RAYFED_JOB_NAME`` – a fresh job name per run (kept if already set), which
  ``fed.init`` uses when ``job_name`` is not given
* ``RAYFED_TLS_DIR`` – only with ``--tls``: directory holding ``ca.crt``,
  ``<party>.crt``, ``<party>.key`` (removed otherwise)
* ``PYTHONUNBUFFERED=1`` – so output shows up promptly
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

try:  # light (~10 ms); finds grandchildren that left the party's process group
    import psutil
except ImportError:  # pragma: no cover - psutil is optional; fall back to process groups only
    psutil = None  # type: ignore[assignment]

from fed.cli import UsageError
from fed.cli.certs import (
    CA_CERT_FILE,
    DEFAULT_HOSTS,
    create_dev_pki,
    party_paths,
    split_list,
    validate_parties,
)
from fed.cli.ports import PortLease
from fed.names import (  # one definition of the variables fed.init reads
    ADDRESSES_ENV as ENV_ADDRESSES,
    JOB_NAME_ENV as ENV_JOB_NAME,
    JOB_SECRET_ENV as ENV_JOB_SECRET,
    MODE_ENV as ENV_MODE,
    PARTY_ENV as ENV_PARTY,
    TLS_DIR_ENV as ENV_TLS_DIR,
)

SIMULATION_MODE = "simulation"

EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
DEFAULT_GRACE = 5.0

_POLL_INTERVAL = 0.05
_REFRESH_INTERVAL = 0.5
_READER_JOIN_TIMEOUT = 2.0


def party_env(
    base: Mapping[str, str],
    party: str,
    addresses: Mapping[str, str],
    simulate: bool = False,
    tls_dir: Path | None = None,
) -> dict[str, str]:
    """Environment for one party process; ``fed run`` owns every RAYFED_* variable it sets."""
    env = dict(base)
    env[ENV_ADDRESSES] = json.dumps(dict(addresses))
    env[ENV_PARTY] = party
    env["PYTHONUNBUFFERED"] = "1"
    env.pop(ENV_MODE, None)
    env.pop(ENV_TLS_DIR, None)
    if simulate:
        env[ENV_MODE] = SIMULATION_MODE
    if tls_dir is not None:
        env[ENV_TLS_DIR] = str(tls_dir)
    return env


def _exit_code(returncode: int) -> int:
    """Map a Popen return code to a shell-style exit status (signal N -> 128+N)."""
    if returncode < 0:
        return 128 + (-returncode)
    return returncode if 0 < returncode < 256 else 1


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class _Output:
    """Serialises whole lines from all parties (and our own messages) onto the terminal."""

    def __init__(self, out: IO[str], err: IO[str]) -> None:
        self.out, self.err = out, err
        self.lock = threading.Lock()
        self._out_broken = False

    def _write(self, stream: IO[str], text: str) -> bool:
        try:
            try:
                stream.write(text)
            except UnicodeEncodeError:
                enc = getattr(stream, "encoding", None) or "ascii"
                stream.write(text.encode(enc, "backslashreplace").decode(enc))
            stream.flush()
            return True
        except (BrokenPipeError, ValueError, OSError):
            return False

    def line(self, label: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        with self.lock:
            if not self._out_broken:
                # Keep draining the pipe even when our stdout is gone (e.g. `| head`).
                self._out_broken = not self._write(self.out, f"({label}) {text}\n")

    def message(self, text: str) -> None:
        with self.lock:
            self._write(self.err, f"fed run: {text}\n")


@dataclass
class _Party:
    name: str
    label: str
    proc: subprocess.Popen
    reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


@dataclass
class _Supervisor:
    """Tracks the party processes and everything they spawn, and stops them all."""

    output: _Output
    grace: float
    parties: list[_Party] = field(default_factory=list)
    tracked: dict[int, Any] = field(default_factory=dict)  # pid -> psutil.Process
    signals: int = 0
    last_signal: int | None = None

    # -- signals -----------------------------------------------------------
    def on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        self.last_signal = signum

    # -- process tree ------------------------------------------------------
    def refresh(self) -> None:
        """Remember descendants while their parents live: orphans lose the parent link.

        Walks down from the running parties *and* from already-tracked live
        processes, so e.g. workers a re-parented raylet starts later are found too.
        """
        if psutil is None:
            return
        roots = {p.proc.pid for p in self.parties if p.running}
        roots.update(pid for pid, proc in self.tracked.items() if self._alive(proc))
        if not roots:
            return
        kids: dict[int, list[Any]] = {}
        for proc in psutil.process_iter(["ppid"]):
            ppid = proc.info.get("ppid")
            if ppid is not None:
                kids.setdefault(ppid, []).append(proc)
        stack, seen = list(roots), set(roots)
        while stack:
            for child in kids.get(stack.pop(), ()):
                if child.pid not in seen:
                    seen.add(child.pid)
                    self.tracked[child.pid] = child
                    stack.append(child.pid)

    def _session_members(self) -> list[Any]:
        """Processes still in a party's session/process group (catches re-parented orphans)."""
        if psutil is None:
            return []
        ids = {p.proc.pid for p in self.parties}
        me = os.getpid()
        found = []
        for proc in psutil.process_iter():
            pid = proc.pid
            if pid == me or pid in ids:
                continue
            try:
                if os.getsid(pid) in ids or os.getpgid(pid) in ids:
                    found.append(proc)
            except (ProcessLookupError, PermissionError, OSError):
                continue
        return found

    @staticmethod
    def _alive(proc: Any) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def _others(self) -> list[Any]:
        """Live non-party processes we must not leave behind."""
        procs = {p.pid: p for p in self.tracked.values()}
        for p in self._session_members():
            procs.setdefault(p.pid, p)
        return [p for p in procs.values() if self._alive(p)]

    def _send(self, sig: int, others: list[Any]) -> None:
        for p in self.parties:
            if p.proc.returncode is None:  # not reaped, so its pid (= pgid) is not reused
                try:
                    os.killpg(p.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
        for proc in others:
            try:
                proc.send_signal(sig)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

    def stop_all(self) -> None:
        """SIGTERM every process group and descendant, then SIGKILL after the grace period."""
        self.refresh()
        others = self._others()
        if not others and not any(p.running for p in self.parties):
            return
        signals_before = self.signals
        self._send(signal.SIGTERM, others)
        deadline = time.monotonic() + self.grace
        next_refresh = 0.0
        while time.monotonic() < deadline and self.signals == signals_before:
            now = time.monotonic()
            if now >= next_refresh:
                self.refresh()
                next_refresh = now + _REFRESH_INTERVAL
                others = self._others()
                if not others and not any(p.running for p in self.parties):
                    return
            time.sleep(_POLL_INTERVAL)
        if self.signals != signals_before:
            self.output.message("second signal: killing all parties now")
        self.refresh()
        self._send(signal.SIGKILL, self._others())
        for p in self.parties:
            try:
                p.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.output.message(f"party {p.name} (pid {p.proc.pid}) did not die after SIGKILL")
        # Anything forked between the snapshot and the kill; then let SIGKILL land.
        self._send(signal.SIGKILL, self._others())
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and self._others():
            time.sleep(_POLL_INTERVAL)

    def join_readers(self) -> None:
        deadline = time.monotonic() + _READER_JOIN_TIMEOUT
        for p in self.parties:
            if p.reader is not None:
                p.reader.join(max(0.0, deadline - time.monotonic()))


def _pump(stream: IO[bytes], label: str, output: _Output) -> None:
    """Reader thread: forward one party's merged stdout/stderr line by line."""
    try:
        for raw in iter(stream.readline, b""):
            output.line(label, raw)
    except (OSError, ValueError):
        pass
    finally:
        try:
            stream.close()
        except OSError:
            pass


def _resolve_tls_dir(parties: Sequence[str], certs_dir: Path) -> Path:
    """Check a user-supplied PKI directory has what every party will read."""
    certs_dir = Path(certs_dir).resolve()
    needed = [certs_dir / CA_CERT_FILE]
    for party in parties:
        needed.extend(party_paths(certs_dir, party))
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise UsageError(
            f"--certs {certs_dir} lacks {', '.join(missing)} (create them with `fed certs --out {certs_dir}`)"
        )
    return certs_dir


def run_parties(
    script: os.PathLike | str,
    parties: Sequence[str],
    script_args: Sequence[str] = (),
    *,
    simulate: bool = False,
    tls: bool = False,
    certs_dir: os.PathLike | str | None = None,
    timeout: float | None = None,
    grace: float = DEFAULT_GRACE,
    python: str = sys.executable,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``[python, script, party, *script_args]`` for every party; return the exit code.

    0 if all parties exit 0; the first failing party's status otherwise (the
    others are stopped); 124 on timeout; 130 on SIGINT/SIGTERM/SIGHUP (only
    handled when called from the main thread). Raises :class:`UsageError` for
    bad arguments. ``certs_dir`` implies ``tls``.
    """
    script = os.fspath(script)
    parties = validate_parties(parties)
    _check_run_args(script, timeout, grace)
    output = _Output(stdout or sys.stdout, stderr or sys.stderr)
    sup = _Supervisor(output=output, grace=grace)
    if psutil is None:
        output.message("psutil is not installed: processes that leave a party's session may survive")
    base_env = _run_env(env)
    old_handlers = _handle_signals(sup.on_signal)
    tmp_dir: Path | None = None
    lease = PortLease()  # held until every party process has ended
    try:
        tls_dir: Path | None = None
        if certs_dir is not None:
            tls_dir = _resolve_tls_dir(parties, Path(certs_dir))
        elif tls:
            tmp_dir = tls_dir = _dev_certificates(parties)
        addresses = lease.addresses(parties)
        runs = [(SIMULATION_MODE, parties[0])] if simulate else [(p, p) for p in parties]
        for label, party in runs:
            if sup.signals:
                break
            env_of_party = party_env(base_env, party, addresses, simulate, tls_dir)
            _start_party(sup, output, [python, script, party, *script_args], env_of_party,
                         party, label)
        return _supervise(sup, timeout)
    finally:
        try:
            sup.stop_all()  # no-op unless something is still running
            sup.join_readers()
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            lease.release()
            if tmp_dir is not None:
                shutil.rmtree(tmp_dir, ignore_errors=True)


def _handle_signals(handler: Any) -> dict[int, Any]:
    """Route SIGINT/SIGTERM/SIGHUP to ``handler`` (main thread only); the old handlers."""
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, handler)
    return old


def _dev_certificates(parties: Sequence[str]) -> Path:
    """A throwaway CA and party certificates for ``--tls`` (removed when the run ends)."""
    tmp_dir = Path(tempfile.mkdtemp(prefix="rayfed-tls-"))
    create_dev_pki(list(parties), tmp_dir, list(DEFAULT_HOSTS), days=1)
    return tmp_dir


def _check_run_args(script: str, timeout: float | None, grace: float) -> None:
    if not os.path.isfile(script):
        raise UsageError(f"script not found: {script}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {timeout}")
    if grace < 0:
        raise UsageError(f"--grace must not be negative, got {grace}")


def _run_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The environment shared by this run's parties."""
    base_env = dict(os.environ if env is None else env)
    # A fresh job per run: a party left over from a previous run never takes this
    # run's values as its own (a job name set by the caller is kept).
    base_env.setdefault(ENV_JOB_NAME, f"fed-run-{uuid.uuid4().hex[:12]}")
    # The parties of this run share a fresh secret: without TLS it proves to each
    # receiver that a connection comes from this run (fed/transport/proof.py).
    base_env.setdefault(ENV_JOB_SECRET, secrets.token_hex(32))
    return base_env


def _start_party(sup: _Supervisor, output: _Output, argv: list[str], env: dict[str, str],
                 party: str, label: str) -> None:
    """One party process in its own session, its output prefixed with `label`."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    entry = _Party(name=party, label=label, proc=proc)
    sup.parties.append(entry)
    entry.reader = threading.Thread(
        target=_pump, args=(proc.stdout, label, output), name=f"fed-run-{label}", daemon=True
    )
    entry.reader.start()


def _supervise(sup: _Supervisor, timeout: float | None) -> int:
    """Wait for the parties; decide the exit code; stop everyone on failure/timeout/signal."""
    deadline = None if timeout is None else time.monotonic() + timeout
    next_refresh = 0.0
    while True:
        if sup.signals:
            name = signal.Signals(sup.last_signal).name if sup.last_signal else "signal"
            sup.output.message(f"interrupted ({name}); stopping all parties")
            sup.stop_all()
            return EXIT_INTERRUPTED
        for p in sup.parties:
            rc = p.proc.poll()
            if rc is not None and rc != 0:
                others = [q.name for q in sup.parties if q is not p and q.running]
                tail = f"; stopping {', '.join(others)}" if others else ""
                sup.output.message(f"party {p.name} {_describe(rc)}{tail}")
                sup.stop_all()
                return _exit_code(rc)
        if all(p.proc.returncode == 0 for p in sup.parties):
            sup.stop_all()  # leftovers (e.g. Ray processes that outlived their driver)
            return 0
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            sup.output.message(f"timeout of {timeout:g}s exceeded; stopping all parties")
            sup.stop_all()
            return EXIT_TIMEOUT
        if now >= next_refresh:
            sup.refresh()
            next_refresh = now + _REFRESH_INTERVAL
        time.sleep(_POLL_INTERVAL)


def _cmd_run(args: argparse.Namespace) -> int:
    """Handler of ``fed run``."""
    return run_parties(
        args.script,
        split_list(args.parties),
        [*args.args, *args.extra],
        simulate=args.simulate,
        tls=args.tls or args.certs is not None,
        certs_dir=args.certs,
        timeout=args.timeout,
        grace=args.grace,
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` subcommand."""
    p = subparsers.add_parser(
        "run",
        help="run every party of a driver script locally",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run a rayfed driver script once per party on this machine:\n"
            "  python SCRIPT <party> [ARGS...]\n"
            "Each party gets a loopback port reserved for this run (20000-32767, outside\n"
            "the kernel's and Ray's automatic ranges); the address book is exported as\n"
            "RAYFED_ADDRESSES (JSON) together with RAYFED_PARTY, so `fed.init` needs no\n"
            "addresses. Output lines are prefixed with the party, e.g. `(alice) ...`.\n"
            "If a party fails, the others are stopped and its exit code is returned;\n"
            "Ctrl+C stops all parties (exit 130); --timeout stops them (exit 124).\n"
            "Parties and everything they start (Ray) get SIGTERM, then SIGKILL after\n"
            "--grace seconds."
        ),
        epilog=(
            "examples:\n"
            "  fed run hello.py --parties alice,bob\n"
            "  fed run train.py --parties alice,bob,carol --tls --timeout 600 -- --epochs 3\n"
            "  fed run train.py --parties alice,bob --simulate"
        ),
    )
    p.add_argument("script", help="the driver script (run as `python SCRIPT <party> ARGS...`)")
    p.add_argument("args", nargs="*", metavar="ARGS", help="arguments for the script; put them after `--`")
    p.add_argument("--parties", required=True, help="comma-separated party names, e.g. alice,bob")
    p.add_argument(
        "--simulate",
        action="store_true",
        help=f"run one process only (as the first party) with {ENV_MODE}={SIMULATION_MODE}",
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help=f"make a temporary development PKI and export its directory as {ENV_TLS_DIR}",
    )
    p.add_argument(
        "--certs",
        metavar="DIR",
        help="use this PKI directory (from `fed certs`) instead of a temporary one; implies --tls",
    )
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop all parties and exit 124 after this long")
    p.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="time between SIGTERM and SIGKILL when stopping parties (default: %(default)s)",
    )
    p.set_defaults(handler=_cmd_run, accepts_extra=True)
