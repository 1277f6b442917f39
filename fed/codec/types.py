"""The shapes shared by the codec core and the library codecs (docs/protocol.md).

A library codec (``fed/codec/lib_*.py``) is one table entry: which types it encodes
on the sender (by exact qualified name, so the library need not be imported to
look), how a value becomes *plain* data (core types only: see docs/protocol.md),
and how plain data becomes the value again on the receiver.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CodecOptions:
    """Receiver-side choices a decoder may honour."""

    torch_device: str = "cpu"  # where received tensors are placed (config: cross_silo_comm.tensor_device)


@dataclass(frozen=True)
class LibraryCodec:
    """One library type family on the wire, under a tag that is stable forever."""

    name: str
    library: str
    type_names: tuple[str, ...]
    encode: Callable[[Any], Any]
    decode: Callable[[Any, CodecOptions], Any]
