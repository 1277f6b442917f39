"""Plumbing for the benchmarks: party processes, memory sampling, and the machine's limits.

Nothing here imports `fed`: the same file drives this repo's engine and RayFed (run from
another virtual environment), so it only uses the standard library, numpy and psutil.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

MiB = 1024 * 1024


# ---- party processes --------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    # Not fed.cli.run.pick_free_ports: this harness also runs under RayFed's `fed` package.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _child(fn: Callable, party: str, addresses: dict, args: tuple, conn) -> None:
    os.setsid()  # one session per party: every process its Ray cluster starts is found by sid
    try:
        payload = ("ok", fn(party, addresses, *args), "")
    except BaseException:  # report everything to the parent
        payload = ("err", None, traceback.format_exc())
    try:
        conn.send(payload)
    finally:
        conn.close()
        os._exit(0 if payload[0] == "ok" else 1)


def session_pids(sid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            if os.getsid(pid) == sid:
                pids.append(pid)
        except OSError:
            continue
    return pids


def _kill_session(sid: int) -> None:
    import psutil

    victims = []
    for pid in session_pids(sid):
        if pid == os.getpid():
            continue
        try:
            victims.append(psutil.Process(pid))
        except psutil.Error:
            continue
    for proc in victims:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=10)


@dataclass
class PartyRun:
    """Two (or more) party processes running `fn(party, addresses, *args)`; `addresses`
    (every party of the job, not only these processes) or free loopback ports."""

    fn: Callable
    parties: tuple[str, ...] = ("alice", "bob")
    args: tuple = ()
    timeout: float = 900.0
    addresses: dict | None = None
    procs: dict = field(default_factory=dict)
    pipes: dict = field(default_factory=dict)

    def start(self) -> PartyRun:
        addresses = self.addresses
        if addresses is None:
            ports = free_ports(len(self.parties))
            addresses = {p: f"127.0.0.1:{port}" for p, port in zip(self.parties, ports)}
        ctx = mp.get_context("spawn")
        for party in self.parties:
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(self.fn, party, addresses, self.args, send))
            proc.start()
            send.close()
            self.procs[party], self.pipes[party] = proc, recv
        return self

    def sid(self, party: str) -> int:
        return self.procs[party].pid  # the child called setsid(): its pid is its session id

    def wait(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        try:
            pending = set(self.parties)
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"parties {sorted(pending)} still running after "
                                       f"{self.timeout:.0f} s")
                for party in list(pending):
                    pipe = self.pipes[party]
                    if pipe.poll(0.05):
                        try:
                            status, result, text = pipe.recv()
                        except EOFError:
                            status, result, text = "err", None, "process ended without a result"
                        if status == "ok":
                            results[party] = result
                        else:
                            errors[party] = text
                        pending.discard(party)
                    elif not self.procs[party].is_alive():
                        errors[party] = f"process died (exit code {self.procs[party].exitcode})"
                        pending.discard(party)
                if errors:  # one party failed: the others would wait for it forever
                    break
        finally:
            self.stop()
        if errors:
            text = "\n".join(f"--- {p}:\n{t}" for p, t in errors.items())
            raise RuntimeError(f"a party failed:\n{text}")
        return results

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.pid is not None:
                _kill_session(proc.pid)
            if proc.is_alive():
                proc.kill()
            proc.join(5)


def run_parties(fn: Callable, args: tuple = (), timeout: float = 900.0) -> dict[str, Any]:
    return PartyRun(fn, args=args, timeout=timeout).start().wait()


# ---- memory of a party (all processes of its session) -----------------------------------


def _smaps_rollup(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of a process in bytes; (0, 0) if it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def session_memory(sid: int) -> dict[str, int]:
    """Memory of every process in session `sid`.

    ``pss`` sums proportional set sizes: a page shared by k processes of the party (the
    object store's shared memory, libraries) counts 1/k in each, so the sum is the
    party's physical memory without double counting. ``rss`` is the plain sum.
    """
    rss = pss = n = 0
    for pid in session_pids(sid):
        r, p = _smaps_rollup(pid)
        rss += r
        pss += p
        n += 1
    return {"rss": rss, "pss": pss, "processes": n}


def session_processes(sid: int) -> list[dict[str, Any]]:
    """Each process of the session: pid, title (Ray names actor workers ray::Class), RSS, PSS."""
    out = []
    for pid in session_pids(sid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        title = argv[0].decode(errors="replace")
        if not title.startswith("ray::"):
            title = " ".join(os.path.basename(a.decode(errors="replace")) for a in argv[:2])
        rss, pss = _smaps_rollup(pid)
        out.append({"pid": pid, "title": title[:60], "rss": rss, "pss": pss})
    return out


def settle_memory(sid: int, quiet_s: float = 2.0, max_s: float = 20.0) -> dict[str, int]:
    """Wait until the party's process count and memory stop moving, then measure.

    Ray starts and stops idle workers in the first seconds of a cluster; measuring
    while that happens would credit (or blame) the engine for Ray's own churn.
    """
    deadline = time.monotonic() + max_s
    last = session_memory(sid)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = session_memory(sid)
        moved = now["processes"] != last["processes"] or abs(now["pss"] - last["pss"]) > 4 * MiB
        if moved:
            stable_since = time.monotonic()
        elif time.monotonic() - stable_since >= quiet_s:
            return now
        last = now
    return session_memory(sid)


class Periodic:
    """Runs `tick()` every `interval` s on a daemon thread while its `with` block runs."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.tick()
            if self._stop.wait(self.interval):
                return

    def tick(self) -> None:
        raise NotImplementedError


class MemorySampler(Periodic):
    """Samples a session's memory every `interval` s in a thread; keeps the peak."""

    def __init__(self, sid: int, interval: float = 0.02) -> None:
        super().__init__(interval)
        self.sid = sid
        self.peak = {"rss": 0, "pss": 0, "processes": 0}
        self.samples = 0

    def tick(self) -> None:
        now = session_memory(self.sid)
        self.samples += 1
        for k in ("rss", "pss"):
            self.peak[k] = max(self.peak[k], now[k])
        self.peak["processes"] = max(self.peak["processes"], now["processes"])


def process_rss(pid: int) -> int:
    """Resident memory of one process in bytes (/proc/<pid>/statm: cheap to read often);
    0 if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def settle_rss(pid: int, quiet_s: float = 1.0, max_s: float = 10.0,
               tolerance: int = MiB) -> int:
    """The process's RSS once it stopped moving by more than `tolerance` for `quiet_s`."""
    deadline = time.monotonic() + max_s
    last, stable_since = process_rss(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = process_rss(pid)
        if abs(now - last) > tolerance:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_s:
            return now
    return process_rss(pid)


class RssSampler(Periodic):
    """Samples one process's RSS every `interval` s in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        super().__init__(interval)
        self.pid = pid
        self.peak = 0
        self.samples = 0

    def tick(self) -> None:
        self.peak = max(self.peak, process_rss(self.pid))
        self.samples += 1


# ---- parent <-> party signalling through files (both engines, no fed involved) ----------


def signal_path(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, name)


def post(run_dir: str, name: str, text: str = "") -> None:
    tmp = signal_path(run_dir, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, signal_path(run_dir, name))


def await_signal(run_dir: str, name: str, timeout: float = 300.0) -> str:
    path = signal_path(run_dir, name)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {name!r} signal within {timeout:.0f} s")
        time.sleep(0.01)
    with open(path) as f:
        return f.read()


# ---- the machine's limits -----------------------------------------------------------------


def _socket_sink(port_conn, size: int, reps: int) -> None:
    """Receive `reps` messages of `size` bytes into one preallocated buffer; ack each."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port_conn.send(srv.getsockname()[1])
    conn, _ = srv.accept()
    buf = bytearray(size)
    view = memoryview(buf)
    for _ in range(reps):
        got = 0
        while got < size:
            n = conn.recv_into(view[got:], size - got)
            if n == 0:
                return
            got += n
        conn.sendall(b"k")
    conn.close()
    srv.close()


def socket_throughput(size: int, reps: int) -> list[float]:
    """Seconds per one-way transfer of `size` bytes over loopback TCP between two
    processes (sendall from one buffer, recv_into a preallocated one, 1-byte ack)."""
    import numpy as np

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_socket_sink, args=(child, size, reps + 1))
    proc.start()
    port = parent.recv()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = np.ones(size, dtype=np.uint8)  # touched: no page faults while sending
    view = memoryview(payload).cast("B")
    times = []
    try:
        for i in range(reps + 1):  # the first one warms up the connection
            start = time.perf_counter()
            sock.sendall(view)
            if sock.recv(1) != b"k":
                raise RuntimeError("the socket sink went away")
            if i:
                times.append(time.perf_counter() - start)
    finally:
        sock.close()
        proc.join(10)
    return times


def _echo(port_conn, reps: int) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port_conn.send(srv.getsockname()[1])
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(reps):
        data = conn.recv(64)
        if not data:
            break
        conn.sendall(data)
    conn.close()
    srv.close()


def socket_round_trip(reps: int = 2000) -> list[float]:
    """Seconds per small-message round trip over loopback TCP between two processes."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_echo, args=(child, reps + 100))
    proc.start()
    port = parent.recv()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    try:
        for i in range(reps + 100):
            start = time.perf_counter()
            sock.sendall(b"x" * 32)
            got = 0
            while got < 32:
                got += len(sock.recv(64))
            if i >= 100:
                times.append(time.perf_counter() - start)
    finally:
        sock.close()
        proc.join(10)
    return times


def _plain_ray_tiny(iters: int, conn) -> None:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote
    class Tiny:
        def run(self):
            return 1

    @ray.remote
    class Aggregator:
        def aggr(self, a, b):
            return a + b

    a, b, agg = Tiny.remote(), Tiny.remote(), Aggregator.remote()

    def iteration():
        if ray.get(agg.aggr.remote(a.run.remote(), b.run.remote())) != 2:
            raise AssertionError("wrong result")

    for _ in range(max(100, iters // 10)):
        iteration()
    start = time.perf_counter()
    for _ in range(iters):
        iteration()
    conn.send((time.perf_counter() - start) / iters)
    ray.shutdown()


def plain_ray_tiny_seconds(iters: int = 1000) -> float:
    """The tiny-task loop's calls (two actor calls, an aggregate, a get) in ONE plain Ray
    cluster with no parties: what Ray itself costs here, the floor for any engine on it."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_plain_ray_tiny, args=(iters, child))
    proc.start()
    child.close()
    try:
        if not parent.poll(600):
            raise TimeoutError("the plain Ray loop did not finish")
        return parent.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def _plain_ray_fl(rounds: int, arrays: int, floats: int, conn, torch: bool = False) -> None:
    import ray

    make, mean_of = _fl_model_torch(arrays, floats) if torch else _fl_model_numpy(arrays, floats)

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=2 * 1024**3)

    @ray.remote
    class Trainer:
        def __init__(self, seed):
            self.weights = make(seed)

        def train(self, mean=None):
            if mean is not None:
                self.weights = mean
            return self.weights

    @ray.remote
    def fl_mean(a, b):
        return mean_of(a, b)

    ta, tb = Trainer.remote(0), Trainer.remote(1000)
    mean, times = None, []
    for r in range(2 + rounds):
        start = time.perf_counter()
        wa = ta.train.remote(mean) if mean is not None else ta.train.remote()
        wb = tb.train.remote(mean) if mean is not None else tb.train.remote()
        mean = fl_mean.remote(wa, wb)
        ray.get(mean)
        times.append(time.perf_counter() - start)
    conn.send(sum(times[2:]) / rounds)
    ray.shutdown()


