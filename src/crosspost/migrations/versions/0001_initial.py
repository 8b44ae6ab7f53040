"""The queue: posts, deliveries, attempts.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from crosspost.queue import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATES = (
    "scheduled",
    "claimed",
    "published",
    "retry-waiting",
    "failed",
    "needs-review",
    "cancelled",
    "missed",
)
ACTIVE = "state IN ('claimed', 'retry-waiting', 'scheduled')"
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "posts",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("campaign", sa.String(100)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_posts_created_at", "posts", ["created_at"])
    op.create_table(
        "deliveries",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "post_id",
            sa.String(100),
            sa.ForeignKey("posts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("target", sa.String(100), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("scheduled_at", UTCDateTime, nullable=False),
        sa.Column("due_at", UTCDateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("idempotency_key", sa.String(64), nullable=False, unique=True),
        sa.Column("maybe_landed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("remote_id", sa.Text),
        sa.Column("remote_url", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_kind", sa.String(20)),
        sa.Column("published_at", UTCDateTime),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("fence", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("post_id", "target", name="uq_deliveries_post_target"),
        sa.CheckConstraint(
            "state IN ({})".format(", ".join(f"'{s}'" for s in STATES)),
            name="ck_deliveries_state",
        ),
    )
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["due_at"],
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )
    op.create_index("ix_deliveries_target_state", "deliveries", ["target", "state"])
    op.create_table(
        "attempts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column(
            "delivery_id",
            Id,
            sa.ForeignKey("deliveries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("http_status", sa.Integer),
        sa.Column("error_kind", sa.String(20)),
        sa.Column("error_message", sa.Text),
        sa.Column("remote_id", sa.Text),
        sa.Column("remote_url", sa.Text),
    )
    op.create_index("ix_attempts_delivery", "attempts", ["delivery_id"])


def downgrade() -> None:
    op.drop_table("attempts")
    op.drop_table("deliveries")
    op.drop_table("posts")
