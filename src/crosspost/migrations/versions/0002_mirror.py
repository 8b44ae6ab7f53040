"""The website mirror: the posts it received, and the webhook ids it has processed.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crosspost.queue import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mirror_posts",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("webhook_id", sa.String(200), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("media", sa.JSON, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("published_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_mirror_posts_published_at", "mirror_posts", ["published_at"])
    op.create_index("ix_mirror_posts_webhook_id", "mirror_posts", ["webhook_id"])
    op.create_table(
        "mirror_events",
        sa.Column("webhook_id", sa.String(200), primary_key=True),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("post_id", sa.String(100)),
        sa.Column("received_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mirror_events")
    op.drop_table("mirror_posts")
