"""Tests for fed.serialization: round trips, zero copy, and the restricted unpickler.

No Ray cluster is needed: values are pickled and unpickled in this process, as the
transport and simulation mode do on either side of a party boundary.
"""
from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import os
import pickle
import random
import subprocess
import sys
import threading
from os import system as reexported_system  # noqa: F401  (target of a wildcard test)
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fed.errors import (
    FedConfigError,
    FedDeserializationRefused,
    FedError,
    FedPeerUnavailableError,
    FedRefusedError,
    FedRemoteError,
    FedSerializationError,
)
from fed.serialization import Allowlist, default_allowlist, dumps, loads

MODULE = __name__  # how pickle names this test module (depends on pytest's import mode)
DEFAULT = default_allowlist()
ALLOW_ALL = Allowlist.from_config("*")


# ----------------------------------------------------------------- helper types


class Point:
    """A user type: refused unless the receiver's allowlist names it."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


class Outer:
    class Inner:
        """Nested class: pickle names it ("<module>", "Outer.Inner")."""

        def __init__(self, v: int) -> None:
            self.v = v


class SystemPayload:
    """What a hostile peer sends: unpickling it would run a shell command."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class EvalPayload:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (eval, (f"open({str(self.path)!r}, 'w').close()",))


class GetattrPayload:
    def __reduce__(self):
        return (getattr, (Point, "__init__"))


def roundtrip(value: Any, allowlist: Allowlist = DEFAULT, as_bytearray: bool = True) -> Any:
    """dumps + loads the way the transport does (buffers received into bytearrays)."""
    data, buffers = dumps(value)
    received = [bytearray(b) if as_bytearray else bytes(b) for b in buffers]
    return loads(data, received, allowlist)


def global_pickle(module: str, name: str, call_args: tuple | None = None) -> bytes:
    """Hand-made protocol-5 pickle naming ``module.name`` (optionally calling it)."""
    out = bytearray(b"\x80\x05")
    for text in (module, name):
        raw = text.encode()
        out += b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE
    out += b"\x93"  # STACK_GLOBAL
    if call_args is not None:
        out += pickle.dumps(call_args, protocol=5)[2:-1]  # the args tuple, no PROTO/STOP
        out += b"R"  # REDUCE
    return bytes(out + b".")


# ----------------------------------------------------------------- round trips


def test_roundtrip_nested_builtins_and_stdlib() -> None:
    value = {
        "none": None,
        "bools": [True, False],
        "ints": (0, -1, 2**100),
        "float": 1.5,
        "complex": 1 + 2j,
        "str": "héllo",
        "bytes": b"\x00\xff",
        "bytearray": bytearray(b"abc"),
        "range": range(1, 10, 2),
        "slice": slice(1, None, 2),
        "set": {1, 2},
        "frozenset": frozenset({"a"}),
        "ellipsis": ...,
        "nested": [[{"k": (1, [2, {3}])}]],
        "od": collections.OrderedDict(a=1, b=2),
        "dd": collections.defaultdict(list, {"x": [1]}),
        "deque": collections.deque([1, 2], maxlen=5),
        "counter": collections.Counter("abca"),
        "dt": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "date": datetime.date(2024, 1, 2),
        "time": datetime.time(1, 2),
        "td": datetime.timedelta(days=1, seconds=3),
        "decimal": decimal.Decimal("1.10"),
        "types": [int, float, dict],
    }
    out = roundtrip(value)
    assert out == value
    assert type(out["dd"]) is collections.defaultdict and out["dd"].default_factory is list
    assert out["deque"].maxlen == 5


def test_roundtrip_builtin_exceptions() -> None:
    out = roundtrip([ValueError("bad", 3), FileNotFoundError(2, "missing"), KeyError("k")])
    assert type(out[0]) is ValueError and out[0].args == ("bad", 3)
    assert type(out[1]) is FileNotFoundError and out[1].errno == 2
    assert type(out[2]) is KeyError


def test_roundtrip_fed_errors_keep_fields() -> None:
    remote = FedRemoteError("alice", "train#3", "builtins.ValueError", "boom", "Traceback ...")
    values = [
        remote,
        FedRefusedError("identity", "cert says carol"),
        FedDeserializationRefused("mymod.Thing", "allow it"),
        FedError("plain"),
    ]
    out = roundtrip(values)
    got = out[0]
    assert type(got) is FedRemoteError
    assert (got.src_party, got.call, got.cause_type, got.message, got.remote_traceback) == (
        "alice", "train#3", "builtins.ValueError", "boom", "Traceback ...",
    )
    assert str(got) == str(remote)
    assert out[1].reason == "identity" and out[1].detail == "cert says carol"
    assert out[2].type_name == "mymod.Thing" and out[2].hint == "allow it"
    assert type(out[3]) is FedError and out[3].args == ("plain",)


