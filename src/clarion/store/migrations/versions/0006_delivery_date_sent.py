"""delivery.date_sent: when the provider took the message, instead of a `sent` event row

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 23:40:00.000000

A nullable column: both engines add it in place. Deliveries sent before this keep their `sent`
event rows and have no date_sent; deliveries.history shows either.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("delivery", sa.Column("date_sent", sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("delivery", "date_sent")
