"""A test-only library codec table (fractions.Fraction), built to the same contract as
fed/codec/lib_*.py, to prove the library table works without any real library."""
from __future__ import annotations

from typing import Any

from fed.codec.types import CodecOptions, LibraryCodec
from fed.errors import FedSerializationError


def encode_fraction(value: Any) -> Any:
    return [value.numerator, value.denominator]


def decode_fraction(plain: Any, options: CodecOptions) -> Any:
    import fractions

    if type(plain) is not list or len(plain) != 2 or not all(type(n) is int for n in plain):
        raise FedSerializationError("fractions.Fraction: expected [numerator, denominator]")
    if plain[1] == 0:
        raise FedSerializationError("fractions.Fraction: a zero denominator")
    return fractions.Fraction(plain[0], plain[1])


def decode_missing(plain: Any, options: CodecOptions) -> Any:
    raise AssertionError("never called: its library is not installed")


CODECS = (
    LibraryCodec(name="fractions.Fraction", library="fractions",
                 type_names=("fractions.Fraction",), encode=encode_fraction,
                 decode=decode_fraction),
    LibraryCodec(name="nolib.Thing", library="no_such_library_for_rayfed_tests",
                 type_names=("decimal.Decimal",), encode=str, decode=decode_missing),
)