def test_roundtrip_peer_unavailable_error() -> None:
    out = roundtrip(FedPeerUnavailableError("bob", "no heartbeat for 30s"))
    assert type(out) is FedPeerUnavailableError
    assert out.peer == "bob" and out.detail == "no heartbeat for 30s"


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.arange(10, dtype=np.float32),
        np.arange(10, dtype=np.int8),
        np.array([1, 2, 3], dtype=np.uint64),
        np.array([True, False]),
        np.array([1 + 2j, 3j], dtype=np.complex64),
        np.array([1.5], dtype=np.float16),
        np.array(3.25),  # 0-d
        np.zeros((0, 3)),  # empty
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(20)[::3],  # non-contiguous
        np.arange(24.0).reshape(4, 6)[1:, ::2],  # non-contiguous 2-D
        np.array(["ab", "c"]),
        np.array([b"x", b"yz"]),
        np.array(["2024-01-01", "2024-06-01"], dtype="datetime64[D]"),
        np.array([1, 2], dtype="timedelta64[s]"),
        np.array(
            [(1, 2.0, b"a"), (3, 4.0, b"b")],
            dtype=[("i", "<i4"), ("f", ">f8", (1,)), ("s", "S2")],
        ),  # structured, mixed byte order
        np.array([1, "two", None, 3.0], dtype=object),
    ],
    ids=lambda a: f"{a.dtype}-{a.shape}",
)
def test_roundtrip_numpy_arrays(array: np.ndarray) -> None:
    out = roundtrip(array)
    assert type(out) is np.ndarray
    assert out.dtype == array.dtype and out.shape == array.shape
    if array.dtype == object:
        assert out.tolist() == array.tolist()
    else:
        np.testing.assert_array_equal(out, array)
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        assert out.flags.f_contiguous


def test_roundtrip_numpy_scalars_dtypes_and_types() -> None:
    value = [
        np.float32(1.5),
        np.int64(-7),
        np.bool_(True),
        np.complex128(1j),
        np.datetime64("2024-01-01T00:00"),
        np.dtype("f4"),
        np.dtype([("a", "<i2"), ("b", "f8", (2,))]),
        np.float32,
        np.int8,
        np.dtypes.Float32DType,
    ]
    out = roundtrip(value)
    for got, want in zip(out[:5], value[:5]):
        assert type(got) is type(want) and got == want
    assert out[5] == np.dtype("f4") and out[6] == value[6]
    assert out[7] is np.float32 and out[8] is np.int8 and out[9] is np.dtypes.Float32DType


DTYPES = [
    "f8", ">f8", "i1", "U5", ">U5", "S3", "V7", "M8", "M8[s]", ">m8[25us]", "O", "?", "c16", "g",
    [("a", "<i4"), ("b", ">f8", (2,))],
    [("a", "i1"), ("b", [("c", "f8", (2,)), ("d", "U3")])],
    {"names": ["x", "y"], "formats": ["i4", "i4"], "offsets": [4, 0], "itemsize": 12},
    {"names": ["x"], "formats": ["i4"], "titles": ["T"]},
    ("f4", (2, 3)),
    [("o", object), ("i", "i4")],
]


@pytest.mark.parametrize("spec", DTYPES, ids=repr)
@pytest.mark.parametrize("align", [False, True])
def test_roundtrip_dtypes_like_plain_pickle(spec: Any, align: bool) -> None:
    """Every dtype numpy pickles passes the dtype-state check, with the same result."""
    dtype = np.dtype(spec, align=align)
    for value in (dtype, np.zeros(3, dtype), np.zeros((2, 4), dtype)[:, ::2]):
        data, buffers = dumps(value)
        expected = pickle.loads(data, buffers=buffers)
        got = loads(data, [bytearray(b) for b in buffers], DEFAULT)
        got_dtype = got if isinstance(got, np.dtype) else got.dtype
        want_dtype = expected if isinstance(expected, np.dtype) else expected.dtype
        assert repr(got_dtype) == repr(want_dtype)
        assert got_dtype.metadata == want_dtype.metadata


def test_roundtrip_dtype_metadata_and_string_dtype() -> None:
    values = [
        np.dtype("f8", metadata={"unit": "m"}),
        np.dtype("M8[s]", metadata={"k": 1}),
        np.array(["a", "bc"], dtype=np.dtypes.StringDType()),
    ]
    out = roundtrip(values)
    assert out[0].metadata == {"unit": "m"} and out[1].metadata == {"k": 1}
    assert out[2].tolist() == ["a", "bc"]


def test_masked_arrays_are_not_in_the_defaults() -> None:
    """MaskedArray.__setstate__ hands its state to numpy unchecked: not admitted."""
    data, buffers = dumps(np.ma.array([1, 2], mask=[0, 1]))
    with pytest.raises(FedDeserializationRefused):
        loads(data, buffers, DEFAULT)


# ----------------------------------------------------------------- zero copy


