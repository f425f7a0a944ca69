"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

# Expand/contract (docs/deploy.md, "Upgrades"): this migration runs in the next release's wave-4 Job
# while the PREVIOUS release still serves, and stays applied if that release is rolled back to. So it
# must keep the previous release's code working:
# - expand only: new tables, new columns that are nullable or have a default, new indexes
#   (CREATE INDEX CONCURRENTLY in a migration of its own, outside a transaction), new functions
#   under new names or compatible replacements;
# - never rename, drop or narrow what the previous release reads or writes (a column, a table, a
#   function's signature, a NOT NULL on a column it does not fill): that is a contract step, one
#   release LATER, once no running release uses the old shape;
# - keep it short and lock-light: it waits at most 5 s for a lock (migrations/env.py) and the Job
#   retries; backfill large tables in batches, not in one UPDATE.
# tests/test_upgrade.py runs the previous release's code against the new head.

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
