"""The typed codec (fed/codec) in one process: round trips of every core type and numpy
dtype, zero copy on both sides, the sender's refusals, the library table (a test-only
Fraction codec), user codecs and their mismatches, and a differential fuzz of the
decoder: whatever bytes arrive, the decoder raises FedSerializationError or returns
plain data, in bounded memory, and calls nothing."""
from __future__ import annotations

import collections
import dataclasses
import fractions
import math
import random
import resource
from typing import Any

import msgpack
import numpy as np
import pytest

from fed import codec
from fed.codec import CodecLimits, UserCodecs, make_user_codec, tags
from fed.codec.registry import LIBRARY_MODULES, _build_table
from fed.errors import FedConfigError, FedRemoteError, FedSerializationError

FRACTIONS = _build_table(["fraction_codec"])  # tests/fraction_codec.py


def roundtrip(value: Any, **kwargs: Any) -> Any:
    """Encode, check as the receiver does, decode over received (writable) buffers."""
    decode_kwargs = {k: v for k, v in kwargs.items() if k in ("codecs", "table")}
    encoded = codec.encode(value, **kwargs)
    received = [bytearray(b) for b in encoded.buffers]
    codec.check(encoded.header, received, table=kwargs.get("table"))
    return codec.decode(encoded.header, received, **decode_kwargs)


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (tuple is not list, NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.dtype.names:  # field by field: padding bytes carry nothing
            return all(same(a[name], b[name]) for name in a.dtype.names)
        return a.tobytes(order="A") == b.tobytes(order="A")
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


CORE_VALUES = [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**200), 10**1000,
    0.0, -0.0, 1.5, float("inf"), float("nan"), 1 + 2j, complex(0, -1), "", "héllo ✓",
    "lone \ud800 surrogate", b"", b"\x00\xff", b"x" * 100_000, bytearray(), bytearray(b"abc"),
    bytearray(b"y" * 100_000), [], [1, [2, [3]]], (), (1,), ((1, 2), [3]), {}, {"a": 1},
    {1: "int key", (1, "t"): "tuple key", None: 0, 2.5: "float key", frozenset({1}): "fs key",
     b"k": "bytes key"}, set(), {1, "a", (2,)}, frozenset(), frozenset({1.5, None}),
    collections.OrderedDict([("b", 1), ("a", 2)]),
    {"nested": [{"deep": ({"x": [None, {1, 2}]},)}]},
]


@pytest.mark.parametrize("value", CORE_VALUES, ids=lambda v: type(v).__name__)
def test_every_core_type_round_trips_with_its_exact_type(value: Any) -> None:
    assert same(roundtrip(value), value)


def test_bytearray_arrives_as_a_bytearray_and_tuple_stays_apart_from_list() -> None:
    out = roundtrip({"t": (1, 2), "l": [1, 2], "b": bytearray(b"x"), "s": {1}, "f": frozenset()})
    assert [type(out[k]) for k in "tlbsf"] == [tuple, list, bytearray, set, frozenset]


SIMPLE_DTYPES = (
    ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "g", "c8", "c16",
     "G", ">i4", ">f8", "<u2", "S1", "S7", "U1", "U9", ">U3", "V4", "V16"]
    + [f"M8[{u}]" for u in ("Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs",
                             "as")]
    + ["m8[ns]", "m8[10ms]", "M8[25s]", "M8", "m8"]
)
STRUCTURED_DTYPES = [
    [("a", "u1"), ("b", "<f8")],
    np.dtype({"names": ["a", "b"], "formats": ["u1", "f8"], "aligned": True}),
    [("x", "i2", (2, 3)), ("name", "S5"), ("when", "M8[us]")],
    [("inner", [("p", "f4"), ("q", "U2", (2,))]), ("flag", "?")],
    np.dtype({"names": ["a", "b"], "formats": ["i4", "i4"], "offsets": [8, 0], "itemsize": 16}),
]


