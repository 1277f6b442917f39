"""Find and replace fed objects inside nested arguments.

Lists, tuples (namedtuples keep their type), dicts and dataclass instances are
walked; everything else is a leaf. Only the structure is rebuilt, leaves are never
copied.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


def map_leaves(value: Any, is_leaf: Callable[[Any], bool], fn: Callable[[Any], Any]) -> Any:
    """Return `value` with every leaf for which `is_leaf` holds replaced by `fn(leaf)`."""
    if is_leaf(value):
        return fn(value)
    if isinstance(value, list):
        return [map_leaves(v, is_leaf, fn) for v in value]
    if isinstance(value, tuple):
        items = [map_leaves(v, is_leaf, fn) for v in value]
        if hasattr(type(value), "_fields"):  # namedtuple
            return type(value)(*items)
        return tuple(items)
    if isinstance(value, dict):
        return type(value)((k, map_leaves(v, is_leaf, fn)) for k, v in value.items()) \
            if type(value) is dict else _rebuild_mapping(value, is_leaf, fn)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: map_leaves(getattr(value, f.name), is_leaf, fn)
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **changes)
    return value


def _rebuild_mapping(value: dict, is_leaf: Callable[[Any], bool], fn: Callable[[Any], Any]) -> dict:
    out = value.copy()
    for k, v in value.items():
        out[k] = map_leaves(v, is_leaf, fn)
    return out


def leaves(value: Any, is_leaf: Callable[[Any], bool]) -> list[Any]:
    """All leaves of `value` for which `is_leaf` holds, in a fixed (deterministic) order."""
    found: list[Any] = []

    def collect(leaf: Any) -> Any:
        found.append(leaf)
        return leaf

    map_leaves(value, is_leaf, collect)
    return found
