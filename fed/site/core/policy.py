"""A party's approval policy: accept automatically, reject, or hold a job for a person."""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from fed.site.core.spec import JobSpec, missing_components
from fed.site.core.states import ApprovalState


class ApprovalPolicy(BaseModel):
    """``auto_accept_initiators`` and ``auto_accept_components``: a job from a listed
    initiator whose components are all listed is accepted without a person; any other
    job waits in ``awaiting_approval`` for ``fed job approve|reject``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    auto_accept_initiators: list[str] = []
    auto_accept_components: list[str] = []


@dataclass(frozen=True)
class Verdict:
    """The policy's answer: ``state`` None means "hold for a person"."""

    state: ApprovalState | None
    reason: str


def judge(policy: ApprovalPolicy, spec: JobSpec, party: str, registered: set[tuple[str, str]]) -> Verdict:
    """What ``party`` decides on ``spec`` by itself: missing components reject the job;
    the auto-accept lists accept it; anything else is held."""
    missing = missing_components(spec, party, registered)
    if missing:
        return Verdict(ApprovalState.REJECTED, "; ".join(f"{path}: {what}" for path, what in missing))
    components = sorted({t.component for t in spec.tasks})
    if spec.initiator not in policy.auto_accept_initiators:
        return Verdict(None, f"held for a person: initiator {spec.initiator!r} is not in auto_accept_initiators")
    unlisted = [c for c in components if c not in policy.auto_accept_components]
    if unlisted:
        return Verdict(None, f"held for a person: component(s) {', '.join(unlisted)} not in auto_accept_components")
    return Verdict(ApprovalState.ACCEPTED, f"accepted by policy: initiator {spec.initiator!r} and "
                   f"component(s) {', '.join(components)} are listed")
