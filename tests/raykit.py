"""Real Ray clusters for the site's tests: fed/site/localray.py (what ``fed site demo``
uses too), with job drivers that import this checkout's ``fed`` first."""
from __future__ import annotations

from pathlib import Path

from fed.cli.ports import PortLease
from fed.site.localray import LocalRayCluster as RayCluster
from fed.site.localray import new_cluster as _new_cluster
from fed.site.localray import start_clusters as _start_clusters

REPO = Path(__file__).resolve().parents[1]
__all__ = ["REPO", "RayCluster", "new_cluster", "start_clusters"]


def new_cluster(lease: PortLease, extra_path: tuple[Path, ...] = ()) -> RayCluster:
    return _new_cluster(lease, (REPO, *extra_path))


def start_clusters(lease: PortLease, count: int, extra_path: tuple[Path, ...] = ()) -> list[RayCluster]:
    return _start_clusters(lease, count, (REPO, *extra_path))
