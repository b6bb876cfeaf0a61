"""Attempt identities, the cancel_notice policy, notice_owed, tasks deleted but owed a notice.

Expand only: the previous version keeps running against this schema. It still reads and
writes ``cancel_notice`` (the boolean "notice owed" of 0001), so that column stays, and a
trigger keeps it equal to ``notice_owed`` whichever version writes (a cancel by the previous
version also gets its notice an identity): a notice is sent once, by either version. A later
revision drops the column and the trigger once no running version uses them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 15:20:00
"""

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SYNC_FUNCTION = """
CREATE FUNCTION ntq_sync_notice_owed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.cancel_notice IS DISTINCT FROM OLD.cancel_notice THEN
        NEW.notice_owed := NEW.cancel_notice;
        IF NEW.cancel_notice THEN
            NEW.attempt_id := gen_random_uuid();
        END IF;
    ELSE
        NEW.cancel_notice := NEW.notice_owed;
    END IF;
    RETURN NEW;
END
$$
"""

# Fires only for statements that set one of the two: cancels, replays and notices, never
# the hot acquire, finish or insert.
SYNC_TRIGGER = """
CREATE TRIGGER ntq_sync_notice_owed
BEFORE UPDATE OF cancel_notice, notice_owed ON tasks
FOR EACH ROW EXECUTE FUNCTION ntq_sync_notice_owed()
"""


def upgrade() -> None:
    op.add_column("tasks", sa.Column("attempt_id", sa.Uuid(), nullable=True))
    op.add_column(
        "tasks",
        sa.Column(
            "notice_policy",
            sa.String(length=16),
            server_default=sa.text("'started'"),
            nullable=False,
        ),
    )
    op.add_column(
        "tasks",
        sa.Column("notice_owed", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column(
        "tasks", sa.Column("deleted", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    # NOT VALID: existing rows hold the default; checking them would scan the table under
    # an exclusive lock.
    op.execute(
        "ALTER TABLE tasks ADD CONSTRAINT ck_tasks_notice_policy "
        "CHECK (notice_policy IN ('started', 'always', 'never')) NOT VALID"
    )
    op.execute(
        "UPDATE tasks SET notice_owed = true, attempt_id = gen_random_uuid() WHERE cancel_notice"
    )
    op.create_index(
        "ix_tasks_notice_owed_due",
        "tasks",
        ["due"],
        unique=False,
        postgresql_where=sa.text("notice_owed"),
    )
    op.execute(SYNC_FUNCTION)
    op.execute(SYNC_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER ntq_sync_notice_owed ON tasks")
    op.execute("DROP FUNCTION ntq_sync_notice_owed()")
    op.drop_index(
        "ix_tasks_notice_owed_due", table_name="tasks", postgresql_where=sa.text("notice_owed")
    )
    op.drop_constraint(op.f("ck_tasks_notice_policy"), "tasks", type_="check")
    op.drop_column("tasks", "deleted")
    op.drop_column("tasks", "notice_owed")
    op.drop_column("tasks", "notice_policy")
    op.drop_column("tasks", "attempt_id")
