"""scores: the active-learning score cache as segloop created it before Alembic (2026-12-03).

Revision ID: scores_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "scores_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "al_scores",
        sa.Column("image_id", sa.String, primary_key=True),
        sa.Column("model", sa.String, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("strategy", sa.String, primary_key=True),
        sa.Column("params", sa.String, primary_key=True),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("computed_at", sa.String, nullable=False),
    )
    op.create_table(
        "al_descriptors",
        sa.Column("image_id", sa.String, primary_key=True),
        sa.Column("stamp", sa.String, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("al_descriptors")
    op.drop_table("al_scores")