def test_dumps_does_not_copy_a_large_array() -> None:
    array = np.zeros(256 * 1024 * 1024, dtype=np.uint8)  # 256 MiB
    data, buffers = dumps({"weights": array})
    assert len(data) < 1024
    assert len(buffers) == 1
    view = buffers[0]
    assert isinstance(view, memoryview)
    assert view.format == "B" and view.ndim == 1 and view.nbytes == array.nbytes
    assert np.shares_memory(np.frombuffer(view, dtype=np.uint8), array)


def test_dumps_buffers_are_flat_bytes_for_any_dtype_and_order() -> None:
    arrays = [np.ones((64, 32), dtype=np.float64), np.asfortranarray(np.ones((8, 4), np.int32))]
    _, buffers = dumps(arrays)
    assert [b.nbytes for b in buffers] == [a.nbytes for a in arrays]
    for view, array in zip(buffers, arrays):
        assert view.format == "B" and view.ndim == 1
        assert np.shares_memory(np.frombuffer(view, dtype=np.uint8), array)


def test_plain_arrays_need_no_state_so_loads_stays_on_the_fast_path() -> None:
    """dumps writes plain dtypes as numpy.dtype("<f4"): no BUILD, C unpickler."""
    from fed.serialization import _scan_opcodes

    dtypes = ["f4", ">f8", "i8", "?"]
    value = {f"layer{i}": np.ones((4, 4), dtype) for i, dtype in enumerate(dtypes)}
    data, buffers = dumps(value)
    assert _scan_opcodes(data) == (len(data), False)
    out = loads(data, [bytearray(b) for b in buffers], DEFAULT)
    assert {k: (v.dtype.str, v.tolist()) for k, v in out.items()} == {
        k: (v.dtype.str, v.tolist()) for k, v in value.items()
    }


def test_loads_reuses_received_buffers() -> None:
    array = np.arange(4 * 1024 * 1024, dtype=np.float32)  # 16 MiB
    data, buffers = dumps(array)
    received = [bytearray(b) for b in buffers]
    out = loads(data, received, DEFAULT)
    assert np.shares_memory(out, np.frombuffer(received[0], dtype=np.uint8))
    assert out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_loads_accepts_bytes_and_memoryviews() -> None:
    array = np.arange(100, dtype=np.int16)
    data, buffers = dumps(array)
    out = loads(memoryview(data), [bytes(b) for b in buffers], DEFAULT)
    np.testing.assert_array_equal(out, array)
    assert not out.flags.writeable  # bytes are immutable: the array is a read-only view
    backing = bytearray(buffers[0])
    out2 = loads(bytearray(data), [memoryview(backing)], DEFAULT)
    assert np.shares_memory(out2, np.frombuffer(backing, dtype=np.uint8))


# ----------------------------------------------------------------- refusals


def test_os_system_payload_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data, buffers = dumps(SystemPayload(marker))
    with pytest.raises(FedDeserializationRefused) as info:
        loads(data, buffers, DEFAULT)
    assert info.value.type_name in ("posix.system", "nt.system", "os.system")
    assert info.value.type_name in str(info.value)
    assert not marker.exists()


def test_eval_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data, buffers = dumps(EvalPayload(marker))
    with pytest.raises(FedDeserializationRefused) as info:
        loads(data, buffers, DEFAULT)
    assert info.value.type_name == "builtins.eval"
    assert not marker.exists()


def test_getattr_payload_is_refused() -> None:
    data, buffers = dumps(GetattrPayload())
    with pytest.raises(FedDeserializationRefused) as info:
        loads(data, buffers, DEFAULT)
    assert info.value.type_name == "builtins.getattr"


@pytest.mark.parametrize(
    "module,name",
    [
        ("builtins", n)
        for n in (
            "eval", "exec", "compile", "getattr", "setattr", "delattr", "__import__",
            "open", "input", "breakpoint", "globals", "locals", "vars", "type", "print",
        )
    ]
    + [
        ("posix", "system"),
        ("os", "system"),
        ("subprocess", "Popen"),
        ("ray._raylet", "ObjectRef"),
        ("ray", "ObjectRef"),
        ("ray._private.serialization", "_object_ref_deserializer"),
        ("numpy.random._pickle", "__generator_ctor"),
        ("numpy", "load"),
        ("numpy", "fromfile"),
        ("copyreg", "__newobj__"),
        ("fed.errors", "Optional"),  # imported into fed.errors, not defined there
    ],
)
def test_dangerous_globals_are_not_in_the_defaults(module: str, name: str) -> None:
    assert not DEFAULT.allows(module, name)
    with pytest.raises(FedDeserializationRefused) as info:
        loads(global_pickle(module, name), [], DEFAULT)
    assert info.value.type_name == f"{module}.{name}"


def test_refused_module_is_not_imported() -> None:
    if "this" in sys.modules:
        pytest.skip("module 'this' already imported")
    with pytest.raises(FedDeserializationRefused):
        loads(global_pickle("this", "s"), [], DEFAULT)
    assert "this" not in sys.modules


