"""Value -> (msgpack header, out-of-band buffers). The sender's half of the codec.

Types are matched exactly (a subclass of dict is not a dict: the receiver would get
a different type back), in this order: core types, numpy, the user's codecs, the
library table. Array memory is never copied when contiguous: each buffer is a
byte view of the array, valid as long as the value is unchanged.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from fed.codec import numpy_codec, tags
from fed.codec.limits import DEFAULT_LIMITS, CodecLimits
from fed.codec.registry import LibraryTable, UserCodecs, library_table, type_name
from fed.errors import FedRemoteError, FedSerializationError

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1
#: bytes and bytearrays at least this large travel out of band, like array data.
OUT_OF_BAND_BYTES = 64 * 1024

#: What the sender does with a value of a type the codec cannot encode: the pickle
#: (data, out-of-band buffers) when the configuration admits its class, else None.
Fallback = Callable[[Any], tuple[bytes, list] | None]


@dataclass
class Encoded:
    """One value ready to send: the header, its buffers, whether it holds pickles."""

    header: bytes
    buffers: list
    pickled: bool = False


class Unsupported(FedSerializationError):
    """A value of a type the codec does not carry (raised on the sender)."""

    def __init__(self, obj: Any, path: str = "") -> None:
        self.obj = obj
        self.path = path
        self.type_name = type_name(type(obj))
        super().__init__(f"{self.type_name} is not a type rayfed sends as data")


def encode(value: Any, *, codecs: UserCodecs | None = None,
           fallback: Fallback | None = None, limits: CodecLimits = DEFAULT_LIMITS,
           table: LibraryTable | None = None) -> Encoded:
    """Encode `value`; FedSerializationError (``Unsupported`` for a type) if it cannot cross.

    `table` replaces the library table (tests); by default the fixed one is used."""
    state = _Encoder(codecs or UserCodecs(), fallback, limits, table)
    tree = state.node(value, 0)
    header = msgpack.packb(tree, use_bin_type=True)
    if len(header) > limits.max_header_bytes:
        raise FedSerializationError(
            f"the value's structure takes {len(header)} bytes, above the codec's limit of "
            f"{limits.max_header_bytes}; send large collections of numbers as numpy arrays")
    return Encoded(header, state.buffers, state.pickled)


class _Encoder:
    def __init__(self, codecs: UserCodecs, fallback: Fallback | None,
                 limits: CodecLimits, table: LibraryTable | None) -> None:
        self.codecs = codecs
        self.table = table
        self.fallback = fallback
        self.limits = limits
        self.buffers: list = []
        self.items = 0
        self.pickled = False

    def node(self, value: Any, depth: int) -> Any:
        self.items += 1
        if self.items > self.limits.max_items:
            raise FedSerializationError(
                f"the value has more than {self.limits.max_items} items; send large collections "
                "of numbers as numpy arrays")
        cls = type(value)
        if value is None or cls is bool or cls is float:
            return value
        if cls is str:
            return value if value.isascii() else self._text(value)
        if cls is int:
            return value if _INT_MIN <= value <= _INT_MAX else self._big_int(value)
        if depth >= self.limits.max_depth:
            raise FedSerializationError(
                f"the value is nested more than {self.limits.max_depth} levels deep "
                "(or contains itself)")
        method = _BY_TYPE.get(cls)
        if method is not None:
            return method(self, value, depth + 1)
        return self._other(value, depth + 1)

    def _text(self, value: str) -> Any:
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return [tags.STR_SURROGATES, value.encode("utf-8", "surrogatepass")]

    def _big_int(self, value: int) -> list:
        size = (value.bit_length() + 8) // 8
        if size > self.limits.max_int_bytes:
            raise FedSerializationError(
                f"an int of {value.bit_length()} bits is above the limit of "
                f"{self.limits.max_int_bytes * 8} bits")
        return [tags.BIG_INT, value.to_bytes(size, "little", signed=True)]

    def _bytes(self, value: bytes, depth: int) -> Any:
        if len(value) < OUT_OF_BAND_BYTES:
            return value
        self.buffers.append(memoryview(value))
        return [tags.BYTES_BUFFER]

    def _bytearray(self, value: bytearray, depth: int) -> list:
        if len(value) < OUT_OF_BAND_BYTES:
            return [tags.BYTEARRAY, bytes(value)]
        self.buffers.append(memoryview(value))
        return [tags.BYTEARRAY, None]

    def _items(self, tag: int, values: Any, depth: int) -> list:
        out = [tag]
        for i, item in enumerate(values):
            out.append(self._child(item, depth, i))
        return out

    def _child(self, item: Any, depth: int, where: Any) -> Any:
        try:
            return self.node(item, depth)
        except Unsupported as exc:
            exc.path = f"[{where!r}]{exc.path}"
            raise

    def _list(self, value: list, depth: int) -> list:
        return self._items(tags.LIST, value, depth)

    def _tuple(self, value: tuple, depth: int) -> list:
        return self._items(tags.TUPLE, value, depth)

    def _set(self, value: Any, depth: int) -> list:
        tag = tags.SET if type(value) is set else tags.FROZENSET
        return self._items(tag, value, depth)

    def _dict(self, value: dict, depth: int) -> list:
        out = [tags.DICT if type(value) is dict else tags.ORDERED_DICT]
        for key, item in value.items():
            out.append(self._child(key, depth, f"key {key!r}"))
            out.append(self._child(item, depth, key))
        return out

    def _complex(self, value: complex, depth: int) -> list:
        return [tags.COMPLEX, value.real, value.imag]

    def _ndarray(self, value: np.ndarray, depth: int) -> list:
        return [tags.NDARRAY, *numpy_codec.encode_array(value, self.buffers)]

    def _error(self, value: FedRemoteError, depth: int) -> list:
        fields = (value.src_party, value.call, value.cause_type, value.message,
                  value.remote_traceback)
        return [tags.ERROR_ENVELOPE, *(f if f is None else str(f) for f in fields)]

    def _other(self, value: Any, depth: int) -> Any:
        cls = type(value)
        if isinstance(value, np.generic):
            return [tags.NUMPY_SCALAR, *numpy_codec.encode_scalar(value)]
        if isinstance(value, np.dtype):
            return [tags.NUMPY_DTYPE, numpy_codec.describe_dtype(value)]
        if numpy_codec.is_scalar_type(value):
            return [tags.NUMPY_TYPE, numpy_codec.encode_scalar_type(value)]
        user = self.codecs.for_type(cls)
        if user is not None:
            plain = _call_codec(user.name, user.encode, value)
            return [tags.USER, user.name, self._child(plain, depth, f"<{user.name} codec>")]
        table = self.table if self.table is not None else library_table()
        library = table.by_type_name.get(type_name(cls))
        if library is not None:
            plain = _call_codec(library.name, library.encode, value)
            return [tags.LIBRARY, library.name, self._child(plain, depth, f"<{library.name}>")]
        return self._fallback(value)

    def _fallback(self, value: Any) -> list:
        pickled = None if self.fallback is None else self.fallback(value)
        if pickled is None:
            raise Unsupported(value)
        data, buffers = pickled
        self.pickled = True
        self.buffers.extend(buffers)
        return [tags.PICKLE, data, len(buffers)]


def _call_codec(name: str, fn: Callable[[Any], Any], value: Any) -> Any:
    try:
        return fn(value)
    except FedSerializationError:
        raise
    except Exception as exc:  # noqa: BLE001 (a codec's own code may raise anything)
        raise FedSerializationError(
            f"the {name} codec could not encode a {type_name(type(value))}: "
            f"{type(exc).__name__}: {exc}") from None


_BY_TYPE: dict[type, Callable[[_Encoder, Any, int], Any]] = {
    bytes: _Encoder._bytes,
    bytearray: _Encoder._bytearray,
    list: _Encoder._list,
    tuple: _Encoder._tuple,
    dict: _Encoder._dict,
    OrderedDict: _Encoder._dict,
    set: _Encoder._set,
    frozenset: _Encoder._set,
    complex: _Encoder._complex,
    np.ndarray: _Encoder._ndarray,
    FedRemoteError: _Encoder._error,
}
