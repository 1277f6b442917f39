"""Large values land straight in the receiving party's object store (fed/transport/plasma.py):
they must arrive intact in every shape a value reaches a consumer."""
from __future__ import annotations

import numpy as np
import pytest
from multiparty import assert_all_ok, run_parties, start_ray

import fed

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024


@fed.remote
def make(seed):
    return {
        "big": np.arange(MiB, dtype=np.float32) + seed,  # 4 MiB: lands in the object store
        "small": np.full(100, seed, dtype=np.int64),  # under 64 KiB: travels in the marker
        "edge": np.ones(256 * 1024, dtype=np.float32) * seed,  # exactly 1 MiB
        "text": f"seed {seed}",
    }


@fed.remote
def check_top(value):
    big = value["big"]
    return (float(big[0]), float(big[-1]), int(value["small"].sum()), float(value["edge"].sum()),
            value["text"], bool(big.flags.writeable))


@fed.remote
def check_nested(container):
    value = fed.get(container["inner"][0])  # nested: arrives as a ref, resolved in the task
    return float(value["big"][-1]), int(value["small"][0])


def landing(party, addresses):
    start_ray()
    fed.init(addresses=addresses, party=party)
    x = make.party("alice").remote(5)
    top = fed.get(check_top.party("bob").remote(x))
    nested = fed.get(check_nested.party("bob").remote({"inner": [x]}))
    y = make.party("alice").remote(7)
    got = fed.get(y)  # bob receives y through its barrier; alice has it locally
    result = (top, nested, float(got["big"][-1]), int(got["small"].sum()), got["text"])
    fed.shutdown()
    return result


def test_large_values_arrive_intact_through_the_object_store():
    outcomes = run_parties(landing)
    assert_all_ok(outcomes)
    n = MiB
    expected = (
        (5.0, float(np.float32(n - 1 + 5)), 500, 5.0 * 256 * 1024, "seed 5", False),
        (float(np.float32(n - 1 + 5)), 5),
        float(np.float32(n - 1 + 7)), 700, "seed 7",
    )
    for o in outcomes.values():
        assert o.result == expected


def solo_landing(party, addresses):
    import ray

    from fed.transport import payload
    from fed.transport.limits import allocate
    from fed.transport.plasma import InObjectStore, Landing

    start_ray()
    value = {"big": np.arange(MiB, dtype=np.float32), "small": np.arange(10), "s": "x"}
    fmt, parts = payload.pack(value, payload.WirePolicy())
    sizes = [memoryview(p).nbytes for p in parts]
    landing = Landing.maybe(sizes, "value")
    assert isinstance(landing, Landing), "a 4 MiB value must take the object-store path"
    assert Landing.maybe(sizes, "error") is None
    assert Landing.maybe([10, 1000], "value") is None
    for i, source in enumerate(parts):
        if landing.buffers[i] is None:  # small: allocated when its first byte arrives
            landing.buffers[i] = allocate(sizes[i])
        memoryview(landing.buffers[i])[:] = memoryview(source).cast("B")
    marker = landing.marker(fmt, payload.WirePolicy())
    assert isinstance(marker, InObjectStore)
    back = ray.get(ray.put(marker))  # unpickling the marker gives the value itself
    same = (np.array_equal(back["big"], value["big"])
            and np.array_equal(back["small"], value["small"])
            and back["s"] == "x" and not back["big"].flags.writeable)
    ray.shutdown()
    return same


def test_landing_fills_an_object_store_object_that_unpickles_as_the_value():
    outcomes = run_parties(solo_landing, ["solo"])
    assert_all_ok(outcomes)
    assert outcomes["solo"].result is True


def test_a_landing_slices_its_large_buffers_from_one_mapping_and_unmaps_it_on_close():
    from fed.transport.plasma import Landing

    sizes = [100, 3 * MiB, 10, 65 * 1024 + 3, 2 * MiB]
    landing = Landing(sizes)
    region = landing._region
    views = [landing.buffers[i] for i in landing.big]
    assert landing.big == [1, 3, 4]
    assert [v.nbytes for v in views] == [3 * MiB, 65 * 1024 + 3, 2 * MiB]
    assert landing.buffers[0] is None and landing.buffers[2] is None  # allocated on arrival
    for n, view in enumerate(views):
        view[:] = bytes([n + 1]) * view.nbytes  # writable, and the slices do not overlap
    assert [bytes(v[-1:]) for v in views] == [b"\x01", b"\x02", b"\x03"]
    landing.close()
    assert region.closed and landing.buffers is None