def test_cloudpickled_code_is_refused_by_default_and_allowed_with_star() -> None:
    def local_function(x: int) -> int:
        return x + 1

    class LocalClass:
        pass

    for value in (lambda x: x * 2, local_function, LocalClass):
        data, buffers = dumps(value)
        with pytest.raises(FedDeserializationRefused) as info:
            loads(data, buffers, DEFAULT)
        assert "cloudpickle" in info.value.type_name
        assert "serializing_allowed_list" in info.value.hint
    data, buffers = dumps(lambda x: x * 2)
    assert loads(data, buffers, ALLOW_ALL)(21) == 42


def test_numpy_random_generator_is_refused() -> None:
    data, buffers = dumps(np.random.default_rng(0))
    with pytest.raises(FedDeserializationRefused) as info:
        loads(data, buffers, DEFAULT)
    assert info.value.type_name.startswith("numpy.random")


def test_user_class_refused_with_exact_hint() -> None:
    data, buffers = dumps({"p": Point(1, 2)})
    with pytest.raises(FedDeserializationRefused) as info:
        loads(data, buffers, DEFAULT)
    err = info.value
    assert err.type_name == f"{MODULE}.Point"
    assert (
        'fed.init(config={"cross_silo_comm": {"serializing_allowed_list": '
        f'["{MODULE}.Point"]}}}})'
    ) in err.hint
    assert err.hint in str(err)


def test_user_class_inside_an_object_array_is_refused() -> None:
    data, buffers = dumps(np.array([Point(1, 2)], dtype=object))
    with pytest.raises(FedDeserializationRefused):
        loads(data, buffers, DEFAULT)


@pytest.mark.parametrize(
    "config",
    [
        [f"{MODULE}.Point"],
        (f"{MODULE}.Point",),
        {f"{MODULE}.Point"},
        [f"{MODULE}.*"],
        {MODULE: "*"},
        {MODULE: ["Point"]},
        {MODULE: "Point"},
        "*",
    ],
    ids=repr,
)
def test_user_class_allowed_by_config(config: Any) -> None:
    allowlist = Allowlist.from_config(config)
    assert allowlist.allows(MODULE, "Point")
    assert roundtrip({"p": Point(1, 2)}, allowlist) == {"p": Point(1, 2)}


def test_nested_class_needs_an_exact_entry() -> None:
    data, buffers = dumps(Outer.Inner(5))
    with pytest.raises(FedDeserializationRefused) as info:
        loads(data, buffers, Allowlist.from_config([f"{MODULE}.*"]))
    assert info.value.type_name == f"{MODULE}.Outer.Inner"
    assert loads(data, buffers, Allowlist.from_config([f"{MODULE}.Outer.Inner"])).v == 5
    assert loads(data, buffers, Allowlist.from_config({MODULE: ["Outer.Inner"]})).v == 5


def test_wildcard_does_not_admit_reexports_or_attribute_paths(tmp_path: Path) -> None:
    allowlist = Allowlist.from_config([f"{MODULE}.*"])
    marker = tmp_path / "pwned"
    # `from os import system as reexported_system` at the top of this module.
    payload = global_pickle(MODULE, "reexported_system", (f"touch {marker}",))
    with pytest.raises(FedDeserializationRefused) as info:
        loads(payload, [], allowlist)
    assert "posix.system" in info.value.hint or "nt.system" in info.value.hint
    assert not marker.exists()
    # Attribute traversal through an admitted class is not admitted by a wildcard.
    assert not allowlist.allows(MODULE, "Point.__init__.__globals__")
    with pytest.raises(FedDeserializationRefused):
        loads(global_pickle(MODULE, "Point.__init__.__globals__"), [], allowlist)
    # Nor are other modules, submodules or parents.
    assert not allowlist.allows(MODULE + "x", "Point")
    assert not allowlist.allows("os", "system")


def test_pickle_cannot_monkeypatch_an_admitted_class() -> None:
    """BUILD applied to a global would setattr on the class itself, process-wide."""
    original_add = fractions.Fraction.__dict__["__add__"]
    # STACK_GLOBAL fractions.Fraction; state (None, {"__add__": int}); BUILD
    payload = (
        global_pickle("fractions", "Fraction")[:-1]
        + b"N}\x8c\x07__add__"
        + global_pickle("builtins", "int")[2:-1]
        + b"s\x86b."
    )
    with pytest.raises(FedDeserializationRefused) as info:
        loads(payload, [], DEFAULT)
    assert info.value.type_name == "fractions.Fraction"
    assert fractions.Fraction.__dict__["__add__"] is original_add
    assert fractions.Fraction(1, 2) + 1 == fractions.Fraction(3, 2)


