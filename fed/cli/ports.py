"""Loopback ports for local runs that nobody else is handed while the run lasts.

``bind(0)``-then-close hands out a port from the kernel's ephemeral range, where every
Ray process started afterwards (GCS, raylet, workers' gRPC servers, ...) also binds
with ``bind(0)``: in the seconds before a party's receiver binds it, such a process can
take the port ("cannot listen ... Address already in use"). So the ports come from
a band nobody assigns automatically:

* below the kernel's ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``),
* outside Ray's default worker-port range (10002-19999) and Ray's well-known ports,

and each one is guarded by an exclusive ``flock`` on ``<lock dir>/<port>.lock`` that
the reserving process holds until :meth:`PortLease.release`, so two concurrent runs
(two ``fed run``, two test suites) never pick the same port. A port is also checked to
be bindable at the moment it is reserved, which skips ports other programs hold.
The lock files are never deleted (deleting one would let two processes lock two
different files for the same port).
"""
from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

# The band to pick from, before the exclusions below are taken out of it.
BAND = (20000, 32767)
# Ray's defaults: worker ports, and the fixed ports of a `ray start --head` cluster
# (GCS, dashboard, client server, dashboard agent, metrics, object manager, node manager).
RAY_WORKER_PORTS = (10002, 19999)
RAY_KNOWN_PORTS = frozenset({6379, 8076, 8077, 8080, 8265, 10001, 52365, 52366})
EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
SHARED_LOCK_DIR = Path(tempfile.gettempdir()) / "rayfed-ports"


class PortsExhaustedError(RuntimeError):
    """No port of the band is free and unlocked (raised by :meth:`PortLease.reserve`)."""


def ephemeral_range(path: str = EPHEMERAL_RANGE_FILE) -> tuple[int, int]:
    """The kernel's range for ``bind(0)``/``connect()`` ports (Linux's default if unknown)."""
    try:
        low, high = (int(v) for v in Path(path).read_text().split()[:2])
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def candidate_ports(band: tuple[int, int] = BAND) -> list[int]:
    """The ports of ``band`` that neither the kernel nor Ray hands out by itself."""
    eph_low, eph_high = ephemeral_range()
    return [
        p for p in range(band[0], band[1] + 1)
        if not eph_low <= p <= eph_high
        and not RAY_WORKER_PORTS[0] <= p <= RAY_WORKER_PORTS[1]
        and p not in RAY_KNOWN_PORTS
    ]


def lock_dir() -> Path:
    """The shared lock directory (world-writable and sticky, like /tmp), or a per-user
    one when another user created the shared one without write access for us."""
    for path in (SHARED_LOCK_DIR, Path(f"{SHARED_LOCK_DIR}-{os.getuid()}")):
        try:
            path.mkdir(mode=0o1777, exist_ok=True)
            if path.stat().st_uid == os.getuid():
                path.chmod(0o1777)  # mkdir's mode is cut by the umask
            if os.access(path, os.W_OK | os.X_OK):
                return path
        except OSError:
            continue
    raise PortsExhaustedError(
        f"cannot use {SHARED_LOCK_DIR} (or a per-user sibling) to lock ports: check its permissions"
    )


def _lock(directory: Path, port: int) -> int | None:
    """An fd holding the exclusive lock of ``port``, or None if another process holds it."""
    path = directory / f"{port}.lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)  # flock needs no write access
    except PermissionError:
        return None  # a file we may not open: treat the port as taken
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    try:
        os.fchmod(fd, 0o666)  # so other users' runs can lock it too
    except OSError:
        pass
    return fd


def bindable(host: str, port: int) -> bool:
    """Whether a listening socket could bind ``host:port`` now (same options as the receiver)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class PortLease:
    """Ports held for this process: locked against other reservers until :meth:`release`.

    Use it as a context manager, or call ``release()`` when the processes using the
    ports have ended. Lock fds are not inherited by child processes, so the lease ends
    with this process at the latest.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._fds: dict[int, int] = {}
        self._dir: Path | None = None

    @property
    def ports(self) -> list[int]:
        """Every port reserved so far, in reservation order."""
        return list(self._fds)

    def reserve(self, count: int) -> list[int]:
        """Reserve ``count`` more ports: locked by us, bindable now, starting at a random
        place in the band so concurrent runs rarely even contend for a lock."""
        if self._dir is None:
            self._dir = lock_dir()
        candidates = candidate_ports()
        start = random.randrange(len(candidates))
        got: list[int] = []
        for i in range(len(candidates)):
            if len(got) == count:
                break
            port = candidates[(start + i) % len(candidates)]
            if port in self._fds:
                continue
            fd = _lock(self._dir, port)
            if fd is None:
                continue
            if not bindable(self.host, port):
                os.close(fd)
                continue
            self._fds[port] = fd
            got.append(port)
        if len(got) < count:
            self._close(got)
            raise PortsExhaustedError(
                f"only {len(got)} of {count} ports in {BAND[0]}-{BAND[1]} are free and unlocked "
                f"(locks in {self._dir}); end other runs or free some ports"
            )
        return got

    def addresses(self, parties: Sequence[str]) -> dict[str, str]:
        """An address book ``{party: "host:port"}`` with a newly reserved port per party."""
        ports = self.reserve(len(parties))
        host = f"[{self.host}]" if ":" in self.host else self.host
        return {p: f"{host}:{port}" for p, port in zip(parties, ports)}

    def _close(self, ports: Iterable[int]) -> None:
        for port in list(ports):
            fd = self._fds.pop(port, None)
            if fd is not None:
                os.close(fd)  # closing the only fd of the open file drops the flock

    def release(self) -> None:
        """Unlock every port of this lease (idempotent)."""
        self._close(self._fds)

    def __enter__(self) -> PortLease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()
