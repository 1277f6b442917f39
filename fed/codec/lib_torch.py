"""PyTorch tensors as data: a dtype name from a fixed list plus one numpy array.

Sender: the tensor is detached, moved to CPU if it lives elsewhere (a copy the
device makes necessary), made contiguous (a copy only for a non-contiguous tensor)
and viewed as numpy without copying. dtypes numpy lacks (bfloat16, complex32,
float8 and float4 variants) cross as an unsigned-integer view of the same bytes.
Receiver: `torch.from_numpy` over the received array (shared memory, no copy), the
view back to the sent dtype, then placement on `CodecOptions.torch_device` (a copy
unless that is "cpu"). A large value is built over the party's object store, whose
memory is read-only by contract (numpy arrays there are flagged so): torch has no
read-only tensors, so it warns once, and such a tensor must be cloned before it is
modified in place. `requires_grad` crosses as a flag on a detached tensor: the
autograd graph stays with the sender. `nn.Parameter` stays a Parameter.

Nothing here imports torch until a tensor is encoded or decoded.
"""
from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from fed.codec import libcheck
from fed.codec.types import CodecOptions, LibraryCodec

TAG = "torch.Tensor"

# The dtypes that cross: torch name -> numpy dtype of the array carrying the bytes.
# Listed names absent from the installed torch are skipped.
_CARRIERS: tuple[tuple[str, str], ...] = (
    ("bool", "bool"),
    ("uint8", "uint8"), ("uint16", "uint16"), ("uint32", "uint32"), ("uint64", "uint64"),
    ("int8", "int8"), ("int16", "int16"), ("int32", "int32"), ("int64", "int64"),
    ("float16", "float16"), ("float32", "float32"), ("float64", "float64"),
    ("complex64", "complex64"), ("complex128", "complex128"),
    ("bfloat16", "uint16"), ("complex32", "uint32"),
    ("float8_e4m3fn", "uint8"), ("float8_e4m3fnuz", "uint8"), ("float8_e5m2", "uint8"),
    ("float8_e5m2fnuz", "uint8"), ("float8_e8m0fnu", "uint8"), ("float4_e2m1fn_x2", "uint8"),
)

_FIELDS = {"dtype": str, "data": np.ndarray, "requires_grad": bool, "parameter": bool}


@cache
def _dtypes() -> dict[str, tuple[Any, Any, np.dtype]]:
    """name -> (torch dtype, torch dtype of the carrier, numpy carrier), for this torch."""
    import torch

    table = {}
    for name, carrier in _CARRIERS:
        dtype = getattr(torch, name, None)  # names from the fixed list above only
        if isinstance(dtype, torch.dtype):
            table[name] = (dtype, getattr(torch, carrier), np.dtype(carrier))
    return table


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _plain_tensor(tensor: Any) -> Any:
    """The tensor as a CPU, contiguous, strided tensor without autograd history."""
    import torch

    kind = _type_name(tensor)
    if tensor.layout != torch.strided:
        raise libcheck.unsupported(kind, f"layout {tensor.layout} is not supported; "
                                         "send tensor.to_dense() or its index and value tensors")
    if tensor.is_quantized or tensor.is_nested or tensor.is_meta:
        raise libcheck.unsupported(kind, "quantized, nested and meta tensors carry no plain "
                                         "data; send tensor.dequantize() or a dense tensor")
    plain = tensor.detach()
    if plain.device.type != "cpu":
        plain = plain.cpu()  # the only way to read device memory: a copy
    return plain.resolve_conj().resolve_neg().contiguous()  # copies only when needed


def encode_tensor(tensor: Any) -> dict:
    """A tensor or Parameter as {dtype, data, requires_grad, parameter}."""
    import torch

    name = str(tensor.dtype).removeprefix("torch.")
    table = _dtypes()
    if name not in table:
        raise libcheck.unsupported(_type_name(tensor), f"dtype {tensor.dtype} has no plain "
                                   f"form; supported: {', '.join(table)}")
    dtype, carrier, _ = table[name]
    plain = _plain_tensor(tensor)
    data = (plain if carrier == dtype else plain.view(carrier)).numpy()
    return {
        "dtype": name,
        "data": data,
        "requires_grad": bool(tensor.requires_grad),
        "parameter": isinstance(tensor, torch.nn.Parameter),
    }


def decode_tensor(plain: Any, options: CodecOptions) -> Any:
    """Rebuild the tensor over the received array and place it on the configured device."""
    import torch

    libcheck.record(TAG, plain, _FIELDS)
    name = libcheck.choice(TAG, plain["dtype"], _dtypes(), "dtype")
    dtype, carrier, numpy_carrier = _dtypes()[name]
    data = libcheck.array(TAG, plain["data"], "data", dtypes=(numpy_carrier,))
    tensor = torch.from_numpy(libcheck.in_place(data))  # no copy, even of read-only memory
    if carrier != dtype:
        tensor = tensor.view(dtype)
    if options.torch_device != "cpu":
        tensor = libcheck.build(TAG, f"placing it on {options.torch_device!r} "
                                     "(cross_silo_comm.tensor_device)",
                                tensor.to, options.torch_device)
    grad = plain["requires_grad"]
    if grad and not (dtype.is_floating_point or dtype.is_complex):
        raise libcheck.refuse(TAG, f"requires_grad is set on a {name} tensor")
    if plain["parameter"]:
        return libcheck.build(TAG, "nn.Parameter", torch.nn.Parameter, tensor, requires_grad=grad)
    return tensor.requires_grad_(grad) if grad else tensor


CODECS: tuple[LibraryCodec, ...] = (
    LibraryCodec(
        name=TAG,
        library="torch",
        type_names=("torch.Tensor", "torch.nn.parameter.Parameter"),
        encode=encode_tensor,
        decode=decode_tensor,
    ),
)
