"""numpy states in a pickle, checked before numpy sees them (numpy trusts them)."""
from __future__ import annotations

from typing import Any

from fed.errors import FedSerializationError

_NPY_LIST_PICKLE = 0x02  # dtype flag: items pickled as a list of Python objects
_NPY_ALIGNED_STRUCT = 0x80
_NPY_MAXDIMS = 64


def _bad_numpy_state(what: str) -> FedSerializationError:
    return FedSerializationError(
        f"malformed pickle from another party: {what} is not one numpy produces (forged?)"
    )


def _dtype_from_state(np: Any, inst: Any, state: Any) -> Any:
    """Rebuild, with numpy's public constructors, the dtype a BUILD state describes.

    numpy's ``dtype.__setstate__`` trusts its input (a forged state segfaults
    numpy 2.4), so a state is applied only if it is exactly the state numpy
    produces for a dtype built this safe way.
    """
    if type(state) is not tuple or (state[:1], len(state)) not in (((3,), 8), ((4,), 9)):
        raise _bad_numpy_state("dtype state")
    endian, subarray, names, fields, elsize, _alignment, flags = state[1:8]
    metadata = state[8] if len(state) == 9 else None
    if type(endian) is not str or endian not in ("<", ">", "|", "=") or type(flags) is not int:
        raise _bad_numpy_state("dtype state")
    if subarray is not None:
        base, shape = subarray if type(subarray) is tuple and len(subarray) == 2 else (None, None)
        if not isinstance(base, np.dtype) or type(shape) is not tuple or not all(
            type(n) is int and 0 <= n for n in shape
        ):
            raise _bad_numpy_state("dtype subarray")
        candidate = np.dtype((base, shape))
    elif names is not None:
        if type(names) is not tuple or type(fields) is not dict or type(elsize) is not int:
            raise _bad_numpy_state("structured dtype")
        formats, offsets, titles = [], [], []
        for field in names:
            spec = fields.get(field) if type(field) is str else None
            if (
                type(spec) is not tuple
                or len(spec) not in (2, 3)
                or not isinstance(spec[0], np.dtype)
                or type(spec[1]) is not int
            ):
                raise _bad_numpy_state("structured dtype field")
            formats.append(spec[0])
            offsets.append(spec[1])
            titles.append(spec[2] if len(spec) == 3 else None)
        candidate = np.dtype(
            {"names": list(names), "formats": formats, "offsets": offsets,
             "titles": titles, "itemsize": elsize},
            align=bool(flags & _NPY_ALIGNED_STRUCT),
        )
    else:
        candidate = inst
        if inst.kind in ("m", "M") and len(state) == 9:
            pair = type(metadata) is tuple and len(metadata) == 2
            user_md, unit_md = metadata if pair else (None, None)
            if type(unit_md) is not tuple or len(unit_md) != 4 or type(unit_md[0]) is not bytes:
                raise _bad_numpy_state("datetime dtype")
            unit, count = unit_md[0].decode("ascii"), unit_md[1]
            if type(count) is not int or not unit.isalpha():
                raise _bad_numpy_state("datetime dtype")
            unit_text = "" if unit == "generic" else f"[{count}{unit}]"
            candidate = np.dtype(f"{inst.kind}8{unit_text}")
            metadata = user_md
        if endian in ("<", ">"):
            candidate = candidate.newbyteorder(endian)
    if metadata is not None:
        if type(metadata) is not dict:
            raise _bad_numpy_state("dtype metadata")
        candidate = np.dtype(candidate, metadata=metadata)
    return candidate


def _check_array_state(np: Any, state: Any) -> None:
    """An ndarray BUILD state must be self-consistent (numpy trusts it)."""
    if type(state) is not tuple or len(state) != 5:
        raise _bad_numpy_state("array state")
    version, shape, dtype, is_fortran, raw = state
    if type(version) is not int or version != 1 or type(is_fortran) is not bool:
        raise _bad_numpy_state("array state")
    if type(shape) is not tuple or len(shape) > _NPY_MAXDIMS or not all(
        type(n) is int and n >= 0 for n in shape
    ):
        raise _bad_numpy_state("array shape")
    if not isinstance(dtype, np.dtype):
        raise _bad_numpy_state("array dtype")
    count = 1
    for n in shape:
        count *= n
    if dtype.flags & _NPY_LIST_PICKLE:
        if type(raw) is not list or len(raw) != count:
            raise _bad_numpy_state("object array data")
    elif type(raw) is not bytes or len(raw) != count * dtype.itemsize:
        raise _bad_numpy_state("array data")

