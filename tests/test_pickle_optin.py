"""The opt-in pickle path (fed/transport/payload.py + fed/serialization), in one process.

Without ``serializing_allowed_list`` there is no pickle at all: a type the codec does not
carry is refused on the sender, naming it as the user wrote it and the three ways to
make it cross. With it, only admitted classes are pickled, and the receiver builds them
with the restricted unpickler. Each finding of the engine review's section 2.1 has a
regression test here, on the path it concerns.
"""
from __future__ import annotations

import collections
import fractions
import pickle
from typing import Any

import numpy as np
import pytest

from fed.errors import (
    FedConfigError,
    FedDeserializationRefused,
    FedRemoteError,
    FedSerializationError,
    error_from_wire,
)
from fed.serialization import Allowlist, loads
from fed.transport import payload

NO_PICKLE = payload.WirePolicy()
MODULE = __name__


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


class Other:
    """Never admitted."""


Secretive = type("Secretive", (), {"__module__": "__main__"})  # as a script defines it


def policy(allowed: Any) -> payload.WirePolicy:
    return payload.WirePolicy.from_config(allowed)


def cross(value: Any, sender: payload.WirePolicy, receiver: payload.WirePolicy) -> Any:
    """Pack as the sender does; check and build as the receiver and consumer do."""
    fmt, parts = payload.pack(value, sender)
    received = [bytearray(p) for p in parts]
    payload.check(fmt, received, receiver)
    marker = payload.Received(fmt, received, receiver)
    return pickle.loads(pickle.dumps(marker))  # what Ray does with the barrier's result


def pickle_value(data: bytes) -> tuple[str, list]:
    """A value whose only part is the given pickle, as a hostile peer would send it."""
    import msgpack

    from fed.codec import tags

    return payload.PICKLE, [msgpack.packb([tags.PICKLE, data, 0], use_bin_type=True)]


def refused_on_arrival(data: bytes, receiver: payload.WirePolicy) -> FedSerializationError:
    """The receiver refuses the pickle: on arrival when a global it names is not admitted
    (payload.check builds nothing), else where the consumer builds it (the guarded
    unpickler refuses what admitted globals would do). Either way it is never built."""
    fmt, parts = pickle_value(data)
    try:
        payload.check(fmt, parts, receiver)
    except FedSerializationError as exc:
        return exc
    with pytest.raises(FedSerializationError) as info:
        payload.build(fmt, parts, receiver)
    return info.value


# ---- no allowlist: no pickle at all -----------------------------------------------------------


def test_without_an_allowlist_a_main_class_is_refused_on_the_sender_with_the_three_ways() -> None:
    with pytest.raises(FedSerializationError) as info:
        payload.pack({"model": [Secretive()]}, NO_PICKLE)
    text = str(info.value)
    assert "__main__.Secretive" in text and "(at value['model'][0])" in text
    assert "supported types" in text and "numpy arrays" in text
    assert "fed.register_codec(Secretive, encode=..., decode=...)" in text
    assert "move Secretive to a module every party imports" in text
    assert "serializing_allowed_list" in text


def test_without_an_allowlist_plain_data_never_uses_pickle_and_a_pickle_value_is_refused() -> None:
    fmt, _ = payload.pack({"a": np.arange(3), "b": collections.OrderedDict(x=1)}, NO_PICKLE)
    assert fmt == payload.CODEC
    fmt, parts = payload.pack(Point(1, 2), policy([f"{MODULE}.Point"]))
    assert fmt == payload.PICKLE
    with pytest.raises(FedSerializationError, match="accepts none"):
        payload.check(fmt, [bytearray(p) for p in parts], NO_PICKLE)
    with pytest.raises(FedSerializationError, match="accepts none"):
        payload.build(fmt, [bytearray(p) for p in parts], NO_PICKLE)


# ---- the opt-in ----------------------------------------------------------------------------


def test_an_admitted_class_is_pickled_alone_and_the_rest_stays_codec_data() -> None:
    both = policy({MODULE: ["Point"]})  # RayFed's dict form
    value = {"p": Point(3, 4), "w": np.arange(4.0), "n": [1, (2, 3)]}
    out = cross(value, both, both)
    assert (out["p"].x, out["p"].y) == (3, 4) and out["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert out["n"] == [1, (2, 3)]
    with pytest.raises(FedSerializationError, match=f"{MODULE}.Other.*does not admit it"):
        payload.pack([Other()], both)  # refused on the sender, not pickled
    with pytest.raises(FedSerializationError, match="move Secretive to a module"):
        payload.pack(Secretive(), both)  # would travel as code


def test_the_receiver_checks_the_pickle_with_its_own_allowlist() -> None:
    sender = policy([f"{MODULE}.Point"])
    with pytest.raises(FedDeserializationRefused, match=f"{MODULE}.Point"):
        cross(Point(1, 2), sender, policy([]))


def test_allow_all_still_means_trust_every_peer() -> None:
    trusted = policy("*")
    out = cross({"s": Secretive(), "f": lambda v: v + 1}, trusted, trusted)
    assert type(out["s"]).__name__ == "Secretive" and out["f"](1) == 2


# ---- review 2.1, each finding on the path it concerns ------------------------------------


def g(module: str, name: str) -> bytes:
    """STACK_GLOBAL module.name."""
    return (b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)])
            + name.encode() + b"\x93")


