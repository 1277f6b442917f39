"""JAX arrays as data: a dtype name from a fixed list plus one numpy array.

Sender: `np.asarray` of the array (no copy for an array on the CPU; a copy from an
accelerator or of a sharded array, which must be gathered). The dtypes jax adds to
numpy (bfloat16, float8 and 4-bit types, from ml_dtypes) cross as unsigned-integer
views of the same bytes. Receiver: `jax.numpy.asarray` on the default device (jax
copies into its own buffer). Received 64-bit values follow jax's x64 setting: with
it off (jax's default) jax turns them into 32-bit ones, as for any numpy input.

Nothing here imports jax until an array is encoded or decoded.
"""
from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from fed.codec import libcheck
from fed.codec.types import CodecOptions, LibraryCodec

TAG = "jax.Array"

_NATIVE = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64", "complex64", "complex128")
#: jax's own dtypes -> the unsigned integer type of the same size that carries them.
_EXTENDED = (
    ("bfloat16", "uint16"), ("float8_e4m3fn", "uint8"), ("float8_e4m3fnuz", "uint8"),
    ("float8_e5m2", "uint8"), ("float8_e5m2fnuz", "uint8"), ("float8_e4m3b11fnuz", "uint8"),
    ("float8_e3m4", "uint8"), ("float8_e4m3", "uint8"), ("float8_e8m0fnu", "uint8"),
    ("float4_e2m1fn", "uint8"), ("int4", "uint8"), ("uint4", "uint8"), ("int2", "uint8"),
    ("uint2", "uint8"),
)

_FIELDS = {"dtype": str, "data": np.ndarray}


@cache
def _dtypes() -> dict[str, tuple[np.dtype, np.dtype]]:
    """name -> (numpy dtype of the value, numpy dtype that carries it), for this jax."""
    import jax.numpy as jnp

    table = {name: (np.dtype(name), np.dtype(name)) for name in _NATIVE}
    for name, carrier in _EXTENDED:
        scalar = getattr(jnp, name, None)  # names from the fixed list above only
        if scalar is not None and np.dtype(scalar).itemsize == np.dtype(carrier).itemsize:
            table[name] = (np.dtype(scalar), np.dtype(carrier))
    return table


def encode_array(value: Any) -> dict:
    """A jax array as {dtype, data}."""
    name = np.dtype(value.dtype).name
    table = _dtypes()
    if name not in table:
        raise libcheck.unsupported("jax.Array", f"dtype {name} has no plain form; supported: "
                                   f"{', '.join(table)}")
    try:
        data = np.asarray(value)
    except Exception as exc:  # e.g. an array not addressable from this process
        raise libcheck.unsupported("jax.Array", f"cannot read it as numpy: {exc}") from exc
    dtype, carrier = table[name]
    return {"dtype": name, "data": data if dtype == carrier else data.view(carrier)}


def decode_array(plain: Any, options: CodecOptions) -> Any:
    """Rebuild the jax array from the received numpy array."""
    import jax.numpy as jnp

    libcheck.record(TAG, plain, _FIELDS)
    name = libcheck.choice(TAG, plain["dtype"], _dtypes(), "dtype")
    dtype, carrier = _dtypes()[name]
    data = libcheck.array(TAG, plain["data"], "data", dtypes=(carrier,))
    return libcheck.build(TAG, "jax array", jnp.asarray,
                          data if dtype == carrier else data.view(dtype))


CODECS: tuple[LibraryCodec, ...] = (
    LibraryCodec(
        name=TAG,
        library="jax",
        # the concrete array class, named as each jaxlib release has named it
        type_names=("jaxlib._jax.ArrayImpl", "jaxlib.xla_extension.ArrayImpl"),
        encode=encode_array,
        decode=decode_array,
    ),
)
