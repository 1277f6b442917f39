"""(msgpack header, buffers) -> value. The receiver's half of the codec.

A fixed table maps each tag to a constructor of data (tags.py); nothing the header
says is imported, looked up as an attribute or called, except the entries of the
library table and the user's registered codecs, chosen by exact tag name.
Every bound in CodecLimits is checked, and the buffers must match the header
exactly: each is used once, in order, and has the size its node declares.

`check` walks a header without building anything (no arrays, no library objects):
the receiver runs it on arrival, so a malformed value is refused there; `decode`
builds the value where it is consumed.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from fed.codec import numpy_codec, tags
from fed.codec.limits import DEFAULT_LIMITS, CodecLimits
from fed.codec.registry import LibraryTable, UserCodecs, library_table, require_library
from fed.codec.types import CodecOptions
from fed.errors import FedRemoteError, FedSerializationError

_DEFAULT_OPTIONS = CodecOptions()
#: Rebuilds a PICKLE node (data, its buffers) with the receiver's allowlist.
Unpickle = Callable[[bytes, list], Any]


def _bad(what: str) -> FedSerializationError:
    return FedSerializationError(f"malformed value from another party: {what}")


def decode(header: Any, buffers: Sequence[Any], *, options: CodecOptions = _DEFAULT_OPTIONS,
           codecs: UserCodecs | None = None, unpickle: Unpickle | None = None,
           limits: CodecLimits = DEFAULT_LIMITS, table: LibraryTable | None = None) -> Any:
    """The value `header` and `buffers` describe; arrays are views on the buffers.

    `table` replaces the library table (tests); by default the fixed one is used."""
    return _run(header, buffers, True, options, codecs, unpickle, limits, table)


def check(header: Any, buffers: Sequence[Any], *, unpickle: Unpickle | None = None,
          limits: CodecLimits = DEFAULT_LIMITS, table: LibraryTable | None = None) -> None:
    """FedSerializationError unless `decode` could start building this value."""
    _run(header, buffers, False, _DEFAULT_OPTIONS, None, unpickle, limits, table)


def _run(header: Any, buffers: Sequence[Any], build: bool, options: CodecOptions,
         codecs: UserCodecs | None, unpickle: Unpickle | None,
         limits: CodecLimits, table: LibraryTable | None) -> Any:
    if len(buffers) > limits.max_buffers:
        raise _bad(f"{len(buffers)} buffers, above the limit of {limits.max_buffers}")
    tree = unpack_header(header, limits)
    walker = _Decoder(buffers, build, options, codecs or UserCodecs(), unpickle, limits, table)
    try:
        value = walker.value(tree, 0)
    except FedSerializationError:
        raise
    except RecursionError:
        raise _bad("nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 (unhashable keys, numpy's own errors: all typed)
        raise _bad(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if walker.cursor != len(buffers):
        raise _bad(f"{len(buffers)} buffers arrived but the header uses {walker.cursor}")
    return value


def unpack_header(header: Any, limits: CodecLimits = DEFAULT_LIMITS) -> Any:
    """The header's msgpack tree: arrays, scalars; no maps, no extension types."""
    try:
        size = memoryview(header).nbytes
    except TypeError:
        raise _bad(f"the header is {type(header).__name__}, not bytes") from None
    if size > limits.max_header_bytes:
        raise _bad(f"a header of {size} bytes, above the limit of {limits.max_header_bytes}")
    try:
        return msgpack.unpackb(header, raw=False, use_list=True, strict_map_key=True,
                               max_map_len=0, max_ext_len=0)
    except Exception as exc:  # noqa: BLE001 (ExtraData, StackError, FormatError, UnicodeDecodeError...)
        raise _bad(f"the header is not valid: {type(exc).__name__}: {str(exc)[:200]}") from None


