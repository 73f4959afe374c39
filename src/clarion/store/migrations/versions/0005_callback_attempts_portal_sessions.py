"""delivery callback attempts for the debugger; server-side portal sessions

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 23:10:00.000000

Two new tables, nothing existing is changed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "delivery_callback_attempt",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("notification_id", Id, nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notification.id"],
            name=op.f("fk_delivery_callback_attempt_notification_id_notification"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_callback_attempt")),
    )
    op.create_index(
        "ix_delivery_callback_attempt_notification",
        "delivery_callback_attempt",
        ["notification_id", "sequence", "id"],
        unique=False,
    )
    op.create_table(
        "portal_session",
        sa.Column("key_digest", sa.String(length=64), nullable=False),
        sa.Column("account_id", Id, nullable=False),
        sa.Column("username", sa.String(length=34), nullable=False),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["account.id"],
            name=op.f("fk_portal_session_account_id_account"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key_digest", name=op.f("pk_portal_session")),
    )
    op.create_index(
        op.f("ix_portal_session_account_id"), "portal_session", ["account_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_portal_session_account_id"), table_name="portal_session")
    op.drop_table("portal_session")
    op.drop_index(
        "ix_delivery_callback_attempt_notification", table_name="delivery_callback_attempt"
    )
    op.drop_table("delivery_callback_attempt")
