"""fed.tree: what map_leaves rebuilds, and what it leaves alone."""
from __future__ import annotations

import collections
import dataclasses
from typing import Any

from fed.tree import leaves, map_leaves


class Marker:
    """Stands for a FedObject: the leaf kind being replaced."""

    def __init__(self, n: int) -> None:
        self.n = n


def is_marker(x: Any) -> bool:
    return isinstance(x, Marker)


def to_int(m: Marker) -> int:
    return m.n


@dataclasses.dataclass
class Validated:
    """A dataclass whose __init__ must not run again: it counts and validates."""

    value: Any
    note: str = "plain"
    derived: int = dataclasses.field(init=False, default=0)
    inits = 0

    def __post_init__(self) -> None:
        type(self).inits += 1
        if isinstance(self.value, int) and self.value < 0:
            raise ValueError("negative")


@dataclasses.dataclass(frozen=True)
class Frozen:
    value: Any


def test_a_dataclass_without_leaves_is_passed_through_unchanged() -> None:
    plain = Validated([1, 2])
    before = Validated.inits
    assert map_leaves(plain, is_marker, to_int) is plain
    assert map_leaves({"a": [plain, (plain,)]}, is_marker, to_int)["a"][0] is plain
    assert Validated.inits == before


def test_a_dataclass_with_leaves_is_copied_without_running_init_again() -> None:
    holder = Validated([Marker(7)], note="kept")
    holder.derived = 42  # an init=False field, set after __init__
    before = Validated.inits
    out = map_leaves(holder, is_marker, to_int)
    assert Validated.inits == before  # no __init__/__post_init__ re-run
    assert out is not holder and out.value == [7] and out.note == "kept"
    assert out.derived == 42
    assert isinstance(holder.value[0], Marker)  # the original is untouched
    frozen = map_leaves(Frozen(Marker(3)), is_marker, to_int)
    assert frozen == Frozen(3)


def test_containers_keep_their_types_and_unchanged_ones_their_identity() -> None:
    point = collections.namedtuple("point", "x y")
    value = {"p": point(Marker(1), 2), "d": collections.OrderedDict(k=Marker(2)),
             "same": [1, (2, 3)]}
    out = map_leaves(value, is_marker, to_int)
    assert out["p"] == point(1, 2) and type(out["p"]) is point
    assert out["d"] == {"k": 2} and type(out["d"]) is collections.OrderedDict
    assert out["same"] is value["same"]
    assert [m.n for m in leaves(value, is_marker)] == [1, 2]
