"""delivery engine: retired bindings, provider error codes, delivery history, queue indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 16:26:25.780839

On SQLite only `delivery` is rebuilt (a column changes type), both ways; the other tables get
plain `ADD COLUMN` / `DROP COLUMN`, so none of their rows or children are touched. SQLite empties
a table it drops, firing its foreign-key actions, so `delivery_event` is created after the
rebuild and dropped before the reverse one. (The rebuild does clear `failover_of`, which nothing
writes yet.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _partial(condition: str) -> dict[str, sa.TextClause]:
    return {"postgresql_where": sa.text(condition), "sqlite_where": sa.text(condition)}


def upgrade() -> None:
    with op.batch_alter_table("binding") as batch_op:
        batch_op.add_column(sa.Column("inactive_since", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("inactive_reason", sa.String(length=256), nullable=True))
        batch_op.create_index("ix_binding_service_id_id", ["service_id", "id"])

    with op.batch_alter_table("notification") as batch_op:
        batch_op.add_column(sa.Column("date_completed", sa.DateTime(), nullable=True))
        batch_op.create_index(
            "ix_notification_open",
            ["id"],
            **_partial("status IN ('queued', 'fanning_out', 'dispatched')"),
        )

    with op.batch_alter_table("job") as batch_op:
        batch_op.add_column(
            sa.Column("max_attempts", sa.Integer(), server_default=sa.text("10"), nullable=False)
        )
        batch_op.create_index("ix_job_notification_id", ["notification_id"])
        batch_op.create_index(
            "ix_job_running", ["lease_expires_at"], **_partial("status = 'running'")
        )

    with op.batch_alter_table("delivery") as batch_op:
        batch_op.add_column(sa.Column("credential_id", Id, nullable=True))
        batch_op.alter_column(
            "error_code",
            existing_type=sa.Integer(),
            type_=sa.String(length=64),
            existing_nullable=True,
            postgresql_using="error_code::varchar",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_delivery_credential_id_credential"),
            "credential",
            ["credential_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index("ix_delivery_binding_id", ["binding_id"])
        batch_op.create_index(
            "ix_delivery_credential_id", ["credential_id"], **_partial("credential_id IS NOT NULL")
        )
        batch_op.create_index(
            "ix_delivery_leased", ["lease_expires_at"], **_partial("status = 'sending'")
        )
        batch_op.create_index(
            "ix_delivery_open", ["notification_id"], **_partial("status IN ('pending', 'sending')")
        )
        batch_op.create_index(
            "ix_delivery_provider_ref", ["provider_ref"], **_partial("provider_ref IS NOT NULL")
        )

    op.create_table(
        "delivery_event",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("delivery_id", Id, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["delivery.id"],
            name=op.f("fk_delivery_event_delivery_id_delivery"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_event")),
    )
    op.create_index("ix_delivery_event_delivery_id", "delivery_event", ["delivery_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_delivery_event_delivery_id", table_name="delivery_event")
    op.drop_table("delivery_event")

    with op.batch_alter_table("delivery") as batch_op:
        batch_op.drop_index("ix_delivery_provider_ref")
        batch_op.drop_index("ix_delivery_open", **_partial("status IN ('pending', 'sending')"))
        batch_op.drop_index("ix_delivery_leased")
        batch_op.drop_index("ix_delivery_credential_id")
        batch_op.drop_index("ix_delivery_binding_id")
        batch_op.drop_constraint(
            batch_op.f("fk_delivery_credential_id_credential"), type_="foreignkey"
        )
        # Provider codes ("Unregistered") have no integer form; only Notify's numeric ones stay.
        batch_op.alter_column(
            "error_code",
            existing_type=sa.String(length=64),
            type_=sa.Integer(),
            existing_nullable=True,
            postgresql_using="CASE WHEN error_code ~ '^[0-9]+$' THEN error_code::integer END",
        )
        batch_op.drop_column("credential_id")

    # Plain DROP COLUMNs (SQLite ≥ 3.35): rebuilding these tables would cascade into their
    # children (binding_tag, delivery) when SQLite drops the old copy.
    op.drop_index("ix_job_running", table_name="job")
    op.drop_index("ix_job_notification_id", table_name="job")
    op.drop_column("job", "max_attempts")

    op.drop_index("ix_notification_open", table_name="notification")
    op.drop_column("notification", "date_completed")

    op.drop_index("ix_binding_service_id_id", table_name="binding")
    op.drop_column("binding", "inactive_reason")
    op.drop_column("binding", "inactive_since")
