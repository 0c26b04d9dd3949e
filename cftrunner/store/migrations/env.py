"""Alembic's entry point: run the migrations on the connection `cftrunner.store.migrations`
passes in, inside the transaction that holds the migration lock."""

from __future__ import annotations

from alembic import context

from cftrunner.store.schema import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
