"""Alembic environment: always handed a live connection by crosspost.migrations.upgrade."""

from __future__ import annotations

from alembic import context

from crosspost.queue import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `crosspost db upgrade`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
