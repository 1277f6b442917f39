"""What crosses for one value, and how it is told apart: the codec, or the opt-in pickle.

The sender encodes every value with the typed codec (fed/codec). A part the codec
does not carry is pickled only when the party configured
``cross_silo_comm.serializing_allowed_list`` and that list admits the part's class;
otherwise the value is refused here, before it leaves, naming the type and the
three ways to make it cross. The MSG header says which format a value uses
(``format: "codec" | "pickle"``, docs/protocol.md): a receiver without an
allowlist refuses a "pickle" value unread.

On arrival the receiver only *checks* the value (:func:`check`). The barrier hands
back a :class:`Received` marker that Ray stores; unpickling it, wherever the value
is consumed, builds the value (:func:`build`) with the same codec, user codecs and
allowlist. So no value a peer sent is ever unpickled without the allowlist, even
after Ray re-serializes it for a task.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fed import codec, serialization
from fed.codec import CodecOptions, UserCodecs
from fed.errors import FedSerializationError
from fed.serialization import Allowlist

CODEC = "codec"
PICKLE = "pickle"
FORMATS = (CODEC, PICKLE)

_SUPPORTED = (
    "None, bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, "
    "frozenset, OrderedDict, numpy arrays/scalars/dtypes, and torch, pandas, scipy.sparse "
    "and jax values where those libraries are installed (docs/protocol.md)"
)


@dataclass(frozen=True)
class WirePolicy:
    """How this party encodes and decodes values: user codecs, the pickle opt-in."""

    allowlist: Allowlist | None = None  # None: no pickle at all, either way
    codecs: UserCodecs = field(default_factory=UserCodecs)
    options: CodecOptions = field(default_factory=CodecOptions)

    @classmethod
    def from_config(cls, allowed: Any, tensor_device: str = "cpu",
                    codecs: UserCodecs | None = None) -> WirePolicy:
        """From ``serializing_allowed_list`` (None: not configured) and ``tensor_device``."""
        allowlist = None if allowed is None else Allowlist.from_config(allowed)
        return cls(allowlist, codecs or UserCodecs(), CodecOptions(torch_device=tensor_device))

    def with_codecs(self, codecs: UserCodecs) -> WirePolicy:
        return dataclasses.replace(self, codecs=codecs)


# ---- sender ------------------------------------------------------------------------------


def pack(value: Any, policy: WirePolicy) -> tuple[str, list]:
    """``(format, [header, *buffers])`` for `value`; FedSerializationError if it cannot cross."""
    fallback = None if policy.allowlist is None else _pickler(policy.allowlist)
    try:
        encoded = codec.encode(value, codecs=policy.codecs, fallback=fallback)
    except codec.Unsupported as exc:
        raise FedSerializationError(refusal_text(exc, policy.allowlist)) from None
    return (PICKLE if encoded.pickled else CODEC), [encoded.header, *encoded.buffers]


def _pickler(allowlist: Allowlist):
    def fallback(obj: Any) -> tuple[bytes, list] | None:
        cls = type(obj)
        if not allowlist.allow_all and (_sent_as_code(cls) or not allowlist.admits_class(cls)):
            return None
        return serialization.dumps(obj)

    return fallback


def _sent_as_code(cls: type) -> bool:
    """Classes pickle can only send by value, as code: ``__main__`` and local ones."""
    return cls.__module__ == "__main__" or "<locals>" in cls.__qualname__


def refusal_text(exc: codec.Unsupported, allowlist: Allowlist | None) -> str:
    """Why a value is refused on the sender, and the three ways to make it cross."""
    cls = type(exc.obj)
    where = f" (at value{exc.path})" if exc.path else ""
    name = exc.type_name
    if _sent_as_code(cls):
        allow = (f"or move {cls.__qualname__} to a module every party imports and allow it "
                 f"by that name in cross_silo_comm.serializing_allowed_list (a class defined in "
                 f"{cls.__module__} would travel as code, which is never accepted)")
    else:
        configured = ("" if allowlist is None else
                      " (the configured list does not admit it)")
        allow = (f"or allow the class by name, for trusted peers only: cross_silo_comm."
                 f"serializing_allowed_list [{name!r}] in every party{configured}")
    return (
        f"refusing to send a value of type {name}{where}: rayfed sends only data, and the "
        f"codec does not carry this type. Make it cross by sending supported types "
        f"({_SUPPORTED}); or by registering a codec in every party: "
        f"fed.register_codec({cls.__qualname__}, encode=..., decode=...); {allow}."
    )


# ---- receiver ----------------------------------------------------------------------------


def _unpickler(policy: WirePolicy):
    if policy.allowlist is None:
        return None
    allowlist = policy.allowlist
    return lambda data, buffers: serialization.loads(data, buffers, allowlist)


def check(fmt: str, parts: list, policy: WirePolicy) -> None:
    """Refuse (FedSerializationError) a value this party would not build; builds nothing
    but the pickled parts of an opt-in value (through the allowlist)."""
    if fmt not in FORMATS:
        raise FedSerializationError(f"unknown value format {str(fmt)[:40]!r}")
    if fmt == PICKLE and policy.allowlist is None:
        raise FedSerializationError(pickle_refused_text())
    unpickle = _unpickler(policy) if fmt == PICKLE else None
    codec.check(parts[0], parts[1:], unpickle=unpickle)


def pickle_refused_text() -> str:
    return ("a value with pickled parts arrived, and this party accepts none: it configures "
            "no cross_silo_comm.serializing_allowed_list")


def build(fmt: str, parts: list, policy: WirePolicy) -> Any:
    """The value itself; arrays are views on `parts`."""
    unpickle = _unpickler(policy) if fmt == PICKLE else None
    if fmt == PICKLE and unpickle is None:
        raise FedSerializationError(pickle_refused_text())
    return codec.decode(parts[0], parts[1:], options=policy.options, codecs=policy.codecs,
                        unpickle=unpickle)


def _as_picklable(part: Any) -> Any:
    """A receive buffer Ray can store: bytes/bytearray as is, memory maps copied."""
    if isinstance(part, (bytes, bytearray)):
        return part
    return bytearray(part)


def _rebuild(fmt: str, parts: list, policy: WirePolicy) -> Any:
    return build(fmt, parts, policy)


class Received:
    """What a barrier returns for a value that is not in the object store: its parts.
    Unpickling it (in the consumer's worker, or in fed.get) builds the value."""

    __slots__ = ("fmt", "parts", "policy")

    def __init__(self, fmt: str, parts: list, policy: WirePolicy) -> None:
        self.fmt, self.parts, self.policy = fmt, parts, policy

    def claimed(self, policy: WirePolicy) -> Received:
        """This value under the policy its barrier runs with (codecs registered since)."""
        return Received(self.fmt, self.parts, policy)

    def __reduce__(self):
        return (_rebuild, (self.fmt, [_as_picklable(p) for p in self.parts], self.policy))
