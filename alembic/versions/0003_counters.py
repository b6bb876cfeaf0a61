"""Counters for /metrics in PostgreSQL: per-process rows that only grow, summed by name.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 15:30:00.000000
"""

from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "counters",
        sa.Column("process", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("process", "name", name=op.f("pk_counters")),
    )


def downgrade() -> None:
    op.drop_table("counters")
