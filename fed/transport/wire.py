"""Frames on a cross-party connection (see docs/protocol.md).

Every frame is ``type:u8 | length:u32 (big endian) | payload``. Control frames carry a
msgpack map; DATA frames carry raw bytes of a value, written by the receiver straight
into preallocated buffers.
"""
from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

PROTOCOL = "rayfed/2"  # 2: values in the typed codec (docs/protocol.md)

HELLO = 1
WELCOME = 2
REFUSE = 3
MSG = 4
DATA = 5
ACK = 6
PING = 7
PONG = 8
BYE = 9
NOTICE = 10

NAMES = {
    HELLO: "HELLO", WELCOME: "WELCOME", REFUSE: "REFUSE", MSG: "MSG", DATA: "DATA",
    ACK: "ACK", PING: "PING", PONG: "PONG", BYE: "BYE", NOTICE: "NOTICE",
}

_HEAD = struct.Struct("!BI")
HEAD_SIZE = _HEAD.size


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame sequence."""


class PeerClosed(ConnectionError):
    """The connection ended (cleanly or not) before a whole frame arrived."""


class FrameTooLarge(ProtocolError):
    """A control frame declared more bytes than the reader accepts."""

    def __init__(self, ftype: int, length: int, max_len: int) -> None:
        super().__init__(f"{NAMES[ftype]} frame of {length} bytes exceeds the {max_len} byte limit")
        self.ftype, self.length, self.max_len = ftype, length, max_len


class DeadlineExceeded(socket.timeout):
    """The bytes did not arrive before the reader's deadline (see docs/security.md)."""


def recv_into_exact(sock: socket.socket, view: memoryview,
                    deadline: float | None = None) -> None:
    """Fill `view` from `sock`, however many reads it takes.

    With a `deadline` (time.monotonic()) the reads together must finish by then: a
    peer trickling one byte at a time cannot stretch a frame beyond it.
    """
    got = 0
    total = len(view)
    while got < total:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"only {got} of {total} bytes arrived before the deadline")
            sock.settimeout(remaining)
        n = sock.recv_into(view[got:], total - got)
        if n == 0:
            raise PeerClosed(f"connection closed after {got} of {total} bytes")
        got += n


def read_head(sock: socket.socket, deadline: float | None = None) -> tuple[int, int]:
    buf = bytearray(HEAD_SIZE)
    recv_into_exact(sock, memoryview(buf), deadline)
    return _HEAD.unpack(buf)


def read_control(sock: socket.socket, max_len: int, deadline: float | None = None,
                 head: tuple[int, int] | None = None) -> tuple[int, dict[str, Any]]:
    """Read one control frame (its `head` if already read); refuse DATA frames and
    frames over `max_len` bytes (FrameTooLarge) before reading their payload."""
    ftype, length = head if head is not None else read_head(sock, deadline)
    if ftype not in NAMES or ftype == DATA:
        raise ProtocolError(f"expected a control frame, got frame type {ftype}")
    if length > max_len:
        raise FrameTooLarge(ftype, length, max_len)
    payload = bytearray(length)
    recv_into_exact(sock, memoryview(payload), deadline)
    return ftype, decode(payload)


def decode(payload: bytes | bytearray) -> dict[str, Any]:
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"undecodable control frame: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise ProtocolError("control frame payload is not a map")
    return body


def encode_control(ftype: int, body: dict[str, Any]) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    return _HEAD.pack(ftype, len(payload)) + payload


def send_control(sock: socket.socket, ftype: int, body: dict[str, Any],
                 timeout: float | None = None) -> None:
    """Send one control frame; with `timeout`, the socket's timeout is set first (a
    reader's deadline may have left a shorter one)."""
    if timeout is not None:
        sock.settimeout(timeout)
    sock.sendall(encode_control(ftype, body))


def data_head(length: int) -> bytes:
    return _HEAD.pack(DATA, length)


def send_value(
    sock: socket.socket,
    header_frame: bytes,
    parts: Sequence[memoryview | bytes],
    chunk_size: int,
) -> None:
    """Send a MSG header frame then every part as DATA frames of at most `chunk_size`.

    Parts are sliced, never copied; small parts ride in the same system call as
    their frame head.
    """
    pending: list[bytes | memoryview] = [header_frame]
    pending_len = len(header_frame)
    for part in parts:
        view = memoryview(part).cast("B") if not isinstance(part, bytes) else memoryview(part)
        for start in range(0, len(view), chunk_size):
            chunk = view[start:start + chunk_size]
            pending.append(data_head(len(chunk)))
            pending.append(chunk)
            pending_len += HEAD_SIZE + len(chunk)
            if pending_len >= 256 * 1024 or len(pending) >= 512:  # sendmsg: <= IOV_MAX pieces
                _send_all(sock, pending)
                pending, pending_len = [], 0
    if pending:
        _send_all(sock, pending)


def _send_all(sock: socket.socket, pieces: Iterable[bytes | memoryview]) -> None:
    pieces = list(pieces)
    if hasattr(sock, "sendmsg") and not hasattr(sock, "cipher"):
        # Plain TCP: gather-write without joining the pieces.
        while pieces:
            sent = sock.sendmsg(pieces)
            while sent:
                first = pieces[0]
                if sent >= len(first):
                    sent -= len(first)
                    pieces.pop(0)
                else:
                    pieces[0] = memoryview(first)[sent:]
                    sent = 0
    else:
        for piece in pieces:
            sock.sendall(piece)
