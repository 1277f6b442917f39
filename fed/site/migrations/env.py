"""Alembic environment of the site database: run by ``Database.migrate`` with its connection."""
from __future__ import annotations

from alembic import context

from fed.site.core.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only Database.migrate runs these migrations
    raise RuntimeError("run the site migrations through fed.site.core.db.Database.migrate")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