def test_pickle_cannot_change_an_admitted_function() -> None:
    import copyreg

    before = (copyreg._reconstructor.__defaults__, dict(copyreg._reconstructor.__dict__))
    state = b"N}\x8c\x0c__defaults__K\x01\x85s\x86"  # (None, {"__defaults__": (1,)})
    payload = global_pickle("copyreg", "_reconstructor")[:-1] + state + b"b."
    with pytest.raises(FedDeserializationRefused):
        loads(payload, [], DEFAULT)
    assert (copyreg._reconstructor.__defaults__, dict(copyreg._reconstructor.__dict__)) == before


class Forged:
    """Pickles as an arbitrary (callable, args, state): how a hostile peer forges states."""

    def __init__(self, reduced: tuple) -> None:
        self.reduced = reduced

    def __reduce__(self):
        return self.reduced


_FORGED_NUMPY_SCRIPT = r"""
import sys
import numpy as np
from fed.errors import FedSerializationError
from fed.serialization import default_allowlist, dumps, loads
sys.path.insert(0, sys.argv[1])
from test_serialization import Forged
import copyreg
import pickle

mod = np._core if hasattr(np, "_core") else np.core
cases = {
    # each of these segfaults numpy 2.4 when given to pickle.loads directly
    "short object list": (mod.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                          (1, (89,), np.dtype(object), False, [143, "a"])),
    "dtype state of 6": (np.dtype, ("i8", False, True), (3, "<", 20046, -1, -1, 0)),
    # numpy accepts, then misbehaves: int64 flagged as holding objects
    "forged flags": (np.dtype, ("i8", False, True), (3, "<", None, None, None, -1, -1, 0xD3)),
    "overlapping object field": (np.dtype, ("V16", False, True),
        (3, "|", None, ("a", "b"), {"a": (np.dtype(object), 0), "b": (np.dtype("i8"), 0)},
         16, 1, 27)),
    "short raw data": (mod.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                       (1, (1000,), np.dtype("f8"), False, b"x" * 8)),
    "build on a buffer view": (mod.numeric._frombuffer, (bytearray(16), np.dtype("f8"), (2,), "C"),
                               (1, (100,), np.dtype("f8"), False, b"\0" * 800)),
    "build on a scalar": (mod.multiarray.scalar, (np.dtype("f8"), b"\0" * 8), ("x",)),
    "dtype called oddly": (np.dtype, ("i8", {}, True), (3, "<", None, None, None, -1, -1, 0)),
    # no BUILD at all: the array constructor itself
    "ndarray of pointers": (np.ndarray, ((2,), object, bytearray(b"A" * 16))),
    "ndarray before its buffer": (np.ndarray, ((2,), "f8", bytearray(16), -8)),
    "uninitialized array": (mod.multiarray._reconstruct, (np.ndarray, (1000,), b"b")),
    "ndarray via copyreg": (copyreg._reconstructor, (np.ndarray, np.ndarray, (1000,))),
}
payloads = {name: dumps(Forged(reduced)) for name, reduced in cases.items()}
args = pickle.dumps(((2,), "O", bytearray(b"A" * 16)), protocol=5)[2:-1]
payloads["ndarray via NEWOBJ"] = (
    b"\x80\x05\x8c\x05numpy\x8c\x07ndarray\x93" + args + b"\x81.", []
)
for name, (data, buffers) in payloads.items():
    try:
        loads(data, buffers, default_allowlist())
    except FedSerializationError as exc:
        print("refused:", name, "|", exc)
    else:
        print("LOADED:", name)
"""


def test_forged_numpy_states_are_rejected_without_crashing() -> None:
    """Run in a child: if a check is missing, numpy segfaults and only the child dies."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", _FORGED_NUMPY_SCRIPT, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 13 and all(line.startswith("refused:") for line in lines), proc.stdout


def test_dtype_build_never_touches_numpy_singletons() -> None:
    """copy=False would hand numpy's shared float64 dtype to BUILD; loads forces a copy."""
    forged = Forged((np.dtype, ("f8", False, False), (3, ">", None, None, None, -1, -1, 0)))
    out = roundtrip(forged)
    assert repr(out) == "dtype('>f8')"
    assert np.dtype("f8").byteorder == "=" and np.dtype("f8") == np.dtype("<f8")


# ----------------------------------------------------------------- malformed input


def test_truncated_data_and_wrong_buffer_counts() -> None:
    array = np.arange(10.0)
    data, buffers = dumps({"a": array, "b": [1, 2, 3]})
    for cut in range(len(data)):
        with pytest.raises(FedSerializationError):
            loads(data[:cut], buffers, DEFAULT)
    with pytest.raises(FedSerializationError, match="buffer"):
        loads(data, [], DEFAULT)
    with pytest.raises(FedSerializationError, match="buffers"):
        loads(data, list(buffers) + [bytearray(8)], DEFAULT)
    with pytest.raises(FedSerializationError, match="trailing"):
        loads(data + b"\x00", buffers, DEFAULT)
    with pytest.raises(FedSerializationError, match="bytes-like"):
        loads(data, [12345], DEFAULT)
    with pytest.raises(FedSerializationError):
        loads("not bytes", [], DEFAULT)  # type: ignore[arg-type]
    with pytest.raises(FedSerializationError):  # wrong buffer size for the array
        loads(data, [bytearray(7)], DEFAULT)


