"""The site's tables (SQLAlchemy 2). Schema changes go through a new alembic migration
in ``fed/site/migrations/versions`` (a test checks the two agree).

A job's rows are the same in every party's site: each site stores the whole job (its
parties, tasks and party tasks) and every state change it has learned, with time,
reason and actor, so any party can show the job and who decided what.
"""
from __future__ import annotations

import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAME = 63  # party, task and component names (fed.names rule)
STATE = 32
METRIC_NAME = 100


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    # Newest-first lists, with and without a state filter (migration 0004).
    __table_args__ = (Index("ix_jobs_created", "created_at", "id"),
                      Index("ix_jobs_state_created", "state", "created_at", "id"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    initiator: Mapped[str] = mapped_column(String(NAME))
    scheduler: Mapped[str] = mapped_column(String(NAME))
    sync_mode: Mapped[str] = mapped_column(String(16))
    spec_json: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(STATE), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobParty(Base):
    """One party of a job, its site and its decision on the job."""

    __tablename__ = "job_parties"
    __table_args__ = (ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),)

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    party: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    site_url: Mapped[str] = mapped_column(String(300))
    holds_data: Mapped[bool] = mapped_column(Boolean, default=True)
    approval: Mapped[str] = mapped_column(String(STATE), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),)

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    component: Mapped[str] = mapped_column(String(NAME))
    version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(STATE))
    reason: Mapped[str] = mapped_column(Text, default="")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    timeout_s: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PartyTask(Base):
    __tablename__ = "party_tasks"
    __table_args__ = (
        ForeignKeyConstraint(["job_id", "task"], ["tasks.job_id", "tasks.name"], ondelete="CASCADE"),
    )

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    party: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    state: Mapped[str] = mapped_column(String(STATE))
    reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The attempt this row describes (0: not started yet; the task's retries add attempts).
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # This party's own run (kept at this party's site only; Ray's records die with its cluster):
    port: Mapped[int | None] = mapped_column(Integer)
    submission_id: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    log_tail: Mapped[str] = mapped_column(Text, default="")
    #: Every party's channel address for this attempt (JSON), as the scheduler sent them.
    addresses: Mapped[str] = mapped_column(Text, default="")


class ChannelPort(Base):
    """A channel port of this party's range held by one of its party tasks (unique, so two
    tasks never share one; released when the run ends)."""

    __tablename__ = "channel_ports"

    port: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    job_id: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(NAME))
    attempt: Mapped[int] = mapped_column(Integer)


class OutboxMessage(Base):
    """A call to another site not delivered yet: redelivered with backoff until the peer
    answers (every such call is idempotent), in order per peer; survives restarts."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_party", "party", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64))
    party: Mapped[str] = mapped_column(String(NAME))
    url: Mapped[str] = mapped_column(String(300))
    path: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StateChange(Base):
    """The history: every state a job, approval, task or party task took, and why."""

    __tablename__ = "state_changes"
    __table_args__ = (Index("ix_state_changes_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(16))
    task: Mapped[str | None] = mapped_column(String(NAME))
    party: Mapped[str | None] = mapped_column(String(NAME))
    from_state: Mapped[str | None] = mapped_column(String(STATE))
    to_state: Mapped[str] = mapped_column(String(STATE))
    reason: Mapped[str] = mapped_column(Text, default="")
    #: Who caused it: "party:<name>" (a peer site), "token:<name>" (a client), "site" (this site).
    actor: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Component(Base):
    """A component version this party agreed to run (registered by its own admin)."""

    __tablename__ = "components"

    name: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    entrypoint: Mapped[str] = mapped_column(String(300))
    #: Whether partners of a job may read the metrics this component logs here (default no).
    share_metrics: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    added_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Token(Base):
    """A client API token: only its SHA-256 is kept."""

    __tablename__ = "tokens"
    __table_args__ = (UniqueConstraint("token_hash", name="uq_tokens_hash"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))


class MetricPoint(Base):
    """One value a component logged (``TaskContext.log_metric``) in this party's run of a task."""

    __tablename__ = "metric_points"
    __table_args__ = (
        ForeignKeyConstraint(["job_id", "task"], ["tasks.job_id", "tasks.name"], ondelete="CASCADE"),
        Index("ix_metric_points_series", "job_id", "party", "task", "name", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(NAME))
    party: Mapped[str] = mapped_column(String(NAME))
    name: Mapped[str] = mapped_column(String(METRIC_NAME))
    step: Mapped[int | None] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Float)
    #: When the component logged it (seconds since the epoch, its own clock).
    at: Mapped[float] = mapped_column(Float)


class MetricSource(Base):
    """How far a task's ``metrics.jsonl`` has been read, and what was turned away."""

    __tablename__ = "metric_sources"
    __table_args__ = (
        ForeignKeyConstraint(["job_id", "task"], ["tasks.job_id", "tasks.name"], ondelete="CASCADE"),
    )

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    party: Mapped[str] = mapped_column(String(NAME), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Inside a line longer than the bound: skip to its end before parsing again.
    skipping: Mapped[bool] = mapped_column(Boolean, default=False)
    points: Mapped[int] = mapped_column(Integer, default=0)
    bad_lines: Mapped[int] = mapped_column(Integer, default=0)
    #: Valid points beyond the per-task bound, not stored.
    dropped: Mapped[int] = mapped_column(Integer, default=0)
