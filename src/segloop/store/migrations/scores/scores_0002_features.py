"""scores: the model's feature vector per image and model version, which batch-mode strategies
(``typiclust``) order the pool by; cached like the scores so `GET /next` needs no network pass
for images already described.

Revision ID: scores_0002
Revises: scores_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "scores_0002"
down_revision = "scores_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "al_features",
        sa.Column("image_id", sa.String, primary_key=True),
        sa.Column("model", sa.String, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String, primary_key=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("computed_at", sa.String, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("al_features")
