"""rayfed's default wire format: a typed codec (docs/protocol.md, docs/security.md).

A value crosses as a small msgpack header (a tree of tagged nodes) plus raw
out-of-band buffers (array memory, never copied on the sender). The receiver
rebuilds it from a fixed table of constructors that build only data.
"""
from __future__ import annotations

from fed.codec.decoder import check, decode
from fed.codec.encoder import Encoded, Unsupported, encode
from fed.codec.limits import DEFAULT_LIMITS, CodecLimits
from fed.codec.registry import UserCodec, UserCodecs, library_table, make_user_codec
from fed.codec.types import CodecOptions, LibraryCodec

__all__ = [
    "DEFAULT_LIMITS",
    "CodecLimits",
    "CodecOptions",
    "Encoded",
    "LibraryCodec",
    "Unsupported",
    "UserCodec",
    "UserCodecs",
    "check",
    "decode",
    "encode",
    "library_table",
    "make_user_codec",
]
