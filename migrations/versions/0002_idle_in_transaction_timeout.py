"""Sessions of this database may not sit idle inside a transaction for more than 15 s.

An open transaction holds back every event stream (readers stop at the oldest running transaction,
see chat_api/events/log.py), so a client that forgets a transaction must not stall them for long.
Set as the database's default rather than per connection, because PgBouncer refuses it as a
startup parameter.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "DO $$ BEGIN EXECUTE format("
        "'ALTER DATABASE %I SET idle_in_transaction_session_timeout = %L', current_database(), '15s'); END $$"
    )


def downgrade() -> None:
    op.execute(
        "DO $$ BEGIN EXECUTE format("
        "'ALTER DATABASE %I RESET idle_in_transaction_session_timeout', current_database()); END $$"
    )
