"""NumPy arrays, scalars and dtypes as data: a dtype description, a shape, raw bytes.

A dtype crosses as a *description* built from a fixed grammar (docs/protocol.md):
a simple dtype string such as ``"<f8"``, ``"|S5"`` or ``"<M8[ns]"`` that a regular
expression admits before numpy parses it, a structured dtype as
``["struct", [[name, description, offset], ...], itemsize, aligned]``, or a subarray as
``["sub", description, shape]``. Object dtypes (pointers) and numpy's variable-width
``StringDType`` cannot be described as data and are refused on the sender.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from fed.codec.limits import CodecLimits
from fed.errors import FedSerializationError

_UNITS = "Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as"
_SIMPLE = re.compile(
    r"[<>|=]?(?:b1|[iu][1248]|f(?:2|4|8|12|16)|c(?:8|16|24|32)|[SUV][1-9][0-9]{0,9}"
    rf"|[mM]8(?:\[(?:[1-9][0-9]{{0,8}})?(?:{_UNITS})\])?)"
)
_MAX_DIM = 1 << 62


def _bad(what: str) -> FedSerializationError:
    return FedSerializationError(f"malformed numpy value from another party: {what}")


def describe_dtype(dtype: np.dtype, depth: int = 0) -> Any:
    """The description of `dtype` (sender side), or FedSerializationError saying why not."""
    if depth > 8:
        raise FedSerializationError(f"numpy dtype {dtype} is nested too deeply to send")
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return ["sub", describe_dtype(base, depth + 1), list(shape)]
    if dtype.names is not None:
        if len(dtype.fields) != len(dtype.names):
            raise FedSerializationError(
                f"numpy dtype {dtype} has field titles, which cannot be sent; drop the titles")
        fields = [[name, describe_dtype(dtype.fields[name][0], depth + 1), dtype.fields[name][1]]
                  for name in dtype.names]
        return ["struct", fields, dtype.itemsize, dtype.isalignedstruct]
    if dtype.kind == "T":
        raise FedSerializationError(
            f"numpy's variable-width {dtype} cannot cross as data; convert the array with "
            ".astype(str) (fixed-width unicode) first")
    if dtype.hasobject or dtype.kind == "O":
        raise FedSerializationError(
            f"numpy arrays of dtype {dtype} hold Python objects (pointers), which cannot cross "
            "as data; convert them to a numeric, string or bytes dtype first")
    text = dtype.str
    if dtype.itemsize == 0 or not _SIMPLE.fullmatch(text):
        raise FedSerializationError(
            f"numpy dtype {dtype} cannot be sent as data (only fixed-width numeric, bool, "
            "datetime64, timedelta64, bytes, str and void dtypes, and structures of them)")
    return text


def dtype_from_description(desc: Any, limits: CodecLimits, depth: int = 0) -> np.dtype:
    """The dtype a description names (receiver side); nothing else is parsed."""
    if depth > limits.max_dtype_depth:
        raise _bad("dtype description nested too deeply")
    if type(desc) is str:
        if not _SIMPLE.fullmatch(desc):
            raise _bad(f"dtype {desc[:40]!r} is not one rayfed sends")
        return np.dtype(desc)
    if type(desc) is not list or not desc:
        raise _bad("dtype description is neither a string nor a list")
    if desc[0] == "sub" and len(desc) == 3:
        base = dtype_from_description(desc[1], limits, depth + 1)
        return np.dtype((base, _shape(desc[2], limits)))
    if desc[0] == "struct" and len(desc) == 4 and type(desc[3]) is bool:
        return _struct_dtype(desc[1], desc[2], desc[3], limits, depth)
    raise _bad("unknown dtype description")


def _struct_dtype(fields: Any, itemsize: Any, aligned: bool, limits: CodecLimits,
                  depth: int) -> np.dtype:
    if type(fields) is not list or len(fields) > limits.max_dtype_fields:
        raise _bad("structured dtype fields")
    if type(itemsize) is not int or not 0 < itemsize <= _MAX_DIM:
        raise _bad("structured dtype item size")
    names, formats, offsets = [], [], []
    for field in fields:
        if type(field) is not list or len(field) != 3:
            raise _bad("structured dtype field")
        name, sub, offset = field
        if type(name) is not str or not 0 < len(name) <= limits.max_name_chars:
            raise _bad("structured dtype field name")
        if type(offset) is not int or not 0 <= offset < itemsize:
            raise _bad("structured dtype field offset")
        names.append(name)
        formats.append(dtype_from_description(sub, limits, depth + 1))
        offsets.append(offset)
    try:
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": itemsize}, align=aligned)
    except (TypeError, ValueError) as exc:
        raise _bad(f"structured dtype: {exc}") from None


def _shape(shape: Any, limits: CodecLimits) -> tuple[int, ...]:
    if type(shape) is not list or len(shape) > limits.max_ndim:
        raise _bad("shape")
    for n in shape:
        if type(n) is not int or not 0 <= n < _MAX_DIM:
            raise _bad("shape")
    return tuple(shape)


def _flat_bytes(array: np.ndarray) -> np.ndarray:
    """The array's memory as a 1-D uint8 array (a view: `array` is contiguous)."""
    flat = array.T if not array.flags.c_contiguous else array
    return flat.reshape(-1).view(np.uint8)


