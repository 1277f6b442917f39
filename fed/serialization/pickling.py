"""Pickling a value for the opt-in pickle path: protocol 5, buffers out of band."""
from __future__ import annotations

import io
import pickle
from collections import ChainMap
from typing import Any

# numpy is a hard dependency. Imported here, at module import, never looked up
# lazily: a lookup in sys.modules can return a module another thread is still
# importing (half-built, without ``typecodes`` or ``ndarray``).
import numpy as np
from ray import cloudpickle

from fed.errors import FedSerializationError

#: Pickle protocol used on the wire (5 = out-of-band buffers, PEP 574).
PICKLE_PROTOCOL = 5

def _reduce_dtype(dtype: Any) -> tuple:
    """Pickle a plain numpy dtype as ``numpy.dtype("<f8")``: no state, no BUILD.

    numpy's own reduce adds a state (BUILD opcode); a receiver must check such
    states in the slow pure-Python unpickler. Plain dtypes (no fields, subarray
    or metadata) rebuild exactly from their ``str``, which keeps the common
    "dict of arrays" payload on the fast C unpickler.
    """
    if dtype.fields is None and dtype.subdtype is None and dtype.metadata is None:
        text = dtype.str
        try:
            rebuilt = np.dtype(text)
        except (TypeError, ValueError):
            rebuilt = None
        if rebuilt is not None and rebuilt == dtype and rebuilt.str == text:
            return (np.dtype, (text,))
    return dtype.__reduce__()


def _make_pickler_class() -> Any:
    """cloudpickle's Pickler plus the dtype reducer; built once, at import."""
    table = {type(np.dtype(code)): _reduce_dtype for code in np.typecodes["All"]}
    return type(
        "_FedPickler",
        (cloudpickle.Pickler,),
        # One flat ChainMap (the C pickler looks it up for every object): ours first,
        # then cloudpickle's and copyreg's live tables.
        {"dispatch_table": ChainMap(table, *cloudpickle.Pickler.dispatch_table.maps)},
    )


_FedPickler = _make_pickler_class()


def _type_name(value: object) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _raw_view(buffer: pickle.PickleBuffer) -> memoryview:
    """1-D unsigned-byte view of an out-of-band buffer; zero-copy when contiguous."""
    try:
        return buffer.raw()
    except BufferError:
        # Neither C- nor Fortran-contiguous: one copy, in C order.
        return memoryview(memoryview(buffer).tobytes())


def dumps(value: object) -> tuple[bytes, list[memoryview]]:
    """Serialize ``value`` for another party: ``(pickle_bytes, buffers)``.

    Pickle protocol 5 through cloudpickle (so functions and classes from
    ``__main__`` serialize, though the receiver's default allowlist refuses code),
    with out-of-band buffers: contiguous numpy arrays are not copied; each buffer
    is a 1-D unsigned-byte memoryview on the original memory (non-contiguous
    arrays are copied into the pickle). Plain dtypes are written as
    ``numpy.dtype("<f8")`` so the receiver can use its fast path. Keep ``value``
    unchanged until the buffers have been sent. Raises
    :class:`~fed.errors.FedSerializationError` when the value cannot be pickled.
    """
    out_of_band: list[pickle.PickleBuffer] = []
    try:
        with io.BytesIO() as file:
            _FedPickler(
                file, protocol=PICKLE_PROTOCOL, buffer_callback=out_of_band.append
            ).dump(value)
            data = file.getvalue()
    except Exception as exc:  # PicklingError, TypeError, RecursionError, ...
        raise FedSerializationError(
            f"cannot serialize a value of type {_type_name(value)} for another party: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return data, [_raw_view(b) for b in out_of_band]

