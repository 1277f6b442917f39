"""Calls from this site to the other parties' sites, for running jobs: direct calls
retried with exponential backoff (tenacity) while the peer is unreachable, and delivery
of the outbox (core/outbox.py). A peer that answers with a refusal is not retried: the
refusal is the answer.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from fed.site.config import SiteConfig
from fed.site.core import outbox
from fed.site.core.db import Database
from fed.site.errors import PeerSiteError
from fed.site.peers import PeerClient

log = logging.getLogger("fed.site")
INTERCONNECT = "/v1/interconnect/jobs"


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, PeerSiteError) and exc.detail.startswith("unreachable")


class PeerCalls:
    """This site's calls to its peers (the caller's identity is this party's certificate)."""

    def __init__(self, config: SiteConfig, db: Database, attempts: int = 4, timeout_s: float = 15.0) -> None:
        self.config, self.db = config, db
        self._attempts, self._timeout_s = attempts, timeout_s

    def call(self, party: str, url: str, method: str, path: str, body: dict[str, Any] | None = None,
             attempts: int | None = None) -> Any:
        """One call, retried with backoff (0.25 s, 0.5 s, 1 s, ...) while the peer is unreachable."""
        retrying = Retrying(stop=stop_after_attempt(attempts or self._attempts),
                            wait=wait_exponential(multiplier=0.25, max=5),
                            retry=retry_if_exception(_unreachable), reraise=True)
        for attempt in retrying:
            with attempt, PeerClient(self.config.tls, self.config.federation.parties, party, url,
                                     self._timeout_s) as peer:
                return peer.call(method, path, body)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def deliver_outbox(self) -> int:
        """Send what is due (one try each; failures wait their backoff). Returns how many
        were delivered."""
        with self.db.session() as s:
            messages = [(m.id, m.party, m.url, m.path, m.body) for m in outbox.due(s)]
        sent = 0
        for message_id, party, url, path, body in messages:
            try:
                self.call(party, url, "POST", path, json.loads(body), attempts=1)
            except PeerSiteError as exc:
                if not _unreachable(exc):  # refused: the peer's answer is final, log it
                    log.warning("site %s: %s to %s refused: %s", self.config.party, path, party, exc)
                    with self.db.session() as s:
                        outbox.delivered(s, message_id)
                    continue
                with self.db.session() as s:
                    outbox.failed(s, message_id, str(exc))
                continue
            with self.db.session() as s:
                outbox.delivered(s, message_id)
            sent += 1
        return sent
