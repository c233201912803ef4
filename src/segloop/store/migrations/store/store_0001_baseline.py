"""store: the schema as segloop created it before Alembic (2026-12-03): images, label revisions,
label classes, models and their versions, store_meta.

Revision ID: store_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "store_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "label_classes",
        sa.Column("value", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("red", sa.Integer, nullable=False),
        sa.Column("green", sa.Integer, nullable=False),
        sa.Column("blue", sa.Integer, nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("id_key", sa.String(128), nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("modality", sa.String(64), nullable=False),
        sa.Column("shape", sa.JSON, nullable=False),
        sa.Column("spacing", sa.JSON, nullable=False),
        sa.Column("affine", sa.JSON, nullable=False),
        sa.Column("channels", sa.Integer, nullable=False),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("label_state", sa.String(8), nullable=False),
        sa.Column("latest_revision", sa.Integer, nullable=True),
        sa.Column("latest_author", sa.Text, nullable=True),
    )
    op.create_index("ix_images_created", "images", ["created_at", "id"])
    op.create_index("ix_images_label_state", "images", ["label_state"])
    op.create_table(
        "label_revisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image_id", sa.String(128), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("parent", sa.Integer, nullable=True),
        sa.Column("author", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("voxel_counts", sa.JSON, nullable=False),
        sa.Column("finalized_by", sa.Text, nullable=True),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("image_id", "revision", name="uq_label_revisions_image_revision"),
    )
    op.create_index("ix_label_revisions_status", "label_revisions", ["status", "image_id", "revision"])
    op.create_table(
        "models",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("current_version", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(128), sa.ForeignKey("models.name", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("checkpoint", sa.Text, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("trained_on", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("model", "version", name="uq_model_versions_model_version"),
    )
    op.execute(sa.text("INSERT INTO store_meta (key, value) VALUES ('schema_version', '1')"))


def downgrade() -> None:
    for table in ("model_versions", "models", "label_revisions", "images", "label_classes", "store_meta"):
        op.drop_table(table)
