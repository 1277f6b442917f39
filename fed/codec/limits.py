"""Bounds on what a codec header may ask the decoder to build.

The sender checks the same bounds, so a value the receiver would refuse is refused
before it leaves. Each bound is far above what real values need and far below what
would exhaust a party (docs/security.md).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CodecLimits:
    max_depth: int = 100  # containers (and codec payloads) nested in one another
    max_items: int = 16_000_000  # header nodes in one value
    max_int_bytes: int = 64 * 1024  # a big int's two's-complement size
    max_header_bytes: int = 32 * 1024 * 1024  # the msgpack header itself
    max_buffers: int = 1_000_000  # out-of-band buffers of one value
    max_ndim: int = 64  # numpy's own limit
    max_dtype_fields: int = 4096  # fields of one structured dtype
    max_dtype_depth: int = 8  # structured dtypes nested in one another
    max_name_chars: int = 1024  # codec tags, field names


DEFAULT_LIMITS = CodecLimits()
