"""The node tags of a codec header. Stable forever: peers of different versions must
agree on them (docs/protocol.md lists each with its payload).

A header node is either a msgpack scalar (nil, bool, int within 64 bits, float64,
str, bin), which stands for itself, or a msgpack array whose first item is one of
these tags.
"""
from __future__ import annotations

LIST = 1
TUPLE = 2
DICT = 3
SET = 4
FROZENSET = 5
ORDERED_DICT = 6
BIG_INT = 7
COMPLEX = 8
BYTEARRAY = 9
BYTES_BUFFER = 10  # bytes carried out of band
STR_SURROGATES = 11  # a str that is not valid UTF-8 (lone surrogates)
NDARRAY = 20
NUMPY_SCALAR = 21
NUMPY_DTYPE = 22
NUMPY_TYPE = 23
ERROR_ENVELOPE = 30
LIBRARY = 40
USER = 41
PICKLE = 50  # only in values sent with format "pickle" (the opt-in)

NAMES = {
    LIST: "list", TUPLE: "tuple", DICT: "dict", SET: "set", FROZENSET: "frozenset",
    ORDERED_DICT: "OrderedDict", BIG_INT: "big int", COMPLEX: "complex",
    BYTEARRAY: "bytearray", BYTES_BUFFER: "bytes (out of band)",
    STR_SURROGATES: "str (surrogates)", NDARRAY: "numpy.ndarray",
    NUMPY_SCALAR: "numpy scalar", NUMPY_DTYPE: "numpy.dtype", NUMPY_TYPE: "numpy scalar type",
    ERROR_ENVELOPE: "error envelope", LIBRARY: "library value", USER: "user codec value",
    PICKLE: "pickled value (opt-in)",
}
