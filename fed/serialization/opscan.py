"""A pass over a pickle's opcodes before it is unpickled: framing, lengths, memo."""
from __future__ import annotations

import pickle
import pickletools

from fed.errors import FedSerializationError

# ------------------------------------------------------------ opcode pre-scan
#
# CPython < 3.15's C unpickler sizes its memo array from the index in a PUT /
# LONG_BINPUT opcode and zero-fills it: ten bytes like b"]r\xff\xff\xff\x7f."
# make it allocate and touch tens of GiB (cpython gh-115952). Length-prefixed
# opcodes with absurd lengths also make it allocate before noticing the data is
# short. So before unpickling, walk the opcodes once (cheap next to unpickling,
# and the pickle is small when arrays travel out of band) and refuse these.

_ARG_INVALID = -1  # in _OPCODE_KINDS; a value >= 0 is the size of a fixed argument
_ARG_SPECIAL = -2

# Slow-path categories in _OPCODE_SPECIAL.
_COUNTED, _LINE, _LINE_PAIR, _PUT, _LONG_BINPUT, _FRAME, _STOP, _BUILD = range(8)


def _opcode_tables() -> tuple[list[int], dict[int, tuple[int, int, bool]]]:
    """Opcode byte -> fixed argument size (fast path) or slow-path (category, width, signed)."""
    kinds = [_ARG_INVALID] * 256
    special: dict[int, tuple[int, int, bool]] = {}
    counted = {
        pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
        pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
        pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
        pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
    }
    for op in pickletools.opcodes:
        code = op.code.encode("latin-1")[0]
        arg = op.arg
        if arg is None or arg.n >= 0:
            kinds[code] = 0 if arg is None else arg.n
            continue
        kinds[code] = _ARG_SPECIAL
        if arg.n in counted:
            special[code] = (_COUNTED, *counted[arg.n])
        elif arg.name == "stringnl_noescape_pair":  # GLOBAL, INST
            special[code] = (_LINE_PAIR, 0, False)
        elif op.name == "PUT":
            special[code] = (_PUT, 0, False)
        else:  # UP_TO_NEWLINE
            special[code] = (_LINE, 0, False)
    special[pickle.LONG_BINPUT[0]] = (_LONG_BINPUT, 4, False)
    special[pickle.FRAME[0]] = (_FRAME, 8, False)
    special[pickle.STOP[0]] = (_STOP, 0, False)
    special[pickle.BUILD[0]] = (_BUILD, 0, False)
    for code in (pickle.LONG_BINPUT[0], pickle.FRAME[0], pickle.STOP[0], pickle.BUILD[0]):
        kinds[code] = _ARG_SPECIAL
    return kinds, special


_OPCODE_KINDS, _OPCODE_SPECIAL = _opcode_tables()


def _malformed(what: str, offset: int) -> FedSerializationError:
    return FedSerializationError(f"malformed pickle from another party: {what} at offset {offset}")


def _scan_opcodes(data: bytes) -> tuple[int, bool]:
    """Validate opcode framing and memo indices.

    Returns the offset just after STOP and whether the pickle has BUILD opcodes.

    A legitimate memo index is below the opcode's offset (each memo entry costs
    at least one byte), so that is the bound: the memo stays O(len(data)).
    """
    kinds = _OPCODE_KINDS
    special = _OPCODE_SPECIAL
    size = len(data)
    pos = 0
    builds = False
    while pos < size:
        kind = kinds[data[pos]]
        if kind >= 0:  # fast path: no argument or a fixed-size one
            pos += 1 + kind
            continue
        start = pos
        if kind == _ARG_INVALID:
            raise _malformed(f"invalid opcode {data[pos]:#04x}", start)
        category, width, signed = special[data[pos]]
        pos += 1
        if category == _COUNTED:
            if pos + width > size:
                break
            length = int.from_bytes(data[pos : pos + width], "little", signed=signed)
            pos += width
            if length < 0 or length > size - pos:
                raise _malformed(f"length {length} exceeds the data", start)
            pos += length
        elif category == _BUILD:
            builds = True
        elif category == _STOP:
            return pos, builds
        elif category == _LONG_BINPUT or category == _FRAME:
            if pos + width > size:
                break
            value = int.from_bytes(data[pos : pos + width], "little")
            pos += width
            if category == _LONG_BINPUT and value >= start:
                raise _malformed(f"memo index {value} out of range", start)
            if category == _FRAME and value > size - pos:
                raise _malformed(f"frame of {value} bytes exceeds the data", start)
        else:  # newline-terminated argument(s)
            end = data.find(b"\n", pos)
            if end < 0:
                break
            if category == _PUT:
                try:
                    index = int(data[pos:end])
                except ValueError:
                    raise _malformed("bad PUT index", start) from None
                if not 0 <= index < start:
                    raise _malformed(f"memo index {index} out of range", start)
            elif category == _LINE_PAIR:
                end = data.find(b"\n", end + 1)
                if end < 0:
                    break
            pos = end + 1
    raise _malformed("data ends before the STOP opcode", min(pos, size))

