"""Find and replace fed objects inside nested arguments.

Lists, tuples (namedtuples keep their type), dicts and dataclass instances are
walked; everything else is a leaf. A container holding no leaf to replace is
returned as it is (the same object). Otherwise only the structure is rebuilt,
leaves are never copied; a dataclass is copied with ``copy.copy`` and its fields
set on the copy, so its ``__init__``/``__post_init__`` do not run again and
``field(init=False)`` values are kept.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

Leaf = Callable[[Any], bool]
Fn = Callable[[Any], Any]


def map_leaves(value: Any, is_leaf: Leaf, fn: Fn) -> Any:
    """Return `value` with every leaf for which `is_leaf` holds replaced by `fn(leaf)`."""
    if is_leaf(value):
        return fn(value)
    if isinstance(value, list):
        items = [map_leaves(v, is_leaf, fn) for v in value]
        return value if _unchanged(value, items) else items
    if isinstance(value, tuple):
        items = [map_leaves(v, is_leaf, fn) for v in value]
        if _unchanged(value, items):
            return value
        if hasattr(type(value), "_fields"):  # namedtuple
            return type(value)(*items)
        return tuple(items)
    if isinstance(value, dict):
        return _map_mapping(value, is_leaf, fn)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _map_dataclass(value, is_leaf, fn)
    return value


def _unchanged(old: Any, new: list) -> bool:
    return all(a is b for a, b in zip(old, new))


def _map_mapping(value: dict, is_leaf: Leaf, fn: Fn) -> dict:
    """A dict (subclasses keep their type and other state through ``copy``)."""
    changes = {k: map_leaves(v, is_leaf, fn) for k, v in value.items()}
    if _unchanged(value.values(), list(changes.values())):
        return value
    if type(value) is dict:
        return changes
    out = value.copy()
    out.update(changes)
    return out


def _map_dataclass(value: Any, is_leaf: Leaf, fn: Fn) -> Any:
    """Replace leaves in every field (``init=False`` ones too) of a shallow copy."""
    changes = {}
    for f in dataclasses.fields(value):
        old = getattr(value, f.name)
        new = map_leaves(old, is_leaf, fn)
        if new is not old:
            changes[f.name] = new
    if not changes:
        return value
    out = copy.copy(value)
    for name, new in changes.items():
        object.__setattr__(out, name, new)  # frozen dataclasses too
    return out


def leaves(value: Any, is_leaf: Leaf) -> list[Any]:
    """All leaves of `value` for which `is_leaf` holds, in a fixed (deterministic) order."""
    found: list[Any] = []

    def collect(leaf: Any) -> Any:
        found.append(leaf)
        return leaf

    map_leaves(value, is_leaf, collect)
    return found
