"""The party's shared work volume (optional, ``work`` in values): one ReadWriteMany
PersistentVolumeClaim mounted at :data:`WORK_DIR` in the site and in every Ray pod.

A task runs on whichever Ray pod Ray picks and writes its output to
``<runner.workdir>/<job>/<task>/``; the site reads that output (results, metrics, the
board) and later tasks read it as their inputs. Only a volume every one of those pods
mounts at the same path makes the directory the same for all of them.
"""
from __future__ import annotations

from typing import Any

from fed.deploy.names import party_labels
from fed.deploy.plan import Plan

#: Where the site and every Ray node mount the work volume; the site's runner.workdir.
WORK_DIR = "/var/lib/rayfed/work"
VOLUME = "work"


def claim_name(plan: Plan) -> str:
    return f"{plan.name}-work"


def work_claim(plan: Plan) -> dict[str, Any] | None:
    """The ReadWriteMany claim; None when the values ask for no work volume."""
    work = plan.values.work
    if work is None:
        return None
    spec = {"accessModes": ["ReadWriteMany"], "storageClassName": work.storage_class,
            "resources": {"requests": {"storage": work.size}}}
    labels = party_labels(plan.party, "work")
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim_name(plan), "namespace": plan.namespace, "labels": labels},
            "spec": spec}


def work_volumes(plan: Plan) -> list[dict[str, Any]]:
    """The pod volume of the claim (none without a work volume)."""
    if plan.values.work is None:
        return []
    return [{"name": VOLUME, "persistentVolumeClaim": {"claimName": claim_name(plan)}}]


def work_mounts(plan: Plan) -> list[dict[str, Any]]:
    """The container mount at :data:`WORK_DIR` (none without a work volume)."""
    return [{"name": VOLUME, "mountPath": WORK_DIR}] if plan.values.work is not None else []