def test_2_1_a_obj_and_inst_cannot_build_uninitialised_arrays() -> None:
    obj = (b"\x80\x05(" + g("numpy._core.multiarray", "_reconstruct") + g("numpy", "ndarray")
           + b"Kd\x85C\x02f8o.")
    inst = b"(cnumpy\nndarray\nI65536\n\x85S'f8'\ninumpy._core.multiarray\n_reconstruct\n."
    via_copyreg = (b"\x80\x05(" + g("copyreg", "_reconstructor") + g("numpy", "ndarray")
                   + g("numpy", "ndarray") + b"Kd\x85o.")
    receiver = policy([])
    for data in (obj, inst, via_copyreg):
        error = refused_on_arrival(data, receiver)
        assert "numpy" in str(error) or "_reconstruct" in str(error), error
    for data in (obj, inst):  # and the codec path never reaches an unpickler at all
        with pytest.raises(FedSerializationError, match="malformed value"):
            payload.check(payload.CODEC, [data], NO_PICKLE)


def test_2_1_b_an_error_value_is_data_and_only_a_fed_remote_error() -> None:
    system_exit = b"\x80\x05\x8c\x08builtins\x8c\x0aSystemExit\x93)R."
    with pytest.raises(FedSerializationError):  # not a codec header
        payload.build(payload.CODEC, [system_exit], NO_PICKLE)
    fmt, parts = payload.pack(["SystemExit"], NO_PICKLE)
    wrapped = error_from_wire(payload.build(fmt, parts, NO_PICKLE), "alice", "f#1")
    assert isinstance(wrapped, FedRemoteError) and "invalid error envelope" in wrapped.cause_type


def test_2_1_c_wildcards_admit_classes_only_never_file_access() -> None:
    numpy_star = policy({"numpy": "*"})
    savetxt = g("numpy", "savetxt") + b"\x8c\x04/tmp\x85R"  # savetxt("/tmp")
    error = refused_on_arrival(b"\x80\x05" + savetxt + b".", numpy_star)
    assert "admits only the classes" in str(error)
    for name in ("memmap", "vectorize"):
        error = refused_on_arrival(b"\x80\x05" + g("numpy", name) + b".", numpy_star)
        assert "never admits it" in str(error), error
    for form in (["numpy.*"], {"numpy": ["*"]}):
        error = refused_on_arrival(b"\x80\x05" + g("numpy", "load") + b".", policy(form))
        assert isinstance(error, FedDeserializationRefused)


def test_2_1_d_default_constructors_cannot_burn_cpu_or_memory() -> None:
    receiver = policy([])
    fraction = g("fractions", "Fraction") + b"\x8c\x0b1e100000000\x85R."
    assert isinstance(refused_on_arrival(b"\x80\x05" + fraction, receiver),
                      FedDeserializationRefused)
    for name, module in (("bytearray", "builtins"), ("bytes", "builtins"), ("void", "numpy")):
        call = g(module, name) + b"\x8a\x05\x00\xe8vH\x17\x85R."  # name(10**11)
        assert "allocates what the sender asks for" in str(
            refused_on_arrival(b"\x80\x05" + call, receiver))
    assert fractions.Fraction(1, 3) == fractions.Fraction("1/3")  # untouched here


def test_2_1_e_only_error_classes_and_their_rebuilder_from_fed_errors() -> None:
    for name in ("_fields_of", "remote_error_from", "refused_error"):
        error = refused_on_arrival(b"\x80\x05" + g("fed.errors", name) + b".", policy([]))
        assert isinstance(error, FedDeserializationRefused)


def test_2_1_f_containers_cannot_lie_about_their_contents() -> None:
    ordered = pickle.dumps(collections.OrderedDict(label=1), protocol=5)
    assert ordered.endswith(b".")
    # BUILD a state onto the OrderedDict that shadows items/keys/values.
    lying = (ordered[:-1] + b"}(\x8c\x05items)\x8c\x04keys)\x8c\x06values)ub.")
    assert "shadow" in str(refused_on_arrival(lying, policy([]))) or "state for" in str(
        refused_on_arrival(lying, policy([])))


def test_2_1_g_a_value_is_never_unpickled_without_the_allowlist_in_the_consumer() -> None:
    both = policy([f"{MODULE}.Point"])
    fmt, parts = payload.pack(Point(5, 6), both)
    marker = payload.Received(fmt, [bytearray(p) for p in parts], both)
    rebuild, args = marker.__reduce__()
    assert rebuild is payload._rebuild and args[2].allowlist == both.allowlist
    # A state that plants __reduce_ex__ in an instance dict (the consumer-side gadget).
    key = b"__reduce_ex__"
    gadget = (b"\x80\x05" + g(MODULE, "Point") + b")\x81}\x8c" + bytes([len(key)]) + key
              + g("builtins", "bytearray") + b"sb.")
    assert "shadow a method or special name" in str(refused_on_arrival(gadget, both))


def test_2_1_h_the_opcode_scan_runs_in_allow_all_and_names_must_be_exact() -> None:
    with pytest.raises(FedSerializationError, match="memo index"):
        loads(b"]r\xff\xff\xff\x7f.", [], Allowlist.from_config("*"))
    attribute_path = b"\x80\x05" + g("numpy._core", "multiarray._reconstruct") + b"."
    assert isinstance(refused_on_arrival(attribute_path, policy([])), FedDeserializationRefused)


def test_bad_allowlist_configs_fail_in_fed_init() -> None:
    with pytest.raises(FedConfigError):
        payload.WirePolicy.from_config(["*"])
