"""The components this party is willing to run: ``name`` + ``version`` -> an entrypoint.

A job names components; a peer never sends code. Only the party's own admin adds
entries (``fed site component add``), and a job naming a component version missing
here is rejected by this party at approval.
"""
from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from fed.site.core.models import Component
from fed.site.core.validation import name_problem
from fed.site.errors import ComponentError

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_ENTRYPOINT = re.compile(rf"{_DOTTED}:{_DOTTED}")


def check_component(name: str, version: str, entrypoint: str) -> None:
    """Raise ComponentError unless all three are well formed."""
    problem = name_problem(name, "component")
    if problem:
        raise ComponentError(problem)
    if not _VERSION.fullmatch(version):
        raise ComponentError(f"invalid version {version!r}: 1-64 letters, digits, '_', '.', '+' or '-'")
    if not _ENTRYPOINT.fullmatch(entrypoint):
        raise ComponentError(
            f"invalid entrypoint {entrypoint!r}: write package.module:function (a callable in an "
            "importable module of this party's environment)"
        )


def add_component(s: Session, name: str, version: str, entrypoint: str,
                  share_metrics: bool = False) -> Component:
    """Register a component version; registering the same one again is a no-op (except
    that it sets ``share_metrics``: whether partners of a job may read the metrics it
    logs here), while another entrypoint under an existing name and version is refused
    (bump the version)."""
    check_component(name, version, entrypoint)
    existing = s.get(Component, (name, version))
    if existing is not None:
        if existing.entrypoint != entrypoint:
            raise ComponentError(
                f"component {name!r} version {version!r} is already registered with entrypoint "
                f"{existing.entrypoint!r}; register the new entrypoint under a new version"
            )
        existing.share_metrics = share_metrics
        return existing
    component = Component(name=name, version=version, entrypoint=entrypoint, share_metrics=share_metrics)
    s.add(component)
    s.flush()
    return component


def registered(s: Session) -> set[tuple[str, str]]:
    """Every ``(name, version)`` registered here."""
    return {(c.name, c.version) for c in s.scalars(select(Component))}


def list_components(s: Session) -> list[dict[str, str | bool]]:
    rows = s.scalars(select(Component).order_by(Component.name, Component.version))
    return [{"name": c.name, "version": c.version, "entrypoint": c.entrypoint,
             "share_metrics": c.share_metrics} for c in rows]