def _fl_model_numpy(arrays: int, floats: int) -> tuple[Callable, Callable]:
    """The FL model as a list of numpy arrays: how to make one, how to average two."""
    import numpy as np

    def make(seed):
        return [np.full(floats, seed + i, dtype=np.float32) for i in range(arrays)]

    def mean_of(a, b):
        return [(x + y) * np.float32(0.5) for x, y in zip(a, b)]

    return make, mean_of


def _fl_model_torch(arrays: int, floats: int) -> tuple[Callable, Callable]:
    """The same model as a PyTorch state_dict (Ray pickles tensors: copies, not views)."""
    import collections

    def make(seed):
        import torch

        return collections.OrderedDict(
            (f"layer{i}.weight", torch.full((floats,), float(seed + i))) for i in range(arrays))

    def mean_of(a, b):
        return collections.OrderedDict((k, (a[k] + b[k]) * 0.5) for k in a)

    return make, mean_of


def plain_ray_fl_seconds(rounds: int = 10, arrays: int = 50, floats: int = 125_000,
                         torch: bool = False) -> float:
    """The FL round's calls (two trainers, a mean task, a get) in ONE plain Ray cluster:
    Ray's own share of a round (object-store copies, task start, numpy), no parties.
    `torch`: the model as a state_dict of tensors, as benchmarks/suite.py's torch round."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_plain_ray_fl, args=(rounds, arrays, floats, child, torch))
    proc.start()
    child.close()
    try:
        if not parent.poll(600):
            raise TimeoutError("the plain Ray FL loop did not finish")
        return parent.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def memcpy_seconds(size: int, reps: int) -> list[float]:
    import numpy as np

    src = np.ones(size, dtype=np.uint8)
    dst = np.ones(size, dtype=np.uint8)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, Any]:
    import platform

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 1024**3, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg": os.getloadavg(),
    }


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


__all__ = [
    "MiB", "PartyRun", "run_parties", "session_memory", "settle_memory", "MemorySampler",
    "Periodic", "process_rss", "settle_rss", "RssSampler",
    "post", "await_signal", "socket_throughput", "socket_round_trip", "memcpy_seconds",
    "plain_ray_tiny_seconds", "plain_ray_fl_seconds",
    "median", "machine", "load_average",
]