@pytest.mark.parametrize(
    "payload",
    [
        b"]r\xff\xff\xff\x7f.",  # LONG_BINPUT 2**31-1: C memo array of 32 GiB (gh-115952)
        b"]p99999999999\n.",  # PUT with a huge text index
        b"\x80\x05\x96" + (2**62).to_bytes(8, "little") + b"xy.",  # BYTEARRAY8 of 4 EiB
        b"\x80\x05\x8e" + (2**40).to_bytes(8, "little") + b".",  # BINBYTES8
        b"\x80\x05X\xff\xff\xff\x7f.",  # BINUNICODE 2 GiB
        b"\x80\x05\x95" + (2**40).to_bytes(8, "little") + b"N.",  # FRAME of 1 TiB
        b"\x80\x05\xff.",  # invalid opcode
        b"\x80\x05N",  # no STOP
    ],
)
def test_resource_bombs_are_rejected_before_unpickling(payload: bytes) -> None:
    """Tiny pickles that would make CPython's C unpickler allocate huge memory."""
    with pytest.raises(FedSerializationError, match="malformed pickle"):
        loads(payload, [], DEFAULT)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_opcode_scan_accepts_every_protocol(protocol: int) -> None:
    from fed.serialization import _scan_opcodes

    value = {
        "a": [1, 2.5, "x\ny", b"y", None, True, (1,), {3}, frozenset(), 10**30, -5, 300, 70000],
        "b": "é\n" * 300,
        "c": b"z\n" * 70000,
        "d": [[1]] * 3,  # memo references
    }
    data = pickle.dumps(value, protocol=protocol)
    assert _scan_opcodes(data) == (len(data), False)
    with_build = pickle.dumps(Point(1, 2), protocol=protocol)
    assert _scan_opcodes(with_build) == (len(with_build), True)
    if protocol >= 3:  # protocols 0-2 pickle bytes through _codecs.encode (not admitted)
        assert loads(data, [], DEFAULT) == value


def test_loads_requires_an_allowlist() -> None:
    data, buffers = dumps(1)
    with pytest.raises(TypeError):
        loads(data, buffers, None)  # type: ignore[arg-type]


def _sample_pickles() -> list[tuple[bytes, list[bytes]]]:
    values = [
        {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "b": [1.5, "x", None]},
        np.array([(1, 2.0)], dtype=[("i", "<i4"), ("f", "<f8")]),
        np.arange(10)[::2],
        np.array([1, "a"], dtype=object),
        FedRemoteError("alice", "f#1", "builtins.ValueError", "m", None),
        collections.OrderedDict(a=np.float32(1)),
        [datetime.datetime(2024, 1, 1), decimal.Decimal("2.5"), datetime.timedelta(3)],
        np.dtype([("a", "<i2", (2, 2)), ("b", "S3")]),
    ]
    return [(d, [bytes(b) for b in bufs]) for d, bufs in (dumps(v) for v in values)]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        pos = rng.randrange(len(out)) if out else 0
        if op < 0.5 and out:
            out[pos] = rng.randrange(256)
        elif op < 0.7:
            out.insert(pos, rng.randrange(256))
        elif op < 0.85 and out:
            del out[pos]
        else:
            out = out[: rng.randrange(len(out) + 1)]
    return bytes(out)


# numpy may report an internal error from a garbled array's destructor (unraisable,
# no crash); that is numpy's reaction to a forged dtype, not a leak out of loads.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_garbage_only_raises_serialization_errors() -> None:
    """Random and mutated inputs: a value or a FedSerializationError, nothing else."""
    rng = random.Random(20240607)
    samples = _sample_pickles()
    inputs: list[tuple[bytes, list[Any]]] = []
    for _ in range(1500):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
        inputs.append((raw, []))
        inputs.append((b"\x80\x05" + raw, [bytearray(rng.randbytes(rng.randint(0, 32)))]))
    for _ in range(3000):
        data, buffers = rng.choice(samples)
        bufs: list[Any] = [bytearray(b) for b in buffers]
        if rng.random() < 0.1:
            bufs = bufs[:-1] if bufs and rng.random() < 0.5 else bufs + [bytearray(16)]
        inputs.append((_mutate(rng, data), bufs))
    refused = failed = ok = 0
    for data, bufs in inputs:
        try:
            loads(data, bufs, DEFAULT)
            ok += 1
        except FedDeserializationRefused:
            refused += 1
        except FedSerializationError:
            failed += 1
    assert failed > 0 and ok + refused + failed == len(inputs)


# ----------------------------------------------------------------- dumps errors


def test_dumps_unpicklable_value_raises_serialization_error() -> None:
    with pytest.raises(FedSerializationError, match="_thread.lock|lock"):
        dumps({"lock": threading.Lock()})


