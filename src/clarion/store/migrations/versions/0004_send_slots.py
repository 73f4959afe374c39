"""send slots: per-credential rate limits; deliveries listed by notification in id order

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 20:30:00.000000

`delivery.slot_reserved` is added with a server default, which both engines do in place (SQLite's
`ADD COLUMN … NOT NULL DEFAULT` rewrites nothing), so no table is rebuilt.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column(
        "delivery",
        sa.Column("slot_reserved", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.create_index(
        "ix_delivery_notification_id_id", "delivery", ["notification_id", "id"], unique=False
    )
    op.create_table(
        "send_slot",
        sa.Column("credential_id", Id, autoincrement=False, nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["credential.id"],
            name=op.f("fk_send_slot_credential_id_credential"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("credential_id", name=op.f("pk_send_slot")),
    )


def downgrade() -> None:
    op.drop_table("send_slot")
    op.drop_index("ix_delivery_notification_id_id", table_name="delivery")
    op.drop_column("delivery", "slot_reserved")