def sample(dtype: np.dtype, shape: tuple) -> np.ndarray:
    count = int(np.prod(shape))
    if dtype.kind in "mM" and np.datetime_data(dtype)[0] == "generic":
        return np.full(shape, "NaT", dtype)  # generic units hold only NaT
    if dtype.kind == "U":  # valid code points only
        letters = np.random.default_rng(0).integers(65, 91, count * dtype.itemsize // 4)
        return letters.astype(dtype.byteorder + "u4").view(dtype).reshape(shape)
    raw = np.random.default_rng(0).integers(0, 256, count * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape) if count else np.zeros(shape, dtype)


@pytest.mark.parametrize("spec", SIMPLE_DTYPES + STRUCTURED_DTYPES, ids=str)
def test_every_numpy_dtype_round_trips_in_every_layout(spec: Any) -> None:
    dtype = np.dtype(spec)
    base = sample(dtype, (4, 6))
    layouts = [base, np.asfortranarray(base), base[::2, 1::2], base[:1, :1].reshape(()),
               np.zeros((0, 3), dtype), sample(dtype, (2, 0, 5))]
    for array in layouts:
        out = roundtrip(array)
        assert same(out, array), (array.dtype, array.shape)
        assert out.flags.writeable
        if array.flags.f_contiguous and not array.flags.c_contiguous:
            assert out.flags.f_contiguous  # sent as is, not reordered


@pytest.mark.parametrize("spec", SIMPLE_DTYPES + STRUCTURED_DTYPES[:2], ids=str)
def test_numpy_scalars_dtypes_and_scalar_types_round_trip(spec: Any) -> None:
    dtype = np.dtype(spec)
    scalar = sample(dtype, (1,))[0]
    out = roundtrip([scalar, dtype, dtype.type])
    assert type(out[0]) is type(scalar) and repr(out[0]) == repr(scalar)
    assert out[1] == dtype and out[2] is dtype.type


def test_no_copy_on_the_sender_and_arrays_over_the_received_memory() -> None:
    array = np.arange(1 << 20, dtype=np.float32)
    encoded = codec.encode({"w": array})
    assert np.shares_memory(np.frombuffer(encoded.buffers[0], np.uint8), array)
    received = [bytearray(b) for b in encoded.buffers]
    out = codec.decode(encoded.header, received)["w"]
    received[0][:4] = np.float32(42).tobytes()  # the array is a view on this buffer
    assert out[0] == 42 and out.flags.writeable


def test_what_the_codec_cannot_carry_is_refused_on_the_sender() -> None:
    point = collections.namedtuple("Point", "x y")(1, 2)
    refused = {
        "object array": np.array([1, "a"], dtype=object),
        "StringDType": np.array(["x"], dtype=np.dtypes.StringDType()),
        "structured with an object field": np.zeros(2, dtype=[("a", "O")]),
        "namedtuple (a tuple subclass)": point,
        "defaultdict (a dict subclass)": collections.defaultdict(list),
        "function": len,
        "exception": ValueError("x"),
        "Fraction (no table)": fractions.Fraction(1, 3),
    }
    for what, value in refused.items():
        with pytest.raises(FedSerializationError):
            codec.encode({"k": [value]})
        print(what, "refused")
    with pytest.raises(codec.Unsupported) as info:
        codec.encode({"k": [0, point]})
    assert info.value.path == "['k'][1]" and info.value.type_name.endswith("Point")


def test_limits_are_enforced_on_both_sides() -> None:
    limits = CodecLimits(max_depth=5, max_items=50, max_int_bytes=8, max_header_bytes=200)
    deep: Any = 1
    for _ in range(10):
        deep = [deep]
    cases = [deep, list(range(100)), 2**100, ["x" * 300]]
    for value in cases:
        with pytest.raises(FedSerializationError):
            codec.encode(value, limits=limits)
        encoded = codec.encode(value)
        with pytest.raises(FedSerializationError):
            codec.decode(encoded.header, encoded.buffers, limits=limits)
    ring: list = []
    ring.append(ring)
    with pytest.raises(FedSerializationError, match="contains itself"):
        codec.encode(ring)


# ---- the library table ------------------------------------------------------------------------


def test_the_library_table_carries_a_type_and_names_a_missing_library() -> None:
    value = {"third": fractions.Fraction(1, 3), "neg": fractions.Fraction(-7, 2)}
    assert roundtrip(value, table=FRACTIONS) == value
    encoded = codec.encode(value, table=FRACTIONS)
    with pytest.raises(FedSerializationError, match="knows no library codec"):
        codec.decode(encoded.header, [], table=_build_table([]))
    import decimal

    encoded = codec.encode(decimal.Decimal("1.5"), table=FRACTIONS)
    with pytest.raises(FedSerializationError,
                       match="needs no_such_library_for_rayfed_tests on the receiving party"):
        codec.check(encoded.header, [], table=FRACTIONS)


def test_a_library_decoder_validates_what_it_receives() -> None:
    bad = msgpack.packb([tags.LIBRARY, "fractions.Fraction", [tags.LIST, 1, 0]])
    with pytest.raises(FedSerializationError, match="zero denominator"):
        codec.decode(bad, [], table=FRACTIONS)


def test_the_fixed_library_modules_load_and_a_missing_one_adds_nothing() -> None:
    table = codec.library_table()
    assert all(c.name in table.by_tag for c in table.by_tag.values())
    assert _build_table(["fed.codec.lib_not_written_yet"]).by_tag == {}
    assert all(m.startswith("fed.codec.lib_") for m in LIBRARY_MODULES)


# ---- user codecs ------------------------------------------------------------------------------


class Money:
    def __init__(self, cents: int, currency: str) -> None:
        self.cents, self.currency = cents, currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.cents, self.currency) == (other.cents,
                                                                            other.currency)


