"""The hostile party of benchmarks/hostile_peer.py: mallory, authenticated and malicious.

Mallory holds a valid certificate of its own (URI SAN rayfed://party/mallory) and is
listed in the job's addresses. Its receiving side (`Sink`) behaves: it takes what the
honest parties push to it (every `fed.get` pushes to every party). Its sending side
speaks docs/protocol.md directly to the victim's port, one attack per phase
(`PHASES`), from its own loopback address so that per-address caps apply to it and
not to the honest parties. Only the wire format (fed.transport.wire) is used here,
never the engine's receiver or sender.
"""
from __future__ import annotations

import pickle
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
from _harness import Periodic

from fed.transport import wire

MiB = 1024 * 1024
#: Mallory connects from here; the honest parties from 127.0.0.1 (one host each, as
#: on a real network: the receiver's per-address handshake cap is per host).
MALLORY_IP = "127.0.0.2"


@dataclass
class Target:
    """The victim's receiver, and the credentials of whoever connects to it."""

    host: str
    port: int
    job: str
    victim: str
    cert: str
    key: str
    ca: str
    max_header_bytes: int
    ordinals: Ordinals = field(default_factory=lambda: Ordinals())

    def tls(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.load_verify_locations(cafile=self.ca)
        ctx.check_hostname = False
        return ctx


class Ordinals:
    """Fresh ordinals for mallory's values, far above anything a barrier waits for."""

    def __init__(self) -> None:
        self._next = 10_000_000
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next


def dial(target: Target, source: str, tls: bool = True, timeout: float = 10.0) -> socket.socket:
    """A TCP connection from `source` to the victim, TLS-wrapped if `tls`."""
    sock = socket.create_connection((target.host, target.port), timeout=timeout,
                                    source_address=(source, 0))
    return target.tls().wrap_socket(sock, server_hostname=target.host) if tls else sock


def session(target: Target, src: str = "mallory",
            source: str = MALLORY_IP) -> socket.socket | None:
    """An authenticated connection past WELCOME, or None if the victim closed or refused."""
    try:
        sock = dial(target, source)
        wire.send_control(sock, wire.HELLO, {"proto": wire.PROTOCOL, "job": target.job,
                                             "src": src, "dst": target.victim})
        ftype, _body = wire.read_control(sock, 1 << 20)
    except (OSError, wire.ProtocolError):
        return None
    if ftype != wire.WELCOME:
        sock.close()
        return None
    return sock


def reply(sock: socket.socket) -> tuple[int, dict]:
    """The victim's answer: (frame type, body); (0, {}) if it closed without one."""
    try:
        return wire.read_control(sock, 1 << 20)
    except (OSError, wire.ProtocolError):
        return 0, {}


def key(target: Target, ordinal: int, src: str = "mallory") -> dict:
    return {"job": target.job, "src": src, "dst": target.victim, "ordinal": ordinal,
            "producer_seq": 1, "producer_index": 0, "producer_call": "mallory.make",
            "consumer_seq": 2, "consumer_call": "mallory.use"}


def msg(sock: socket.socket, target: Target, sizes: list[int]) -> None:
    body = {"key": key(target, target.ordinals.take()), "kind": "value", "sizes": sizes}
    wire.send_control(sock, wire.MSG, body)


def close_all(socks: list) -> None:
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass


# ---- the attacks: each holds what it opened for `hold_s`, closes, returns connections ----


def declared_4gib(target: Target, hold_s: float) -> int:
    """A MSG header declaring a 4 GiB out-of-band buffer, 1 MiB of it, then silence."""
    sock = session(target)
    if sock is None:
        raise RuntimeError("the victim did not welcome mallory")
    msg(sock, target, [100, 4 << 30])
    sock.sendall(wire.data_head(MiB) + b"\x01" * MiB)
    time.sleep(hold_s)
    close_all([sock])
    return 1


def declared_small_buffers(target: Target, hold_s: float) -> int:
    """4 GiB declared as 4,096 buffers just under 1 MiB (below the size where receive
    buffers are memory maps), 1 MiB of them sent, then silence."""
    sock = session(target)
    if sock is None:
        raise RuntimeError("the victim did not welcome mallory")
    msg(sock, target, [100] + [MiB - 1] * 4096)
    sock.sendall(wire.data_head(MiB) + b"\x01" * MiB)
    time.sleep(hold_s)
    close_all([sock])
    return 1


def _ping_and_wait(sock: socket.socket, body: bytes) -> None:
    try:
        sock.sendall(bytes([wire.PING]) + len(body).to_bytes(4, "big") + body)
        reply(sock)
    except OSError:
        pass


def large_frames(target: Target, hold_s: float, connections: int = 32) -> int:
    """On every connection the per-party cap allows: a PING as large as allowed whose
    msgpack decodes to about 73 times its size (a list of empty maps)."""
    body = msgpack.packb({"waiting": [{}] * (target.max_header_bytes - 64)})
    socks = [s for s in (session(target) for _ in range(connections)) if s is not None]
    threads = [threading.Thread(target=_ping_and_wait, args=(s, body)) for s in socks]
    for thread in threads:
        thread.start()
    time.sleep(hold_s)
    for thread in threads:
        thread.join(60)
    close_all(socks)
    return len(socks)


def million_buffers(target: Target, hold_s: float, connections: int = 32) -> int:
    """On every connection the per-peer cap allows: a header declaring 1,000,000
    buffers of one byte (about 1 MB of msgpack), then silence."""
    socks = [s for s in (session(target) for _ in range(connections)) if s is not None]
    for sock in socks:
        try:
            msg(sock, target, [1] * 1_000_000)
        except OSError:
            pass  # refused or closed already: it still counted while open
    time.sleep(hold_s)
    close_all(socks)
    return len(socks)


class Trickler(Periodic):
    """Sends one byte every `every_s` on each of its sockets until its block ends."""

    def __init__(self, socks: list, every_s: float = 0.5) -> None:
        super().__init__(every_s)
        self.socks = socks

    def tick(self) -> None:
        for sock in self.socks:
            try:
                sock.send(b"\0")
            except OSError:
                pass


def _stall(sock: socket.socket, target: Target, how: int) -> socket.socket | None:
    """Start something on `sock` and leave it unfinished; the socket if it trickles."""
    if how == 0:  # a control frame declared as large as allowed, its payload trickled
        sock.sendall(bytes([wire.MSG]) + target.max_header_bytes.to_bytes(4, "big"))
        return sock
    if how == 1:  # a value: header, a DATA frame head, its bytes trickled
        msg(sock, target, [256 * 1024])
        sock.sendall(wire.data_head(256 * 1024))
        return sock
    return None  # idle after WELCOME


def _client_hello(target: Target) -> bytes:
    """The first bytes of a TLS handshake, to send and then stall."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = target.tls().wrap_bio(incoming, outgoing, server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def stalled_connections(target: Target, hold_s: float, authenticated: int = 40,
                        handshakes: int = 24) -> int:
    """Authenticated connections past the per-party cap (32), each stalled in a frame,
    trickling, or idle; then TLS handshakes left unfinished past the per-address cap (16)."""
    socks = [s for s in (session(target) for _ in range(authenticated)) if s is not None]
    trickling = [t for i, s in enumerate(socks) if (t := _stall(s, target, i % 3)) is not None]
    hello = _client_hello(target)
    stalled = []
    for _ in range(handshakes):
        try:
            raw = dial(target, MALLORY_IP, tls=False)
            raw.sendall(hello[:16])
            stalled.append(raw)
        except OSError:
            pass
    with Trickler(trickling + stalled):
        time.sleep(hold_s)
        open_now = sum(_still_open(s) for s in socks + stalled)
    close_all(socks + stalled)
    return open_now


def _still_open(sock: socket.socket) -> bool:
    """Whether the victim still holds this connection (it has not closed its end)."""
    raw = socket.socket(fileno=sock.fileno())  # peek under TLS: the kernel's view
    try:
        raw.setblocking(False)
        return raw.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        raw.detach()


def notices_about_others(target: Target, hold_s: float, alice_ordinal: int) -> int:
    """NOTICEs from mallory naming alice's upcoming values and reporting a divergence;
    a HELLO claiming to be alice; a value claiming to come from alice."""
    sock = session(target)
    if sock is None:
        raise RuntimeError("the victim did not welcome mallory")
    for ordinal in range(alice_ordinal, alice_ordinal + 200):
        wire.send_control(sock, wire.NOTICE, {"kind": "send_failed", "text": "mallory lies",
                                              "key": key(target, ordinal, src="alice")})
        reply(sock)
    wire.send_control(sock, wire.NOTICE, {"kind": "divergence", "text": "mallory diverged"})
    reply(sock)
    refusals = [_claim_alice_hello(target), _claim_alice_value(target)]
    if refusals != ["identity", "spoofed_source"]:
        raise RuntimeError(f"the victim did not refuse mallory posing as alice: {refusals}")
    time.sleep(hold_s)
    close_all([sock])
    return 1


def _claim_alice_hello(target: Target) -> str:
    sock = dial(target, MALLORY_IP)
    try:
        wire.send_control(sock, wire.HELLO, {"proto": wire.PROTOCOL, "job": target.job,
                                             "src": "alice", "dst": target.victim})
        return str(reply(sock)[1].get("reason"))
    finally:
        close_all([sock])


def _claim_alice_value(target: Target) -> str:
    sock = session(target)
    try:
        body = pickle.dumps("from alice, honestly", protocol=5)
        wire.send_control(sock, wire.MSG, {"key": key(target, 0, src="alice"), "kind": "value",
                                           "sizes": [len(body)]})
        sock.sendall(wire.data_head(len(body)) + body)
        return str(reply(sock)[1].get("reason"))
    finally:
        close_all([sock])


def _bomb(nbytes: int) -> bytes:
    """A 32-byte pickle of admitted types that unpickles to bytearray(nbytes)."""
    return (b"\x80\x05\x8c\x08builtins\x8c\tbytearray\x93J" + nbytes.to_bytes(4, "little")
            + b"\x85R.")


def _send_until_busy(target: Target, values: int, payload: bytes, bomb: bytes) -> None:
    """Values nobody waits for, every eighth one a bomb, until the victim says busy."""
    sock = session(target)
    try:
        for i in range(values):
            body = bomb if i % 8 == 7 else payload
            wire.send_control(sock, wire.MSG, {"key": key(target, target.ordinals.take()),
                                               "kind": "value", "sizes": [len(body)]})
            sock.sendall(wire.data_head(len(body)) + body)
            if reply(sock)[0] != wire.ACK:
                return
    finally:
        close_all([sock])


def unclaimed_values(target: Target, hold_s: float, connections: int = 4,
                     budget: int = 64 * MiB) -> int:
    """Values no barrier will ever claim, 512 KiB each, every eighth a 32-byte pickle
    that decodes to 256 MiB; on `connections` connections, until the budget is full."""
    payload = pickle.dumps(bytes(range(256)) * 2048, protocol=5)
    per_conn = 2 * budget // len(payload) // connections + 8
    threads = [threading.Thread(target=_send_until_busy,
                                args=(target, per_conn, payload, _bomb(256 * MiB)))
               for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(hold_s)
    return connections


Attack = Callable[[Target, float], int]


# ---- mallory's receiving side: takes what honest parties push to it --------------------------


class Sink:
    """A TLS server answering as party `party`: WELCOME, then ACK / PONG to everything."""

    def __init__(self, host: str, port: int, cert: str, key: str, ca: str, party: str,
                 job: str) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        self._ctx, self._party, self._job = ctx, party, job
        self._server = socket.create_server((host, port))
        self._stopped = threading.Event()

    def start(self) -> Sink:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                raw, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self._ctx.wrap_socket(raw, server_side=True) as sock:
                wire.read_control(sock, 1 << 20)  # HELLO
                wire.send_control(sock, wire.WELCOME, {"party": self._party, "job": self._job,
                                                       "limits": {}})
                while not self._stopped.is_set():
                    self._answer(sock, *wire.read_control(sock, 1 << 20))
        except (OSError, wire.ProtocolError, ssl.SSLError):
            pass

    @staticmethod
    def _answer(sock: socket.socket, ftype: int, body: dict) -> None:
        if ftype == wire.MSG:
            remaining = sum(body["sizes"])
            scratch = bytearray(1 << 20)
            while remaining:
                _, length = wire.read_head(sock)
                for start in range(0, length, len(scratch)):
                    part = memoryview(scratch)[:min(len(scratch), length - start)]
                    wire.recv_into_exact(sock, part)
                remaining -= length
            wire.send_control(sock, wire.ACK, {"ordinal": body["key"]["ordinal"],
                                               "duplicate": False})
        elif ftype == wire.PING:
            wire.send_control(sock, wire.PONG, {})
        else:
            wire.send_control(sock, wire.ACK, {})
