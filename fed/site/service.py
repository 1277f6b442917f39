"""The approval flow between sites, as seen by one site.

1. **Submit** (client API, the initiator's site): the spec is validated, this party's
   own components are checked, the job is stored with this party's acceptance.
2. **Propose** (interconnect, initiator -> every other party): each site validates the
   spec against its federation and stores the job; the initiator's acceptance comes
   with the proposal (the caller's certificate proves who proposes).
3. **Open** (initiator -> every other party, once all hold the job): each site judges
   the job by its policy (``core/policy.py``): accept, reject (a missing component), or
   hold for a person (``fed job approve|reject``).
4. **Decision** (a party -> every other party): each decision is sent by the deciding
   party's site to all others, so every site shows every party's decision and reason.
   One rejection rejects the job everywhere; all accepting accepts it (then the
   scheduler takes over: ``on_job_state``).

If a proposal cannot be delivered, the initiator fails the job and tells the sites
that got it (**abort**). No database transaction is held during a call to a peer.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fed.site.config import SiteConfig
from fed.site.core import components, store, views
from fed.site.core.db import Database
from fed.site.core.models import Job
from fed.site.core.policy import judge
from fed.site.core.spec import JobSpec, missing_components, parse_spec
from fed.site.core.states import ApprovalState, Entity, JobState, is_final
from fed.site.errors import (
    AccessDenied,
    Conflict,
    IllegalTransitionError,
    JobSpecError,
    NotFoundError,
    PeerSiteError,
)
from fed.site.peers import PeerClient

log = logging.getLogger("fed.site")
INTERCONNECT = "/v1/interconnect/jobs"
#: Called after a step that may have changed a job's state here: ``(job_id, state)``; the
#: scheduler's hook (it may be called again with the same state).
JobStateHook = Callable[[str, str], None]


class SiteService:
    """One party's site: its database, configuration and calls to the other sites."""

    def __init__(self, config: SiteConfig, db: Database, on_job_state: JobStateHook | None = None,
                 control: Any = None) -> None:
        self.config, self.db, self.party = config, db, config.party
        self._on_job_state = on_job_state
        #: Running accepted jobs (fed.site.control.JobControl); None: this site runs nothing.
        self.control = control

    # ---- client API -------------------------------------------------------------------------
    def submit(self, data: Any, actor: str) -> dict[str, Any]:
        """Validate and store a job this party initiates, then propose it to every party."""
        spec = parse_spec(data)
        self._check_submission(spec)
        job_id = store.new_job_id()
        with self.db.session() as s:
            store.create_job(s, job_id, spec, actor, f"submitted at {self.party}'s site")
            job = store.lock_job(s, job_id)
            mine = store.job_party(s, job_id, self.party)
            store.change_state(s, Entity.APPROVAL, mine, ApprovalState.ACCEPTED, "initiator: submitted the job", actor)
            store.settle_approval(s, job, actor)
        self._propose(job_id, spec)
        return self.status(job_id)

    def _check_submission(self, spec: JobSpec) -> None:
        problems = []
        if spec.initiator != self.party:
            problems.append(("initiator", (f"this is {self.party!r}'s site: a job is submitted at its "
                             f"initiator's site, so set initiator: {self.party}")))
        problems += self._federation_problems(spec)
        with self.db.session() as s:
            problems += missing_components(spec, self.party, components.registered(s))
        if problems:
            raise JobSpecError(problems)

    def _federation_problems(self, spec: JobSpec) -> list[tuple[str, str]]:
        known = self.config.federation.parties
        return [(f"parties[{i}].name", (f"party {p.name!r} is not in {self.party}'s federation "
                 f"({', '.join(known)})")) for i, p in enumerate(spec.parties) if p.name not in known]

    def decide(self, job_id: str, accept: bool, reason: str, actor: str) -> dict[str, Any]:
        """This party's person approves or rejects a job held for them."""
        target = ApprovalState.ACCEPTED if accept else ApprovalState.REJECTED
        with self.db.session() as s:
            job = store.lock_job(s, job_id)
            if job.state != JobState.AWAITING_APPROVAL.value:
                raise Conflict(f"job {job_id} is {job.state} ({job.reason}): nothing to decide")
            mine = store.job_party(s, job_id, self.party)
            if mine is None:
                raise NotFoundError(f"party {self.party!r} is not in job {job_id}")
            store.change_state(s, Entity.APPROVAL, mine, target, reason, actor)
            store.settle_approval(s, job, actor)
            state = job.state
        self._announce(job_id, state)
        self._broadcast_decision(job_id, target, reason)
        return self.status(job_id)

    def status(self, job_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            return views.job_detail(s, job_id)

    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.session() as s:
            return views.list_jobs(s, state, limit)

    def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.session() as s:
            return views.pending_for(s, self.party, limit)

    def stop(self, job_id: str, reason: str, actor: str) -> dict[str, Any]:
        """Stop a job in every party (through its scheduler), from any party's site."""
        note = self.running().stop_job(job_id, reason, actor)
        return {**self.status(job_id), "stop": note}

    def task_logs(self, job_id: str, task: str) -> str:
        """This party's own log tail of its latest run of ``task`` (never a partner's);
        empty before the run wrote any, or at a site that runs no jobs."""
        self.status(job_id)  # NotFoundError for an unknown job
        if self.control is None:
            return ""
        return self.control.logs(job_id, task)

    def running(self) -> Any:
        """The site's JobControl; Conflict if the site was started without a runner."""
        if self.control is None:
            raise Conflict(f"the site of {self.party} runs no jobs (it was started without a runner)")
        return self.control

    # ---- interconnect API (caller = the peer's party, from its certificate) -------------------
    def receive_proposal(self, caller: str, job_id: str, data: Any) -> dict[str, Any]:
        """Store a job the initiator proposes (idempotent for the same spec)."""
        bad_id = store.job_id_problem(job_id)
        if bad_id:
            raise JobSpecError([("job_id", bad_id)])
        spec = parse_spec(data, f"job {job_id} proposed by {caller}")
        if caller != spec.initiator:
            raise AccessDenied(f"party {caller!r} proposed job {job_id} whose initiator is {spec.initiator!r}")
        if self.party not in spec.party_names:
            raise AccessDenied(f"party {self.party!r} is not a party of job {job_id}")
        problems = self._federation_problems(spec)
        if problems:
            raise JobSpecError(problems, f"job {job_id} proposed by {caller}")
        actor = f"party:{caller}"
        with self.db.session() as s:
            existing = s.get(Job, job_id)
            if existing is not None:
                if existing.spec_json != spec.to_json():
                    raise Conflict(f"job {job_id} is already held here with another spec")
                return {"party": self.party, "received": True}
            store.create_job(s, job_id, spec, actor, f"proposed by {caller}")
            initiator = store.job_party(s, job_id, caller)
            store.change_state(s, Entity.APPROVAL, initiator, ApprovalState.ACCEPTED, "initiator: proposed the job", actor)
        return {"party": self.party, "received": True}

    def open_job(self, caller: str, job_id: str) -> dict[str, Any]:
        """Every party holds the job now: judge it by this party's policy, tell the others."""
        spec = self._job_for(caller, job_id, initiator_only=True)
        with self.db.session() as s:
            verdict = judge(self.config.approval, spec, self.party, components.registered(s))
            job = store.lock_job(s, job_id)
            mine = store.job_party(s, job_id, self.party)
            if mine.approval != ApprovalState.PENDING.value or job.state != JobState.AWAITING_APPROVAL.value:
                return {"party": self.party, "approval": mine.approval, "reason": mine.reason}
            if verdict.state is None:
                mine.reason = verdict.reason  # held: the reason shows in `fed job pending`
            else:
                store.change_state(s, Entity.APPROVAL, mine, verdict.state, verdict.reason, "site:policy")
                store.settle_approval(s, job, "site:policy")
            state, approval = job.state, mine.approval
        self._announce(job_id, state)
        if verdict.state is not None:
            self._broadcast_decision(job_id, verdict.state, verdict.reason)
        return {"party": self.party, "approval": approval, "reason": verdict.reason}

    def receive_decision(self, caller: str, job_id: str, decision: str, reason: str) -> dict[str, Any]:
        """Record a peer party's own decision (a party speaks only for itself)."""
        self._job_for(caller, job_id)
        with self.db.session() as s:
            job = store.lock_job(s, job_id)
            record = store.job_party(s, job_id, caller)
            store.change_state(s, Entity.APPROVAL, record, decision, reason, f"party:{caller}")
            store.settle_approval(s, job, f"party:{caller}")
            state = job.state
        self._announce(job_id, state)
        return {"party": self.party, "job_state": state}

    def receive_abort(self, caller: str, job_id: str, reason: str) -> dict[str, Any]:
        """The initiator could not deliver the job to every party: fail it here too."""
        self._job_for(caller, job_id, initiator_only=True)
        with self.db.session() as s:
            job = store.lock_job(s, job_id)
            if not is_final(Entity.JOB, job.state):
                store.end_job(s, job, JobState.FAILED, f"aborted by initiator {caller!r}: {reason}", f"party:{caller}")
            state = job.state
        self._announce(job_id, state)
        return {"party": self.party, "job_state": state}

    def peer_view(self, caller: str, job_id: str) -> dict[str, Any]:
        """What a party of the job may see here: states and decisions, no logs."""
        self._job_for(caller, job_id)
        return self.status(job_id)

    def job_for_party(self, caller: str, job_id: str) -> JobSpec:
        """The job's spec if ``caller`` is one of its parties; else AccessDenied/NotFoundError."""
        return self._job_for(caller, job_id)

    def _job_for(self, caller: str, job_id: str, initiator_only: bool = False) -> JobSpec:
        """The job's spec if ``caller`` is one of its parties (its initiator, if required)."""
        with self.db.session() as s:
            spec = store.spec_for_party(s, job_id, caller, self.party)
        if initiator_only and caller != spec.initiator:
            raise AccessDenied(f"only the initiator {spec.initiator!r} of job {job_id} may do this")
        return spec

    # ---- calls to peers (no transaction open) ------------------------------------------------
    def _peer(self, party: str, url: str) -> PeerClient:
        return PeerClient(self.config.tls, self.config.federation.parties, party, url)

    def _others(self, job_id: str) -> list[tuple[str, str]]:
        with self.db.session() as s:
            return [(p.party, p.site_url) for p in store.parties_of(s, job_id) if p.party != self.party]

    def _propose(self, job_id: str, spec: JobSpec) -> None:
        """Deliver the job to every other party, then let them decide. A job that cannot
        reach every party fails at once (it is never left waiting for a party without it)."""
        delivered: list[tuple[str, str]] = []
        body = {"spec": spec.model_dump(exclude_none=True)}
        for party, url in self._others(job_id):
            try:
                with self._peer(party, url) as peer:
                    peer.call("POST", f"{INTERCONNECT}/{job_id}/propose", body)
                delivered.append((party, url))
            except Exception as exc:  # noqa: BLE001 - any failure fails the job, with its reason
                self._abort(job_id, delivered, f"could not propose the job to party {party!r}: {exc}")
                return
        for party, url in delivered:
            self._send(party, url, f"{INTERCONNECT}/{job_id}/open", {})

    def _abort(self, job_id: str, delivered: list[tuple[str, str]], reason: str) -> None:
        with self.db.session() as s:
            job = store.lock_job(s, job_id)
            store.end_job(s, job, JobState.FAILED, reason, f"site:{self.party}")
        self._announce(job_id, JobState.FAILED.value)
        for party, url in delivered:
            self._send(party, url, f"{INTERCONNECT}/{job_id}/abort", {"reason": reason})

    def _broadcast_decision(self, job_id: str, decision: ApprovalState, reason: str) -> None:
        body = {"decision": decision.value, "reason": reason}
        for party, url in self._others(job_id):
            self._send(party, url, f"{INTERCONNECT}/{job_id}/decision", body)

    def _send(self, party: str, url: str, path: str, body: dict[str, Any]) -> None:
        """One notification to a peer; a failure is logged (periodic reconciliation between
        sites, which would repair it, is not built yet)."""
        try:
            with self._peer(party, url) as peer:
                peer.call("POST", path, body)
        except (PeerSiteError, IllegalTransitionError) as exc:
            log.warning("site %s: %s failed: %s", self.party, path, exc)

    def _announce(self, job_id: str, state: str) -> None:
        if self._on_job_state is not None:
            self._on_job_state(job_id, state)