@dataclasses.dataclass
class Reading:
    sensor: str
    values: np.ndarray


def money_codecs() -> UserCodecs:
    return UserCodecs().with_codec(make_user_codec(
        Money, lambda m: {"c": m.cents, "k": m.currency}, lambda d: Money(d["c"], d["k"]), None))


def test_a_registered_codec_and_a_dataclass_cross_as_data() -> None:
    codecs = money_codecs().with_codec(make_user_codec(Reading, None, None, None))
    value = [Money(250, "EUR"), Reading("t1", np.arange(3.0))]
    out = roundtrip(value, codecs=codecs)
    assert out[0] == Money(250, "EUR")
    assert isinstance(out[1], Reading) and out[1].values.tolist() == [0.0, 1.0, 2.0]


def test_user_codec_mismatches_are_clear_errors_naming_the_type() -> None:
    encoded = codec.encode(Money(1, "USD"), codecs=money_codecs())
    name = f"{__name__}.Money"
    with pytest.raises(FedSerializationError, match=f"user codec '{name}'.*fed.register_codec"):
        codec.decode(encoded.header, [])  # the receiver registered nothing
    other = UserCodecs().with_codec(make_user_codec(Money, lambda m: 0, lambda d: d["cents"],
                                                    None))
    with pytest.raises(FedSerializationError, match=f"the {name} codec refused"):
        codec.decode(encoded.header, [], codecs=other)  # a different registration
    broken = UserCodecs().with_codec(make_user_codec(Money, lambda m: object(), None or (
        lambda d: d), None))
    with pytest.raises(codec.Unsupported, match="builtins.object"):
        codec.encode(Money(1, "X"), codecs=broken)
    with pytest.raises(FedConfigError, match="already used by"):
        money_codecs().with_codec(make_user_codec(Reading, len, len, name))
    for args in ((Money(1, "x"), len, len), (Money, None, len), (Money, len, "nope")):
        with pytest.raises(FedConfigError):
            make_user_codec(*args, None)


# ---- the error envelope -----------------------------------------------------------------------


def test_the_error_envelope_is_data_and_builds_only_a_fed_remote_error() -> None:
    err = FedRemoteError("alice", "train#3", "builtins.ValueError", "bad", "Traceback ...")
    out = roundtrip(err)
    assert type(out) is FedRemoteError
    assert (out.src_party, out.call, out.cause_type, out.message, out.remote_traceback) == (
        "alice", "train#3", "builtins.ValueError", "bad", "Traceback ...")
    for forged in ([tags.ERROR_ENVELOPE, "a", "b", 3, None, None],
                   [tags.ERROR_ENVELOPE, "a", "b"]):
        with pytest.raises(FedSerializationError, match="malformed"):
            codec.decode(msgpack.packb(forged), [])


# ---- the decoder under hostile input ----------------------------------------------------------

_PLAIN = (type(None), bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set,
          frozenset, collections.OrderedDict, np.ndarray, np.generic, np.dtype, type,
          FedRemoteError)