# ----------------------------------------------------------------- Allowlist


@pytest.mark.parametrize(
    "bad",
    [
        "mymod.MyClass",  # a bare string other than "*"
        ["*"],
        ["MyClass"],
        ["mymod."],
        [".MyClass"],
        ["my mod.X"],
        ["mymod.*.X"],
        ["1mod.X"],
        [42],
        [None],
        {"mymod": 3},
        {"mymod": ["bad name"]},
        {3: "*"},
        {"": "*"},
        42,
        True,
        b"*",
    ],
    ids=repr,
)
def test_from_config_rejects_bad_shapes(bad: Any) -> None:
    with pytest.raises(FedConfigError) as info:
        Allowlist.from_config(bad)
    text = str(info.value)
    assert "serializing_allowed_list" in text and "accepted forms" in text


def test_from_config_defaults_and_forms() -> None:
    assert Allowlist.from_config(None) == DEFAULT
    assert Allowlist.from_config([]) == DEFAULT
    assert Allowlist.from_config({}) == DEFAULT
    assert not DEFAULT.allow_all and ALLOW_ALL.allow_all
    assert ALLOW_ALL.allows("posix", "system")
    listed = Allowlist.from_config(["a.B", "c.*", "d.e.F"])
    as_dict = Allowlist.from_config({"a": ["B"], "c": "*", "d.e": "F"})
    assert listed == as_dict and listed.entries == ("a.B", "c.*", "d.e.F")
    assert listed.allows("a", "B") and not listed.allows("a", "C")
    assert listed.allows("c", "Anything") and listed.allows("d.e", "F")
    assert Allowlist.from_config(listed) is listed


def test_defaults_cover_numpy_1_and_2_paths_and_fed_errors() -> None:
    for core in ("numpy.core", "numpy._core"):
        assert DEFAULT.allows(f"{core}.multiarray", "_reconstruct")
        assert DEFAULT.allows(f"{core}.multiarray", "scalar")
        assert DEFAULT.allows(f"{core}.numeric", "_frombuffer")
    for name in ("ndarray", "dtype", "float32", "int64"):
        assert DEFAULT.allows("numpy", name)
    assert DEFAULT.allows("numpy.dtypes", "Float32DType")
    assert not DEFAULT.allows("numpy.dtypes", "_add_dtype_helper")
    assert DEFAULT.allows("fed.errors", "FedRemoteError")
    assert DEFAULT.allows("fed.errors", "_rebuild_error")
    assert DEFAULT.allows("copyreg", "_reconstructor")
    assert DEFAULT.allows("builtins", "ValueError")


def test_allowlist_is_immutable_picklable_and_describable() -> None:
    allowlist = Allowlist.from_config(["a.B", "c.*"])
    with pytest.raises(AttributeError):
        allowlist.allow_all = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        allowlist._exact = frozenset()  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(allowlist)) == allowlist
    assert pickle.loads(pickle.dumps(ALLOW_ALL)).allow_all
    assert "a.B" in allowlist.describe() and "c.*" in allowlist.describe()
    assert "defaults" in DEFAULT.describe()
    assert "*" in ALLOW_ALL.describe()
    assert hash(allowlist) == hash(Allowlist.from_config({"c": "*", "a": "B"}))


# ----------------------------------------------------------------- RayFed's allowlist forms


def module_function() -> None:
    """A function of this module: RayFed's {"module": ["*"]} must not admit it."""


def test_rayfed_star_in_a_list_admits_the_module_classes_only() -> None:
    rayfed = Allowlist.from_config({MODULE: ["*"]})
    assert roundtrip(Point(1, 2), rayfed) == Point(1, 2)
    assert roundtrip(Outer, rayfed) is Outer
    for name in ("module_function", "roundtrip", "reexported_system"):
        with pytest.raises(FedDeserializationRefused):
            loads(global_pickle(MODULE, name), [], rayfed)
    with pytest.raises(FedDeserializationRefused):  # a class imported from elsewhere
        loads(global_pickle(MODULE, "Path"), [], rayfed)


def test_rayfed_numpy_form_is_accepted_and_covers_numpy_1_and_2_names() -> None:
    rayfed = Allowlist.from_config({"numpy.core.numeric": ["*"], "numpy": ["dtype"]})
    value = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "t": np.dtype("int16")}
    out = roundtrip(value, rayfed)
    np.testing.assert_array_equal(out["w"], value["w"])
    assert out["t"] == np.dtype("int16")
    assert rayfed.allows("numpy._core.numeric", "AnyClass")
    assert rayfed.allows("numpy.core.numeric", "AnyClass")
    assert pickle.loads(pickle.dumps(rayfed)) == rayfed
    assert "classes of numpy.core.numeric" in rayfed.describe()


def test_rayfed_names_list_admits_exactly_those_names() -> None:
    rayfed = Allowlist.from_config({MODULE: ["Point"]})
    assert roundtrip(Point(3, 4), rayfed) == Point(3, 4)
    with pytest.raises(FedDeserializationRefused):
        roundtrip(Outer.Inner(1), rayfed)


