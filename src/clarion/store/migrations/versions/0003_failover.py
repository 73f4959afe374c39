"""failover: policies on services and notifications, failover chains, delivery steps

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00.000000

Only nullable columns are added, with plain `ADD COLUMN` / `DROP COLUMN` on both engines: no
table is rebuilt, so no rows or children are touched (see 0002 on SQLite rebuilds).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _partial(condition: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(condition), "sqlite_where": sa.text(condition)}


def upgrade() -> None:
    op.add_column("service", sa.Column("failover", sa.JSON(), nullable=True))
    op.add_column("notification", sa.Column("failover", sa.JSON(), nullable=True))
    op.add_column("delivery", sa.Column("failover_step", sa.Integer(), nullable=True))
    op.add_column("delivery", sa.Column("failover_reason", sa.String(length=16), nullable=True))
    op.create_index(
        "ix_delivery_failover",
        "delivery",
        ["notification_id", "identity", "failover_step"],
        **_partial("failover_step IS NOT NULL"),
    )
    op.create_table(
        "failover_chain",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("notification_id", Id, nullable=False),
        sa.Column("identity", sa.String(length=256), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("deadline", sa.DateTime(), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=True),
        sa.Column("failover_of", Id, nullable=True),
        sa.Column("confirmed_step", sa.Integer(), nullable=True),
        sa.Column("date_created", sa.DateTime(), nullable=False),
        sa.Column("date_updated", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["notification_id"],
            ["notification.id"],
            name=op.f("fk_failover_chain_notification_id_notification"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failover_chain")),
        sa.UniqueConstraint(
            "notification_id",
            "identity",
            name=op.f("uq_failover_chain_notification_id_identity"),
        ),
    )
    op.create_index(
        "ix_failover_chain_due", "failover_chain", ["deadline"], **_partial("deadline IS NOT NULL")
    )
    op.create_index(
        "ix_failover_chain_waiting",
        "failover_chain",
        ["notification_id"],
        **_partial("deadline IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_failover_chain_waiting", table_name="failover_chain")
    op.drop_index("ix_failover_chain_due", table_name="failover_chain")
    op.drop_table("failover_chain")
    op.drop_index("ix_delivery_failover", table_name="delivery")
    op.drop_column("delivery", "failover_reason")
    op.drop_column("delivery", "failover_step")
    op.drop_column("notification", "failover")
    op.drop_column("service", "failover")