def plain_only(value: Any) -> bool:
    """Everything the decoder built is plain data (no other type was constructed)."""
    if not isinstance(value, _PLAIN) or (isinstance(value, type)
                                          and not issubclass(value, np.generic)):
        return False
    if isinstance(value, dict):
        return all(plain_only(k) and plain_only(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(plain_only(v) for v in value)
    return True


def decode_hostile(header: bytes, buffers: list) -> None:
    """The decoder's only outcomes: plain data, or FedSerializationError."""
    try:
        codec.check(header, buffers)
        value = codec.decode(header, buffers)
    except FedSerializationError:
        return
    assert plain_only(value), repr(value)[:200]


def valid_samples() -> list[codec.Encoded]:
    values = [
        {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": [1.5, "x", None, 2**70]},
        np.zeros(3, dtype=[("a", "u1"), ("b", "<f8", (2,))]),
        (np.float16(1), np.dtype("M8[ns]"), np.int8, {1, 2}, frozenset({"a"})),
        collections.OrderedDict(a=bytearray(b"xyz"), b=b"q" * 70_000, c=1 + 2j),
        FedRemoteError("a", "f#1", "builtins.ValueError", None, None),
        ["\ud800", np.asfortranarray(np.ones((2, 3))), np.array(["ab", "c"])],
    ]
    return [codec.encode(v) for v in values]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(out)) if out else 0
        op = rng.random()
        if op < 0.5 and out:
            out[pos] = rng.randrange(256)
        elif op < 0.7:
            out[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op < 0.9 and out:
            del out[pos:pos + rng.randint(1, 8)]
        else:
            out[pos:pos] = rng.choice([b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
                                       b"\xdb\x7f\xff\xff\xff", b"\xcf" + b"\xff" * 8])
    return bytes(out)


def hostile_trees(rng: random.Random) -> list[Any]:
    """Well-formed msgpack that lies: unknown tags, bad arities, huge declared sizes."""
    huge = 2**62
    return [
        [rng.randint(-5, 300)], [tags.NDARRAY, "<f8", [huge, huge], "C"],
        [tags.NDARRAY, "<f8", [huge], "C"], [tags.NDARRAY, "O", [1], "C"],
        [tags.NDARRAY, "<f8", [1] * 100, "C"], [tags.NDARRAY, "|V0", [3], "C"],
        [tags.NDARRAY, ["struct", [["a", "<f8", 0]] * 3, 8, False], [1], "C"],
        [tags.NDARRAY, ["sub", ["sub", ["sub", "<f8", [2]], [2]], [2]], [1], "Q"],
        [tags.NUMPY_SCALAR, "<U99999999", b"x"], [tags.NUMPY_DTYPE, "numpy.memmap"],
        [tags.BIG_INT, b"\xff" * 70_000], [tags.COMPLEX, 1, "x"], [tags.BYTEARRAY, 7],
        [tags.DICT, [tags.LIST], 1], [tags.SET, [tags.DICT]], [tags.DICT, 1],
        [tags.LIBRARY, "os.system", "id"], [tags.USER, "builtins.eval", "1"],
        [tags.PICKLE, b"\x80\x05cos\nsystem\n.", 0], [tags.ERROR_ENVELOPE, None],
        [tags.STR_SURROGATES, b"\xff\xfe"], [tags.BYTES_BUFFER, 5],
    ]


def test_decoder_fuzz_typed_errors_bounded_memory_nothing_executed() -> None:
    rng = random.Random(20240610)
    samples = valid_samples()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for encoded in samples:  # the valid ones decode
        decode_hostile(encoded.header, [bytearray(b) for b in encoded.buffers])
    for _ in range(4000):  # random bytes, with and without buffers
        decode_hostile(rng.randbytes(rng.randint(0, 64)),
                       [bytearray(rng.randint(0, 64)) for _ in range(rng.randint(0, 2))])
    for _ in range(8000):  # mutated valid headers; buffers that disagree with them
        encoded = rng.choice(samples)
        buffers = [bytearray(b) for b in encoded.buffers]
        if buffers and rng.random() < 0.5:
            i = rng.randrange(len(buffers))
            buffers[i] = buffers[i][: rng.randrange(len(buffers[i]) + 1)] + rng.randbytes(
                rng.randint(0, 3))
        elif rng.random() < 0.3:
            buffers = buffers[1:] if buffers and rng.random() < 0.5 else buffers + [bytearray(8)]
        decode_hostile(mutate(rng, encoded.header), buffers)
    for tree in hostile_trees(rng) * 3:
        decode_hostile(msgpack.packb(tree, use_bin_type=True), [bytearray(16)])
    deep = b"\x91" * 100_000 + b"\xc0"  # msgpack nesting far past any limit
    tagged_deep = (b"\x92\x01" * 5000) + b"\xc0"  # [LIST, [LIST, ...]]
    for header in (deep, tagged_deep, b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff" + b"x",
                   b"\x81\xa1a\x01", b"\xd4\x01\x00", b"\xc0\xc0"):
        with pytest.raises(FedSerializationError):
            codec.decode(header, [])
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 256 * 1024, f"the fuzz grew this process by {grown_kib} KiB"
