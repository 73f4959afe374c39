"""Alembic environment: runs on the connection `clarion.store.migrate` hands over."""

from __future__ import annotations

from alembic import context

from clarion.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite rebuilds tables for most ALTERs
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
