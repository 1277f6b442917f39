"""A job's metrics as one party's site serves them: its own, and what partners share.

A person asking their own site (client API) sees every metric their party's components
logged for the job, plus the metrics each partner chose to share (``share_metrics`` of
the partner's component), fetched from the partner's site over the interconnect API.
A partner asking (interconnect API, authenticated by its certificate) gets only this
party's shared series, and only for a job it is a party of.
"""
from __future__ import annotations

from typing import Any

from fed.site.core import metrics, store
from fed.site.core.models import Job
from fed.site.errors import NotFoundError, PeerSiteError
from fed.site.peers import PeerClient
from fed.site.service import INTERCONNECT, SiteService

PEER_TIMEOUT_S = 5.0


def job_metrics(service: SiteService, job_id: str) -> dict[str, Any]:
    """``{"metrics": [series...], "unavailable": {party: why}}`` for the client API."""
    with service.db.session() as s:
        if s.get(Job, job_id) is None:
            raise NotFoundError(f"no job {job_id!r} at {service.party}'s site")
        partners = [(p.party, p.site_url) for p in store.parties_of(s, job_id) if p.party != service.party]
        out = metrics.series(s, job_id, party=service.party)
    unavailable: dict[str, str] = {}
    for party, url in partners:
        try:
            with PeerClient(service.config.tls, service.config.federation.parties, party, url,
                            PEER_TIMEOUT_S) as peer:
                answer = peer.call("GET", f"{INTERCONNECT}/{job_id}/metrics")
        except PeerSiteError as exc:
            unavailable[party] = exc.detail
            continue
        out += checked_series(answer, party)
    return {"metrics": out, "unavailable": unavailable}


def shared_metrics(service: SiteService, caller: str, job_id: str) -> dict[str, Any]:
    """This party's shared series of the job, for ``caller`` (a party of the job)."""
    service.job_for_party(caller, job_id)
    with service.db.session() as s:
        return {"metrics": metrics.series(s, job_id, party=service.party, shared_only=True)}


def checked_series(answer: Any, party: str) -> list[dict[str, Any]]:
    """The well-formed series of ``party`` in a partner's answer (a party speaks only for
    itself; anything else in the answer is dropped)."""
    items = answer.get("metrics") if isinstance(answer, dict) else None
    if not isinstance(items, list):
        return []
    return [{"party": party, "task": m["task"], "name": m["name"], "points": m["points"]}
            for m in items if _well_formed(m, party)]


def _well_formed(m: Any, party: str) -> bool:
    if not isinstance(m, dict) or m.get("party") != party:
        return False
    if not all(isinstance(m.get(k), str) for k in ("task", "name")) or not isinstance(m.get("points"), list):
        return False
    return all(isinstance(p, list) and len(p) == 3 and (p[0] is None or type(p[0]) is int)
               and all(type(v) in (int, float) for v in p[1:]) for p in m["points"])
