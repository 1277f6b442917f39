"""A real TCP relay between parties that a test can cut, to play a network outage."""
from __future__ import annotations

import socket
import threading
import time


class Relay:
    """Forwards a local port to `target`; `cut(seconds)` drops every connection and
    refuses new ones for that long. `cut_after_bytes` cuts automatically once that many
    bytes have been forwarded (to hit the middle of a large transfer)."""

    def __init__(self, listen_port: int, target: tuple[str, int],
                 cut_after_bytes: int | None = None, cut_seconds: float = 5.0) -> None:
        self.listen_port = listen_port
        self.target = target
        self.cut_after_bytes = cut_after_bytes
        self.cut_seconds = cut_seconds
        self.forwarded = 0
        self.cuts: list[tuple[float, float]] = []  # (start, end) wall times
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self._stopped = threading.Event()
        self._cutting = threading.Event()
        self._down = threading.Event()  # set while a cut refuses connections

    def start(self) -> Relay:
        self._listen()
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def _listen(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.listen_port))
        server.listen(64)
        self._server = server

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            server = self._server
            try:
                client, _ = server.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                time.sleep(0.05)  # listening socket closed by a cut: wait for the reopen
                continue
            if self._down.is_set():  # accepted by a listener the cut closed under accept()
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        buf = memoryview(bytearray(1 << 20))
        try:
            while True:
                n = src.recv_into(buf)
                if n == 0:
                    break
                dst.sendall(buf[:n])
                with self._lock:
                    self.forwarded += n
                    trigger = (self.cut_after_bytes is not None
                               and self.forwarded >= self.cut_after_bytes
                               and not self.cuts and not self._cutting.is_set())
                    if trigger:
                        self._cutting.set()
                if trigger:
                    threading.Thread(target=self.cut, args=(self.cut_seconds,), daemon=True).start()
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self, seconds: float) -> None:
        """Drop all connections and refuse new ones for `seconds`."""
        start = time.time()
        self._down.set()
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
        except OSError:
            pass
        self._server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        time.sleep(seconds)
        self._listen()
        self._down.clear()
        self.cuts.append((start, time.time()))

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.close()
        with self._lock:
            for s in self._conns:
                s.close()
