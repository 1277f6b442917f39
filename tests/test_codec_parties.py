"""The codec across two real parties (one process and one Ray cluster each).

With the default configuration every core type and numpy dtype crosses intact, a
registered codec carries a user type, and a class defined in ``__main__`` is refused
on the sender with an error (seen by the consumer) that names it and the ways to send
it. With an allowlist, the admitted class crosses as an opt-in pickle next to codec data.
"""
from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
import pytest
from multiparty import assert_all_ok, describe, run_parties, start_ray

import fed

pytestmark = pytest.mark.timeout(240)

DTYPES = (["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "g", "c8",
           "c16", "G", ">i4", ">f8", "S5", "U3", "V4", "M8[ns]", "M8[D]", "m8[ms]", "m8[10s]"]
          + [[("a", "u1"), ("b", "<f8", (2,)), ("c", "U2")]])


def arrays() -> dict:
    out = {}
    for spec in DTYPES:
        dtype = np.dtype(spec)
        raw = np.arange(24 * dtype.itemsize, dtype=np.uint64).astype(np.uint8)
        if dtype.kind == "U" or (dtype.names and "c" in dtype.names):
            out[str(spec)] = np.zeros((4, 6), dtype)
            continue
        out[str(spec)] = raw.view(dtype).reshape(4, 6)
    out["fortran"] = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    out["strided"] = np.arange(20)[::3]
    out["empty"] = np.zeros((0, 7), np.float32)
    out["0-d"] = np.array(2.5)
    return out


def core() -> dict:
    return {
        "scalars": [None, True, 7, -(2**90), 1.25, 3 - 4j, "héllo", "\ud800", b"\x00\x01",
                    bytearray(b"ab"), b"z" * 100_000],
        "containers": ((1, [2, {3}]), frozenset({"f"}), collections.OrderedDict(b=1, a=2),
                       {(1, 2): "tuple key", 5: "int key"}),
        "numpy": [np.float32(1.5), np.datetime64("2024-01-02"), np.dtype("<M8[us]"), np.int16],
    }


@dataclasses.dataclass
class Money:
    cents: int
    currency: str


Secretive = type("Secretive", (), {"__module__": "__main__"})  # as a script defines it


@fed.remote
def produce_core():
    return core()


@fed.remote
def produce_arrays():
    return arrays()


@fed.remote
def produce_money():
    return [Money(250, "EUR"), {"w": np.ones(3)}]


@fed.remote
def produce_secretive():
    return {"state": Secretive()}


@fed.remote
def writable(value):
    return all(a.flags.writeable for a in value.values()) and value["i4"].sum() >= 0


def same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return (type(b) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape
                and a.tobytes() == b.tobytes())
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return type(a) is type(b) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def importable_by_workers() -> None:
    """Ray workers (tasks, the receiver holding our codecs) import this module."""
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])


def default_config(party, addresses):
    importable_by_workers()
    start_ray()
    fed.register_codec(Money)  # before fed.init: a dataclass needs no functions
    fed.init(addresses=addresses, party=party)
    got_core = fed.get(produce_core.party("alice").remote())
    got_arrays = fed.get(produce_arrays.party("alice").remote())
    in_task = fed.get(writable.party("bob").remote(produce_arrays.party("alice").remote()))
    money = fed.get(produce_money.party("alice").remote())
    refusal = None
    try:
        fed.get(produce_secretive.party("alice").remote())
    except fed.FedError as exc:
        refusal = str(exc)
    fed.shutdown()
    return (same(got_core, core()), same(got_arrays, arrays()), in_task,
            money[0] == Money(250, "EUR") and money[1]["w"].tolist() == [1.0] * 3, refusal)


def test_every_type_crosses_by_default_and_main_classes_are_refused_on_the_sender():
    outcomes = run_parties(default_config)
    assert_all_ok(outcomes)
    for party in ("alice", "bob"):
        same_core, same_arrays, in_task, money, _ = outcomes[party].result
        assert same_core and same_arrays and in_task and money, describe(outcomes)
    assert outcomes["alice"].result[4] is None  # the owner holds its own value
    refusal = outcomes["bob"].result[4]
    assert "__main__.Secretive" in refusal and "(at value['state'])" in refusal, refusal
    assert "fed.register_codec(Secretive" in refusal and "serializing_allowed_list" in refusal


class Point:
    """Admitted by name in the allowlist scenario."""

    def __init__(self, x: int) -> None:
        self.x = x


@fed.remote
def produce_point():
    return {"p": Point(4), "w": np.arange(3.0)}


def with_allowlist(party, addresses):
    importable_by_workers()
    start_ray()
    fed.init(addresses=addresses, party=party, config={"cross_silo_comm": {
        "serializing_allowed_list": [f"{__name__}.Point"]}})
    got = fed.get(produce_point.party("alice").remote())
    fed.shutdown()
    return got["p"].x, got["w"].tolist()


def test_an_admitted_class_crosses_as_an_opt_in_pickle_beside_codec_data():
    outcomes = run_parties(with_allowlist)
    assert_all_ok(outcomes)
    for party in ("alice", "bob"):
        assert outcomes[party].result == (4, [0.0, 1.0, 2.0]), describe(outcomes)
