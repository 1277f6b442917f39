"""Checks shared by the library codecs (lib_torch, lib_pandas, lib_scipy, lib_jax).

A library codec's decode function receives plain values that a peer wrote. These
helpers check their types, shapes and ranges before any library constructor sees
them, and turn every problem into a `FedSerializationError` naming the wire tag, so
a forged header is refused instead of reaching library code that trusts its input.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from fed.errors import FedSerializationError

TypeSpec = type | tuple[type, ...]

#: The largest extent accepted in a declared shape (fits an int64 with room to multiply).
MAX_EXTENT = 2**62

INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def refuse(tag: str, problem: str) -> FedSerializationError:
    """The error a decode function raises: the tag names which codec refused."""
    return FedSerializationError(f"cannot decode a received {tag}: {problem}")


def unsupported(type_name: str, problem: str) -> FedSerializationError:
    """The error an encode function raises for a value it cannot represent."""
    return FedSerializationError(f"cannot send a {type_name}: {problem}")


def _fits(value: Any, types: TypeSpec) -> bool:
    if types is object:
        return True  # checked by the caller (e.g. a pandas name)
    types = types if isinstance(types, tuple) else (types,)
    if np.ndarray in types and isinstance(value, np.ndarray):
        return True
    return type(value) in types  # exact: a bool is not an int here


def _type_names(types: TypeSpec) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def record(tag: str, plain: Any, spec: Mapping[str, TypeSpec]) -> dict:
    """`plain` must be a dict with exactly the keys of `spec`, each of its type(s)."""
    if type(plain) is not dict:
        raise refuse(tag, f"expected a dict, got {type(plain).__name__}")
    if set(plain) != set(spec):
        missing = sorted(map(str, set(spec) - set(plain)))
        extra = sorted(map(str, set(plain) - set(spec)))
        raise refuse(tag, f"fields differ from the format (missing {missing}, unknown {extra})")
    for key, types in spec.items():
        if not _fits(plain[key], types):
            raise refuse(tag, f"field {key!r} must be {_type_names(types)}, "
                              f"got {type(plain[key]).__name__}")
    return plain


def choice(tag: str, value: str, allowed: Iterable[str], what: str) -> str:
    """`value` must be one of a fixed set of names."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise refuse(tag, f"unknown {what} {value!r} (known: {', '.join(allowed)})")
    return value


def sequence(tag: str, value: Any, what: str, length: int | None = None) -> list:
    """A list or tuple, of `length` items when given."""
    if type(value) not in (list, tuple):
        raise refuse(tag, f"{what} must be a list, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise refuse(tag, f"{what} has {len(value)} items, expected {length}")
    return list(value)


def extent(tag: str, value: Any, what: str) -> int:
    """A non-negative int that a shape or a length may hold."""
    if type(value) is not int or not 0 <= value <= MAX_EXTENT:
        raise refuse(tag, f"{what} must be an int in [0, 2**62], got {value!r}")
    return value


def shape(tag: str, value: Any, ndims: Iterable[int]) -> tuple[int, ...]:
    """A shape of one of the allowed numbers of dimensions."""
    dims = sequence(tag, value, "shape")
    ndims = tuple(ndims)
    if len(dims) not in ndims:
        raise refuse(tag, f"shape has {len(dims)} dimensions, expected {ndims}")
    return tuple(extent(tag, d, "a shape extent") for d in dims)


def array(tag: str, value: Any, what: str, *, ndim: int | None = None,
          dtypes: Iterable[np.dtype] | None = None, kinds: str | None = None) -> np.ndarray:
    """A numpy array of native byte order, of the given rank, dtypes or dtype kinds."""
    if not isinstance(value, np.ndarray):
        raise refuse(tag, f"{what} must be an array, got {type(value).__name__}")
    dtype = value.dtype
    if dtype.hasobject or not dtype.isnative:
        raise refuse(tag, f"{what} has dtype {dtype.str}, which is not plain native data")
    if ndim is not None and value.ndim != ndim:
        raise refuse(tag, f"{what} has {value.ndim} dimensions, expected {ndim}")
    if dtypes is not None and dtype not in tuple(dtypes):
        raise refuse(tag, f"{what} has dtype {dtype}, expected one of "
                          f"{', '.join(map(str, dtypes))}")
    if kinds is not None and dtype.kind not in kinds:
        raise refuse(tag, f"{what} has dtype {dtype}, which this format does not carry")
    return value


def index_array(tag: str, value: Any, what: str) -> np.ndarray:
    """A one-dimensional int32 or int64 array (indices, offsets, codes)."""
    return array(tag, value, what, ndim=1, dtypes=INDEX_DTYPES)


def within(tag: str, values: np.ndarray, low: int, high: int, what: str) -> None:
    """Every value in [low, high): checked before a library indexes with them."""
    if values.size and (int(values.min()) < low or int(values.max()) >= high):
        raise refuse(tag, f"{what} out of range [{low}, {high})")


def nondecreasing(tag: str, values: np.ndarray, what: str) -> None:
    if values.size > 1 and bool(np.any(values[1:] < values[:-1])):
        raise refuse(tag, f"{what} is not non-decreasing")


def build(tag: str, what: str, make: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a library constructor; whatever it rejects becomes a typed refusal."""
    try:
        return make(*args, **kwargs)
    except FedSerializationError:
        raise
    except Exception as exc:  # the library's own validation of data already checked here
        raise refuse(tag, f"{what}: {type(exc).__name__}: {exc}") from exc


def in_place(values: np.ndarray) -> np.ndarray:
    """The received array itself when it is C-contiguous and aligned (as the core
    delivers it); a copy otherwise, so a library never wraps memory it cannot use."""
    return np.require(values, requirements=("C", "A"))
