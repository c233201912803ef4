"""Alembic environment of segloop's schemas (run by `segloop.store.migrations`, online only).

The caller hands over an open connection (inside its transaction, holding the schema's lock) and
the schema's version table in ``config.attributes``; there is no alembic.ini and no offline mode.
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - misuse
    raise RuntimeError("segloop's migrations run through `segloop db upgrade`, not the alembic command")

context.configure(
    connection=connection,
    version_table=config.attributes["version_table"],
    render_as_batch=True,  # SQLite cannot ALTER most things: batch mode copies the table
)
with context.begin_transaction():
    context.run_migrations()
