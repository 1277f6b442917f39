"""Which non-core types the codec knows: the library table and the user's codecs.

The library table is fixed: one module per library (``LIBRARY_MODULES``), each
exposing ``CODECS`` (fed/codec/types.py). Those modules import nothing from their
library at import time, so reading the table costs nothing; a module file that is
absent contributes no entries. The table is read once per process, under a lock,
the first time a value needs it.

User codecs (``fed.register_codec``) live in the per-process context
(fed/_context.py); a :class:`UserCodecs` is an immutable snapshot of them that
travels to wherever values are decoded (the receiver, the consumer's worker).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from fed.codec.types import LibraryCodec
from fed.errors import FedConfigError, FedSerializationError

#: The library codec modules, in lookup order. Nothing else is ever imported by the codec.
LIBRARY_MODULES = (
    "fed.codec.lib_torch",
    "fed.codec.lib_pandas",
    "fed.codec.lib_scipy",
    "fed.codec.lib_jax",
)

_TABLE_LOCK = threading.Lock()


def type_name(cls: type) -> str:
    """How rayfed names a type everywhere: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class LibraryTable:
    by_type_name: dict[str, LibraryCodec]
    by_tag: dict[str, LibraryCodec]

    def for_tag(self, tag: str) -> LibraryCodec:
        """The entry for a wire tag, or FedSerializationError naming the tag."""
        codec = self.by_tag.get(tag)
        if codec is None:
            raise FedSerializationError(
                f"a value tagged {tag[:200]!r} arrived, and this party knows no library codec "
                "of that name (a newer rayfed on the sending party?)")
        return codec


def _import_codec_module(name: str) -> tuple[LibraryCodec, ...]:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return ()  # this library's codec is not part of this installation
        raise
    return tuple(module.CODECS)


def _build_table(modules: Iterable[str]) -> LibraryTable:
    by_type: dict[str, LibraryCodec] = {}
    by_tag: dict[str, LibraryCodec] = {}
    for module in modules:
        for codec in _import_codec_module(module):
            if not isinstance(codec, LibraryCodec) or codec.name in by_tag:
                raise FedSerializationError(f"{module}: bad or duplicate codec {codec!r}")
            by_tag[codec.name] = codec
            for name in codec.type_names:
                by_type.setdefault(name, codec)
    return LibraryTable(by_type, by_tag)


@cache
def _cached_table() -> LibraryTable:
    return _build_table(LIBRARY_MODULES)


def library_table() -> LibraryTable:
    """The fixed library table, read once per process (thread-safe)."""
    with _TABLE_LOCK:  # one thread imports the modules; the others wait for the result
        return _cached_table()


def require_library(codec: LibraryCodec) -> None:
    """FedSerializationError naming the library when it is not installed here."""
    if importlib.util.find_spec(codec.library) is None:
        raise FedSerializationError(
            f"a {codec.name} value arrived; it needs {codec.library} on the receiving party: "
            f"pip install {codec.library}")


# ---- user codecs -------------------------------------------------------------------------


@dataclass(frozen=True)
class UserCodec:
    cls: type
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


@dataclass(frozen=True)
class UserCodecs:
    """An immutable set of user codecs: by exact class (sender), by name (receiver)."""

    codecs: tuple[UserCodec, ...] = ()

    def for_type(self, cls: type) -> UserCodec | None:
        for codec in self.codecs:
            if codec.cls is cls:
                return codec
        return None

    def for_name(self, name: str) -> UserCodec:
        for codec in self.codecs:
            if codec.name == name:
                return codec
        raise FedSerializationError(
            f"a value encoded by the user codec {name[:200]!r} arrived, but no codec of that "
            "name is registered in this party; call fed.register_codec for that type in every "
            "party (the same registration on both sides)")

    def with_codec(self, codec: UserCodec) -> UserCodecs:
        """A copy with `codec` added (replacing one for the same class)."""
        for other in self.codecs:
            if other.name == codec.name and other.cls is not codec.cls:
                raise FedConfigError(
                    f"fed.register_codec: the name {codec.name!r} is already used by "
                    f"{type_name(other.cls)}; pass name=... to tell them apart")
        kept = tuple(c for c in self.codecs if c.cls is not codec.cls)
        return UserCodecs(kept + (codec,))


def make_user_codec(cls: Any, encode: Callable | None, decode: Callable | None,
                    name: str | None) -> UserCodec:
    """Validate fed.register_codec's arguments; a dataclass needs no functions."""
    if not isinstance(cls, type):
        raise FedConfigError(f"fed.register_codec needs a class, got {type(cls).__name__}")
    if encode is None and decode is None and dataclasses.is_dataclass(cls):
        encode, decode = _dataclass_functions(cls)
    for label, fn in (("encode", encode), ("decode", decode)):
        if not callable(fn):
            raise FedConfigError(
                f"fed.register_codec({cls.__qualname__}): {label} must be a function "
                "(only a dataclass may omit encode and decode)")
    name = type_name(cls) if name is None else name
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise FedConfigError("fed.register_codec: name must be a non-empty string (<= 200 chars)")
    return UserCodec(cls, name, encode, decode)


def _dataclass_functions(cls: type) -> tuple[Callable, Callable]:
    names = tuple(f.name for f in dataclasses.fields(cls) if f.init)

    def encode(value: Any) -> dict:
        return {n: getattr(value, n) for n in names}

    def decode(plain: Any) -> Any:
        if type(plain) is not dict or set(plain) != set(names):
            raise FedSerializationError(
                f"{type_name(cls)}: expected the fields {sorted(names)}, got "
                f"{sorted(map(str, plain)) if type(plain) is dict else type(plain).__name__}")
        return cls(**plain)

    return encode, decode
