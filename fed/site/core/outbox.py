"""The outbox: calls to other sites, written in the same transaction as the change they
announce, and delivered (again and again, with backoff) until the peer answers.

Every message is idempotent at the receiver, so a redelivery after a crash between
sending and deleting is harmless. Messages to one party go out in order: a message
waits while an older one to the same party is undelivered.
"""
from __future__ import annotations

import datetime
import json
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fed.site.core.models import OutboxMessage, utcnow

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


def enqueue(s: Session, job_id: str, party: str, url: str, path: str, body: dict[str, Any],
            replaces: bool = False) -> None:
    """Queue a call; ``replaces`` drops undelivered calls of the same path to the same party
    first (a newer snapshot makes an older one pointless)."""
    if replaces:
        s.execute(delete(OutboxMessage).where(OutboxMessage.party == party, OutboxMessage.path == path,
                                              OutboxMessage.attempts == 0))
    s.add(OutboxMessage(job_id=job_id, party=party, url=url, path=path, body=json.dumps(body),
                        attempts=0, next_at=utcnow(), last_error="", created_at=utcnow()))


def due(s: Session, limit: int = 200) -> list[OutboxMessage]:
    """The oldest undelivered message of each party, if its time has come."""
    rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id).limit(limit)).all()
    now, firsts, seen = utcnow(), [], set()
    for row in rows:
        if row.party in seen:
            continue
        seen.add(row.party)
        if _aware(row.next_at) <= now:
            firsts.append(row)
    return firsts


def delivered(s: Session, message_id: int) -> None:
    s.execute(delete(OutboxMessage).where(OutboxMessage.id == message_id))


def failed(s: Session, message_id: int, error: str) -> None:
    """Try again later: 0.5 s, 1 s, 2 s, ... up to 30 s between tries."""
    row = s.get(OutboxMessage, message_id)
    if row is None:
        return
    row.attempts += 1
    row.last_error = error[:2000]
    wait = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** min(row.attempts - 1, 16))
    row.next_at = utcnow() + datetime.timedelta(seconds=wait)


def pending_count(s: Session) -> int:
    return len(s.scalars(select(OutboxMessage.id)).all())


def _aware(ts: datetime.datetime) -> datetime.datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=datetime.timezone.utc)