class _Decoder:
    def __init__(self, buffers: Sequence[Any], build: bool, options: CodecOptions,
                 codecs: UserCodecs, unpickle: Unpickle | None, limits: CodecLimits,
                 table: LibraryTable | None) -> None:
        self.buffers = buffers
        self.table = table
        self.sizes = [memoryview(b).nbytes for b in buffers]
        self.build = build
        self.options = options
        self.codecs = codecs
        self.unpickle = unpickle
        self.limits = limits
        self.cursor = 0
        self.items = 0

    def value(self, node: Any, depth: int) -> Any:
        self.items += 1
        if self.items > self.limits.max_items:
            raise _bad(f"more than {self.limits.max_items} items")
        kind = type(node)
        if kind is not list:
            if node is None or kind in _SCALARS:
                return node
            raise _bad(f"unexpected {kind.__name__} in the header")
        if not node or type(node[0]) is not int:
            raise _bad("a header array without a tag")
        if depth >= self.limits.max_depth:
            raise _bad(f"nested more than {self.limits.max_depth} levels deep")
        handler = _HANDLERS.get(node[0])
        if handler is None:
            raise _bad(f"unknown tag {node[0]}")
        return handler(self, node, depth + 1)

    def take(self, size: int | None) -> Any:
        """The next buffer, which must be `size` bytes (None: any size)."""
        if self.cursor >= len(self.sizes):
            raise _bad("the header uses more buffers than arrived")
        index = self.cursor
        if size is not None and self.sizes[index] != size:
            raise _bad(f"buffer #{index} has {self.sizes[index]} bytes, the header says {size}")
        self.cursor += 1
        return self.buffers[index]

    def arity(self, node: list, count: int) -> None:
        if len(node) != count:
            raise _bad(f"a {tags.NAMES.get(node[0], node[0])} node with {len(node) - 1} fields")

    def children(self, node: list, depth: int) -> list:
        return [self.value(item, depth) for item in node[1:]]

    def sequence(self, node: list, depth: int) -> Any:
        items = self.children(node, depth)
        if not self.build:
            return None
        return _SEQUENCE_TYPES[node[0]](items) if node[0] != tags.LIST else items

    def mapping(self, node: list, depth: int) -> Any:
        if len(node) % 2 != 1:
            raise _bad("a dict node with an odd number of keys and values")
        items = self.children(node, depth)
        if not self.build:
            return None
        out = {} if node[0] == tags.DICT else OrderedDict()
        for i in range(0, len(items), 2):
            out[items[i]] = items[i + 1]  # TypeError for an unhashable key: refused
        return out

    def scalar_node(self, node: list, depth: int) -> Any:
        tag = node[0]
        if tag == tags.BIG_INT:
            self.arity(node, 2)
            if type(node[1]) is not bytes or len(node[1]) > self.limits.max_int_bytes:
                raise _bad("big int")
            return int.from_bytes(node[1], "little", signed=True)
        if tag == tags.COMPLEX:
            self.arity(node, 3)
            if type(node[1]) is not float or type(node[2]) is not float:
                raise _bad("complex")
            return complex(node[1], node[2])
        self.arity(node, 2)  # STR_SURROGATES
        if type(node[1]) is not bytes:
            raise _bad("str")
        return node[1].decode("utf-8", "surrogatepass")

    def raw_bytes(self, node: list, depth: int) -> Any:
        if node[0] == tags.BYTES_BUFFER:
            self.arity(node, 1)
            buffer = self.take(None)
            return bytes(buffer) if self.build else None
        self.arity(node, 2)
        if node[1] is None:
            buffer = self.take(None)
            return bytearray(buffer) if self.build else None
        if type(node[1]) is not bytes:
            raise _bad("bytearray")
        return bytearray(node[1])

    def ndarray(self, node: list, depth: int) -> Any:
        self.arity(node, 4)
        dtype, shape = numpy_codec.array_nbytes(node[1], node[2], node[3], self.limits)
        buffer = self.take(numpy_codec.expected_size(dtype, shape))
        if not self.build:
            return None
        return numpy_codec.checked(numpy_codec.decode_array, dtype, shape, node[3], buffer)

    def numpy_node(self, node: list, depth: int) -> Any:
        limits = self.limits
        if node[0] == tags.NUMPY_SCALAR:
            self.arity(node, 3)
            return numpy_codec.checked(numpy_codec.decode_scalar, node[1], node[2], limits)
        self.arity(node, 2)
        dtype = numpy_codec.checked(numpy_codec.dtype_from_description, node[1], limits)
        return dtype if node[0] == tags.NUMPY_DTYPE else dtype.type

    def error(self, node: list, depth: int) -> FedRemoteError:
        self.arity(node, 6)
        fields = node[1:]
        if not all(type(f) is str for f in fields[:3]) or not all(
                f is None or type(f) is str for f in fields[3:]):
            raise _bad("error envelope fields")
        return FedRemoteError(*fields)

    def library(self, node: list, depth: int) -> Any:
        self.arity(node, 3)
        name = self.name(node[1])
        codec = (self.table if self.table is not None else library_table()).for_tag(name)
        require_library(codec)
        plain = self.value(node[2], depth)
        if not self.build:
            return None
        return _run_decode(codec.name, lambda: codec.decode(plain, self.options))

    def user(self, node: list, depth: int) -> Any:
        self.arity(node, 3)
        name = self.name(node[1])
        plain = self.value(node[2], depth)
        if not self.build:
            return None
        codec = self.codecs.for_name(name)
        return _run_decode(name, lambda: codec.decode(plain))

    def pickled(self, node: list, depth: int) -> Any:
        self.arity(node, 3)
        data, count = node[1], node[2]
        if type(data) is not bytes or type(count) is not int or count < 0:
            raise _bad("pickle node")
        if count > len(self.sizes) - self.cursor:
            raise _bad("the header uses more buffers than arrived")
        if self.unpickle is None:
            raise FedSerializationError(
                "a pickled value arrived, and this party accepts none (it configures no "
                "cross_silo_comm.serializing_allowed_list)")
        buffers = [self.take(None) for _ in range(count)]
        return self.unpickle(data, buffers)

    def name(self, value: Any) -> str:
        if type(value) is not str or not 0 < len(value) <= self.limits.max_name_chars:
            raise _bad("a codec name")
        return value


