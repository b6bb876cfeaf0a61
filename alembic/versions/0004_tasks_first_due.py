"""tasks.first_due: when a task first became due, so /stats measures latency from it.

Expand-only: a nullable column, added without rewriting the table; the running previous
version neither reads nor writes it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 15:25:00.000000
"""

from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("first_due", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("tasks", "first_due")
