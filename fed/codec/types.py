"""Types shared by the codec and the library codec table entries."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CodecOptions:
    torch_device: str = "cpu"     # where received tensors are placed (config: cross_silo_comm.tensor_device)


@dataclass(frozen=True)
class LibraryCodec:
    name: str
    library: str
    type_names: tuple[str, ...]
    encode: Callable[[Any], Any]
    decode: Callable[[Any, CodecOptions], Any]