def encode_array(array: np.ndarray, buffers: list) -> list:
    """[desc, shape, order]; the data is appended to `buffers` (no copy if contiguous)."""
    desc = describe_dtype(array.dtype)
    if array.flags.c_contiguous:
        order = "C"
    elif array.flags.f_contiguous:
        order = "F"
    else:  # strided: one copy, as pickle makes
        array, order = np.ascontiguousarray(array), "C"
    buffers.append(memoryview(_flat_bytes(array)))
    return [desc, list(array.shape), order]


def array_nbytes(desc: Any, shape: Any, order: Any, limits: CodecLimits) -> tuple[np.dtype, tuple]:
    """Validate an array node's fields; return its dtype and shape."""
    dtype = dtype_from_description(desc, limits)
    if order not in ("C", "F"):
        raise _bad("array order")
    return dtype, _shape(shape, limits)


def expected_size(dtype: np.dtype, shape: tuple) -> int:
    count = 1
    for n in shape:
        count *= n
    return count * dtype.itemsize


def decode_array(dtype: np.dtype, shape: tuple, order: str, buffer: Any) -> np.ndarray:
    """An array over `buffer` itself (writable if the buffer is)."""
    if expected_size(dtype, shape) == 0:
        return np.zeros(shape, dtype=dtype, order=order)
    flat = np.frombuffer(buffer, dtype=np.uint8).view(dtype)
    if order == "F":
        return flat.reshape(shape[::-1]).T
    return flat.reshape(shape)


def encode_scalar(value: np.generic) -> list:
    array = np.asarray(value)
    if array.dtype.itemsize == 0:  # an empty np.str_ / np.bytes_ is typed U0 / S0
        array = array.astype(array.dtype.kind + "1")
    return [describe_dtype(array.dtype), _flat_bytes(array).tobytes()]


def decode_scalar(desc: Any, raw: Any, limits: CodecLimits) -> np.generic:
    dtype = dtype_from_description(desc, limits)
    if type(raw) is not bytes or len(raw) != dtype.itemsize:
        raise _bad("scalar data does not match its dtype")
    return np.frombuffer(raw, dtype=np.uint8).view(dtype)[0]


def encode_scalar_type(value: type) -> Any:
    """A numpy scalar type such as ``np.float32`` (e.g. in a config dict)."""
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise FedSerializationError(f"numpy type {value.__qualname__} cannot be sent") from None
    if dtype.itemsize == 0:  # np.str_, np.bytes_, np.void: any width names the type
        dtype = np.dtype(dtype.kind + "1")
    desc = describe_dtype(dtype)
    if dtype.type is not value:
        raise FedSerializationError(f"numpy type {value.__qualname__} cannot be sent")
    return desc


def is_scalar_type(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, np.generic)


def checked(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a numpy constructor; its errors become FedSerializationError."""
    try:
        return fn(*args)
    except FedSerializationError:
        raise
    except Exception as exc:  # noqa: BLE001 (numpy raises SystemError for bad code points)
        raise _bad(f"{type(exc).__name__}: {exc}") from None
