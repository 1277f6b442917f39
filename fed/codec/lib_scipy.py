"""scipy.sparse matrices and arrays as data: a format name, a shape and component arrays.

csr, csc and bsr cross as (data, indices, indptr), coo as (data, coords), dia as
(data, offsets), each array without a copy on the sender. lil and dok hold Python
lists and dicts, so they cross as csr and coo (the conversion is their one copy) and
are rebuilt in their own format on the receiver.

The receiver checks every index against the shape, the lengths against each other
and indptr for monotony before scipy sees the arrays: scipy's compiled routines trust
them, so a forged header must not reach them. The constructors get the received
arrays with copy=False, so the sparse value shares their memory.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fed.codec import libcheck
from fed.codec.types import CodecOptions, LibraryCodec

TAG = "scipy.sparse"

FORMATS = ("csr", "csc", "coo", "bsr", "dia", "lil", "dok")
#: How each format crosses (lil and dok go through csr and coo).
_CARRIED = {"csr": "csr", "csc": "csc", "coo": "coo", "bsr": "bsr", "dia": "dia",
            "lil": "csr", "dok": "coo"}
_DATA_KINDS = "biufc"

_HEAD = {"format": str, "array": bool, "shape": (list, tuple), "data": np.ndarray}
_COMPRESSED = {**_HEAD, "indices": np.ndarray, "indptr": np.ndarray}
_BLOCKED = {**_COMPRESSED, "blocksize": (list, tuple)}
_COORDINATE = {**_HEAD, "coords": (list, tuple)}
_DIAGONAL = {**_HEAD, "offsets": np.ndarray}
_FIELDS = {"csr": _COMPRESSED, "csc": _COMPRESSED, "bsr": _BLOCKED, "coo": _COORDINATE,
           "dia": _DIAGONAL}


def _class_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def encode_sparse(value: Any) -> dict:
    """{format, array, shape, data, ...the format's component arrays}."""
    import scipy.sparse as sp

    fmt = value.format
    if fmt not in FORMATS:
        raise libcheck.unsupported(_class_name(value), f"sparse format {fmt!r}")
    carried = value.asformat(_CARRIED[fmt])  # lil -> csr, dok -> coo; the others as they are
    if carried.data.dtype.kind not in _DATA_KINDS:
        raise libcheck.unsupported(_class_name(value), f"data dtype {carried.data.dtype}")
    plain = {"format": fmt, "array": isinstance(value, sp.sparray),
             "shape": list(value.shape), "data": carried.data}
    if fmt == "dia":
        plain["offsets"] = carried.offsets
    elif _CARRIED[fmt] == "coo":
        plain["coords"] = list(carried.coords)
    else:
        plain.update(indices=carried.indices, indptr=carried.indptr)
        if fmt == "bsr":
            plain["blocksize"] = list(carried.blocksize)
    return plain


def _data(plain: dict, ndim: int) -> np.ndarray:
    return libcheck.array(TAG, plain["data"], "data", ndim=ndim, kinds=_DATA_KINDS)


def _compressed_parts(plain: dict, major: int, minor: int) -> tuple:
    """(data, indices, indptr) checked for `major` rows (csr) or columns (csc) of
    `minor` entries each; data may have leading extra dimensions (bsr blocks)."""
    indices = libcheck.index_array(TAG, plain["indices"], "indices")
    indptr = libcheck.index_array(TAG, plain["indptr"], "indptr")
    data = plain["data"]
    if len(indptr) != major + 1:
        raise libcheck.refuse(TAG, f"indptr has {len(indptr)} entries, expected {major + 1}")
    if len(data) != len(indices):
        raise libcheck.refuse(TAG, f"{len(data)} values for {len(indices)} indices")
    if int(indptr[0]) != 0 or int(indptr[-1]) != len(indices):
        raise libcheck.refuse(TAG, f"indptr must run from 0 to {len(indices)}")
    libcheck.nondecreasing(TAG, indptr, "indptr")
    libcheck.within(TAG, indices, 0, minor, "indices")
    return data, indices, indptr


def _csr(plain: dict, shape: tuple, ctor: Callable) -> Any:
    rows = shape[0] if len(shape) == 2 else 1  # a 1-d csr array is one row
    parts = _compressed_parts({**plain, "data": _data(plain, 1)}, rows, shape[-1])
    return libcheck.build(TAG, "csr", ctor, parts, shape=shape, copy=False)


def _csc(plain: dict, shape: tuple, ctor: Callable) -> Any:
    parts = _compressed_parts({**plain, "data": _data(plain, 1)}, shape[1], shape[0])
    return libcheck.build(TAG, "csc", ctor, parts, shape=shape, copy=False)


def _bsr(plain: dict, shape: tuple, ctor: Callable) -> Any:
    blocks = libcheck.shape(TAG, plain["blocksize"], (2,))
    data = _data(plain, 3)
    if 0 in blocks or shape[0] % blocks[0] or shape[1] % blocks[1]:
        raise libcheck.refuse(TAG, f"blocksize {blocks} does not tile shape {shape}")
    if data.shape[1:] != blocks:
        raise libcheck.refuse(TAG, f"blocks of shape {data.shape[1:]}, blocksize {blocks}")
    parts = _compressed_parts(plain, shape[0] // blocks[0], shape[1] // blocks[1])
    return libcheck.build(TAG, "bsr", ctor, parts, shape=shape, blocksize=blocks, copy=False)


def _coo(plain: dict, shape: tuple, ctor: Callable) -> Any:
    data = _data(plain, 1)
    coords = libcheck.sequence(TAG, plain["coords"], "coords", length=len(shape))
    for axis, (coord, extent) in enumerate(zip(coords, shape)):
        coord = libcheck.index_array(TAG, coord, f"coords[{axis}]")
        if len(coord) != len(data):
            raise libcheck.refuse(TAG, f"coords[{axis}] has {len(coord)} entries for "
                                       f"{len(data)} values")
        libcheck.within(TAG, coord, 0, extent, f"coords[{axis}]")
        coords[axis] = coord
    return libcheck.build(TAG, "coo", ctor, (data, tuple(coords)), shape=shape, copy=False)


def _dia(plain: dict, shape: tuple, ctor: Callable) -> Any:
    data = _data(plain, 2)
    offsets = libcheck.index_array(TAG, plain["offsets"], "offsets")
    if len(offsets) != len(data):
        raise libcheck.refuse(TAG, f"{len(offsets)} offsets for {len(data)} diagonals")
    libcheck.within(TAG, offsets, -max(shape[0] - 1, 0), max(shape[1], 1), "offsets")
    if len(np.unique(offsets)) != len(offsets):
        raise libcheck.refuse(TAG, "offsets repeat a diagonal")
    return libcheck.build(TAG, "dia", ctor, (data, offsets), shape=shape, copy=False)


_BUILDERS = {"csr": _csr, "csc": _csc, "bsr": _bsr, "coo": _coo, "dia": _dia}


def _ndims(fmt: str, is_array: bool) -> tuple[int, ...]:
    """The numbers of dimensions scipy accepts: matrices are 2-d, some arrays are not."""
    if not is_array:
        return (2,)
    return {"csr": (1, 2), "dok": (1, 2), "coo": tuple(range(1, 65))}.get(fmt, (2,))


def _constructor(carried: str, is_array: bool) -> Callable:
    import scipy.sparse as sp

    classes = {"csr": (sp.csr_matrix, sp.csr_array), "csc": (sp.csc_matrix, sp.csc_array),
               "coo": (sp.coo_matrix, sp.coo_array), "bsr": (sp.bsr_matrix, sp.bsr_array),
               "dia": (sp.dia_matrix, sp.dia_array)}
    return classes[carried][is_array]


def decode_sparse(plain: Any, options: CodecOptions) -> Any:
    """Check the components against the shape, then build the sparse value over them."""
    if type(plain) is not dict or type(plain.get("format")) is not str:
        raise libcheck.refuse(TAG, "expected a dict naming its sparse format")
    fmt = libcheck.choice(TAG, plain["format"], FORMATS, "format")
    carried = _CARRIED[fmt]
    libcheck.record(TAG, plain, _FIELDS[carried])
    shape = libcheck.shape(TAG, plain["shape"], _ndims(fmt, plain["array"]))
    value = _BUILDERS[carried](plain, shape, _constructor(carried, plain["array"]))
    return value if carried == fmt else libcheck.build(TAG, fmt, value.asformat, fmt)


CODECS: tuple[LibraryCodec, ...] = (
    LibraryCodec(
        name=TAG,
        library="scipy",
        type_names=tuple(f"scipy.sparse._{fmt}.{fmt}_{kind}"
                         for fmt in FORMATS for kind in ("matrix", "array")),
        encode=encode_sparse,
        decode=decode_sparse,
    ),
)