def _run_decode(name: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except FedSerializationError:
        raise
    except ImportError as exc:
        raise FedSerializationError(
            f"decoding a {name} value needs {exc.name or 'a library'} on the receiving party: "
            f"pip install {exc.name or '...'}") from None
    except Exception as exc:  # noqa: BLE001 (a codec's own code may raise anything)
        raise FedSerializationError(
            f"the {name} codec refused a value from another party: "
            f"{type(exc).__name__}: {str(exc)[:500]}") from None


_SCALARS = frozenset({bool, int, float, str, bytes})
_SEQUENCE_TYPES: dict[int, Callable[[list], Any]] = {
    tags.TUPLE: tuple, tags.SET: set, tags.FROZENSET: frozenset,
}
_HANDLERS: dict[int, Callable[[_Decoder, list, int], Any]] = {
    tags.LIST: _Decoder.sequence,
    tags.TUPLE: _Decoder.sequence,
    tags.SET: _Decoder.sequence,
    tags.FROZENSET: _Decoder.sequence,
    tags.DICT: _Decoder.mapping,
    tags.ORDERED_DICT: _Decoder.mapping,
    tags.BIG_INT: _Decoder.scalar_node,
    tags.COMPLEX: _Decoder.scalar_node,
    tags.STR_SURROGATES: _Decoder.scalar_node,
    tags.BYTEARRAY: _Decoder.raw_bytes,
    tags.BYTES_BUFFER: _Decoder.raw_bytes,
    tags.NDARRAY: _Decoder.ndarray,
    tags.NUMPY_SCALAR: _Decoder.numpy_node,
    tags.NUMPY_DTYPE: _Decoder.numpy_node,
    tags.NUMPY_TYPE: _Decoder.numpy_node,
    tags.ERROR_ENVELOPE: _Decoder.error,
    tags.LIBRARY: _Decoder.library,
    tags.USER: _Decoder.user,
    tags.PICKLE: _Decoder.pickled,
}
