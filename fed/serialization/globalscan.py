"""Which globals a pickle would load, found without unpickling it.

A value held until a barrier claims it is checked on arrival but not built: a pickle
of admitted types can decode to far more memory than it has bytes (32 bytes give
``bytearray(2**28)``). So the receiver asks only which globals the pickle would load
(:func:`check`), and the value is built where it is used.
"""
from __future__ import annotations

import io
import pickle
from typing import Any

from fed.errors import FedSerializationError
from fed.serialization.allowlist import Allowlist
from fed.serialization.hints import _shorten
from fed.serialization.opscan import (
    _BUILD,
    _COUNTED,
    _FRAME,
    _LINE_PAIR,
    _LONG_BINPUT,
    _OPCODE_KINDS,
    _OPCODE_SPECIAL,
    _STOP,
    _malformed,
    _scan_opcodes,
)
from fed.serialization.pickling import PICKLE_PROTOCOL
from fed.serialization.unpickling import _admit

_STRING_PUSH = {pickle.SHORT_BINUNICODE[0]: 1, pickle.BINUNICODE[0]: 4,
                pickle.BINUNICODE8[0]: 8}  # opcode -> width of its length prefix
_MEMO_GET = {pickle.BINGET[0]: 1, pickle.LONG_BINGET[0]: 4, pickle.GET[0]: 0}
_MEMO_PUT = {pickle.BINPUT[0]: 1, pickle.LONG_BINPUT[0]: 4, pickle.PUT[0]: 0,
             pickle.MEMOIZE[0]: -1}
_NAMED_GLOBAL = frozenset((pickle.GLOBAL[0], pickle.INST[0]))  # "module\nname\n" argument
# Extension codes and persistent ids reach code other than find_class: never written here.
_UNSUPPORTED = frozenset((pickle.EXT1[0], pickle.EXT2[0], pickle.EXT4[0],
                          pickle.PERSID[0], pickle.BINPERSID[0]))
_FOLLOWED = bytes(
    code in (*_STRING_PUSH, *_MEMO_GET, *_MEMO_PUT, *_NAMED_GLOBAL, *_UNSUPPORTED,
             pickle.STACK_GLOBAL[0], pickle.NEXT_BUFFER[0], pickle.FRAME[0], pickle.STOP[0])
    for code in range(256))


def _opcode_end(data: bytes, pos: int) -> int:
    """Where the opcode at `pos` ends (its framing already passed _scan_opcodes)."""
    kind = _OPCODE_KINDS[data[pos]]
    if kind >= 0:
        return pos + 1 + kind
    category, width, signed = _OPCODE_SPECIAL[data[pos]]
    if category == _COUNTED:
        length = int.from_bytes(data[pos + 1 : pos + 1 + width], "little", signed=signed)
        return pos + 1 + width + length
    if category in (_LONG_BINPUT, _FRAME):
        return pos + 1 + width
    if category in (_STOP, _BUILD):
        return pos + 1
    end = data.index(b"\n", pos + 1)
    return (data.index(b"\n", end + 1) if category == _LINE_PAIR else end) + 1


def _memo_index(data: bytes, pos: int, end: int, width: int, memo: dict) -> Any:
    if width < 0:  # MEMOIZE: the next free index, as both unpicklers count
        return len(memo)
    if width == 0:  # PUT / GET: a decimal line
        return int(data[pos + 1 : end - 1])
    return int.from_bytes(data[pos + 1 : pos + 1 + width], "little")


def _pickle_globals(data: bytes) -> tuple[list[tuple[str, str]], int]:
    """The (module, name) pairs a pickle hands to find_class, and its NEXT_BUFFER count.

    Tracks strings only: STACK_GLOBAL must take two strings pushed by the two
    stack-changing opcodes before it (what picklers write: string opcodes or memo gets
    of strings, with MEMOIZE/PUT/FRAME between). Anything else is refused, not guessed.
    """
    names: list[tuple[str, str]] = []
    memo: dict[int, str | None] = {}
    below: str | None = None  # the two topmost stack items, when known strings
    top: str | None = None
    used, pos, kinds, followed = 0, 0, _OPCODE_KINDS, _FOLLOWED
    while True:
        code = data[pos]
        if not followed[code]:  # any other opcode: the top of the stack is unknown
            kind = kinds[code]
            pos = pos + 1 + kind if kind >= 0 else _opcode_end(data, pos)
            below = top = None
            continue
        end = _opcode_end(data, pos)
        if code in _STRING_PUSH:
            below, top = top, data[pos + 1 + _STRING_PUSH[code] : end].decode("utf-8", "surrogatepass")
        elif code in _MEMO_GET:
            below, top = top, memo.get(_memo_index(data, pos, end, _MEMO_GET[code], memo))
        elif code in _MEMO_PUT:
            memo[_memo_index(data, pos, end, _MEMO_PUT[code], memo)] = top
        elif code == pickle.STACK_GLOBAL[0]:
            if below is None or top is None:
                raise _malformed("STACK_GLOBAL without two literal names before it", pos)
            names.append((below, top))
            below = top = None
        elif code in _NAMED_GLOBAL:
            module, name = data[pos + 1 : end - 1].decode("utf-8").split("\n")
            names.append((module, name))
            below = top = None
        elif code in _UNSUPPORTED:
            raise _malformed(f"unsupported opcode {code:#04x}", pos)
        elif code == pickle.NEXT_BUFFER[0]:
            used += 1
            below = top = None
        elif code == pickle.STOP[0]:
            return names, used
        pos = end  # FRAME: the stack is unchanged


def _find_global(module: str, name: str) -> Any:
    """Import `module` and look `name` up as an unpickler does (dotted names too)."""
    unpickler = pickle._Unpickler(io.BytesIO(), fix_imports=False)  # type: ignore[attr-defined]
    unpickler.proto = PICKLE_PROTOCOL
    return unpickler.find_class(module, name)


def check(data: Any, buffer_count: int, allowlist: Allowlist) -> None:
    """Check a serialized value as :func:`loads` would, without building anything.

    The opcode framing, the number of out-of-band buffers, and every global the pickle
    names (against `allowlist`, imported only if admitted) are checked; a value of
    admitted types is not, so it may still fail when decoded (e.g. a forged numpy
    state). Raises what :func:`loads` raises for the same defects. With an allow-all
    allowlist nothing is checked (the peer is trusted with code).
    """
    if allowlist.allow_all:
        return
    data = data if isinstance(data, bytes) else bytes(data)
    try:
        end, _builds = _scan_opcodes(data)
        if end != len(data):
            raise FedSerializationError(f"{len(data) - end} trailing bytes after the end of the pickle")
        names, used = _pickle_globals(data)
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise _malformed(f"{type(exc).__name__}: {_shorten(str(exc))}", 0) from None
    if used != buffer_count:
        raise FedSerializationError(
            f"the pickle uses {used} out-of-band buffers but {buffer_count} were received")
    for module, name in dict.fromkeys(names):
        _admit(allowlist, module, name, _find_global)
