"""Code written for RayFed runs unchanged: two real parties, each with its own Ray.

- ``serializing_allowed_list`` exactly as RayFed's docs and tests write it: the
  classes it admits cross (pickled, and unpickled through the allowlist);
- a value of a type it does not admit is refused on the sender, and the consumer's
  ``fed.get`` raises a rayfed error naming the type (RayFed raised
  ``pickle.UnpicklingError`` on the receiver; here nothing refused ever leaves);
- many first sends and receives at once in fresh processes all succeed.

This module imports no numpy at the top: the party processes are fresh, and the
tasks import numpy themselves while the first values cross.
"""
from __future__ import annotations

import collections
import os

import pytest
from multiparty import assert_all_ok, describe, run_parties, start_ray

import fed

pytestmark = pytest.mark.timeout(180)


class Point:
    """A user class, admitted by RayFed's {"module": ["*"]} or by name."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


class Other:
    """A class the name-list form does not admit."""


def helper() -> None:
    """A function: RayFed's {"module": ["*"]} admits classes, never functions."""


def start_ray_importing_this_module() -> None:
    """Ray workers (tasks, the receiver) must import this module for Point and helper."""
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    start_ray()


@fed.remote
def make_point():
    return Point(1, 2)


@fed.remote
def make_arrays():
    import numpy as np

    return {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "t": np.dtype("int16")}


@fed.remote
def make_refused(form):
    return helper if form == "classes" else Other()


def allowlist_forms(party, addresses, form):
    forms = {  # RayFed's literal forms, plus this module written the same ways
        "classes": {"numpy.core.numeric": ["*"], "numpy": ["dtype"], __name__: ["*"]},
        "names": {__name__: ["Point"]},
    }
    start_ray_importing_this_module()
    fed.init(addresses=addresses, party=party,
             config={"cross_silo_comm": {"serializing_allowed_list": forms[form]}})
    point = fed.get(make_point.party("alice").remote())
    arrays = fed.get(make_arrays.party("alice").remote())
    refused = None
    try:
        fed.get(make_refused.party("alice").remote(form))
    except fed.FedError as exc:
        name = "helper" if form == "classes" else "Other"
        refused = (type(exc).__name__, f"{__name__}.{name}" in str(exc))
    fed.shutdown()
    return (point.x, point.y), arrays["w"].tolist(), str(arrays["t"]), refused


@pytest.mark.parametrize("form", ["classes", "names"])
def test_rayfed_allowlist_forms_across_parties(form):
    outcomes = run_parties(allowlist_forms, args=(form,))
    assert_all_ok(outcomes)
    for party in ("alice", "bob"):
        point, weights, dtype, _ = outcomes[party].result
        assert point == (1, 2) and dtype == "int16", describe(outcomes)
        assert weights == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert outcomes["alice"].result[3] is None  # the owner holds its own value
    assert outcomes["bob"].result[3] == ("FedTransportError", True), describe(outcomes)


# ---- many first-time sends and receives at once, in fresh processes ----------------------


@fed.remote
def produce(i):
    if i % 3 == 0:
        return i
    if i % 3 == 1:
        return collections.OrderedDict(i=i)
    import numpy as np

    return np.full(4, i, dtype=np.int64)


def first_values_at_once(party, addresses, n):
    start_ray()
    fed.init(addresses=addresses, party=party)
    objs = [produce.party(("alice", "bob")[i % 2]).remote(i) for i in range(n)]
    values = fed.get(objs)  # every value crosses to the other party at once
    fed.shutdown()
    return [v.tolist() if hasattr(v, "tolist") else v for v in values]


def test_many_first_sends_and_receives_at_once_in_fresh_processes():
    n = 24
    outcomes = run_parties(first_values_at_once, args=(n,))
    assert_all_ok(outcomes)
    expected = [
        i if i % 3 == 0 else collections.OrderedDict(i=i) if i % 3 == 1 else [i] * 4
        for i in range(n)
    ]
    assert outcomes["alice"].result == expected and outcomes["bob"].result == expected