def test_a_refusal_is_a_pickle_unpickling_error_as_in_rayfed() -> None:
    with pytest.raises(pickle.UnpicklingError) as info:
        roundtrip(Point(1, 2))
    assert isinstance(info.value, FedDeserializationRefused)
    assert "_pickle.UnpicklingError" in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))  # as it crosses Ray to fed.get
    assert isinstance(again, pickle.UnpicklingError) and str(again) == str(info.value)


# ----------------------------------------------------------------- errors from the wire

#: 28 bytes a peer can send as a call's "failure": unpickles to SystemExit().
SYSTEM_EXIT_PAYLOAD = b"\x80\x05\x8c\x08builtins\x8c\x0aSystemExit\x93)R."


def test_error_from_wire_never_hands_back_a_base_exception() -> None:
    from fed.errors import error_from_wire

    assert len(SYSTEM_EXIT_PAYLOAD) == 28
    sent = loads(SYSTEM_EXIT_PAYLOAD, [], DEFAULT)
    assert type(sent) is SystemExit
    for value in (sent, KeyboardInterrupt(), ValueError("x"), 42):
        err = error_from_wire(value, "alice", "mod.task")
        assert type(err) is FedRemoteError and err.src_party == "alice"
        assert err.cause_type == f"invalid error envelope: {type(value).__module__}." \
            f"{type(value).__qualname__}"
    genuine = FedRemoteError("alice", "mod.task", "builtins.KeyError")
    assert error_from_wire(genuine, "alice", "mod.task") is genuine
    refused = FedDeserializationRefused("a.B", "hint")
    assert error_from_wire(refused, "alice", "mod.task") is refused


def _rebuild_pickle(cls_name: str, state: dict) -> bytes:
    """A pickle calling fed.errors._rebuild_error(fed.errors.<cls_name>, (), state)."""
    from fed import errors

    class Call:
        def __reduce__(self):
            return (errors._rebuild_error, (getattr(errors, cls_name, ValueError), (), state))

    return pickle.dumps(Call(), protocol=5)


def test_rebuild_error_rebuilds_only_fed_errors_with_their_own_fields() -> None:
    ok = loads(_rebuild_pickle("FedRemoteError", {"src_party": "a"}), [], DEFAULT)
    assert type(ok) is FedRemoteError and ok.src_party == "a"
    with pytest.raises(FedSerializationError, match="not a rayfed error class"):
        loads(_rebuild_pickle("NoSuchName", {}), [], DEFAULT)  # -> builtins.ValueError
    with pytest.raises(FedSerializationError, match="has no field"):
        loads(_rebuild_pickle("FedRemoteError", {"peer": "x"}), [], DEFAULT)
    with pytest.raises(FedSerializationError, match="has no field"):
        loads(_rebuild_pickle("FedError", {"__class__": "x"}), [], DEFAULT)


def test_only_error_classes_and_their_rebuilder_are_admitted_from_fed_errors() -> None:
    assert DEFAULT.allows("fed.errors", "FedDeserializationRefused")
    for name in ("remote_error_from", "refused_error", "_fields_of", "error_from_wire"):
        assert not DEFAULT.allows("fed.errors", name), name


# ----------------------------------------------------------------- first use from many threads

_FIRST_USE_RACE = """
import collections, sys, threading
import fed.serialization as S  # numpy must not be looked up half-imported after this
N = 8
start = threading.Barrier(N + 1)
imported = threading.Event()
errors = []
def importer():
    start.wait()
    import numpy  # noqa: F401
    imported.set()
def one(i, k):
    if i % 3 == 0:
        value = k
    elif i % 3 == 1:
        value = collections.OrderedDict(a=k)
    else:
        import numpy as np
        value = {"a": np.arange(k % 7), "d": np.dtype("f4")}
    data, bufs = S.dumps(value)
    assert S.loads(data, [bytearray(b) for b in bufs], S.default_allowlist()) is not None
def worker(i):
    start.wait()
    k = 0
    try:
        while not imported.is_set() or k < 50:  # hammer while numpy is being imported
            one(i, k)
            k += 1
    except BaseException as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
threads = [threading.Thread(target=importer)]
threads += [threading.Thread(target=worker, args=(i,)) for i in range(N)]
for t in threads: t.start()
for t in threads: t.join()
print("errors:", errors[:3])
sys.exit(1 if errors else 0)
"""


@pytest.mark.timeout(240)
def test_first_dumps_and_loads_from_many_threads_while_numpy_imports() -> None:
    """Fresh processes: nothing may see numpy half-imported (the CI failure
    "partially initialized module 'numpy' has no attribute 'typecodes'")."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    for _ in range(4):
        done = subprocess.run([sys.executable, "-c", _FIRST_USE_RACE], env=env, cwd=root,
                              capture_output=True, text=True, timeout=200)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
