"""The schema as SQLAlchemy describes it: the declarative base with its naming convention (the
tables of rooms/, messages/, events/ models; what Alembic compares migrations with), and the
revision this code needs. SQLAlchemy's jobs here are the table metadata and Alembic; queries run
on the driver through core/db.py."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, MetaData
from sqlalchemy.orm import DeclarativeBase

# Constraint names are part of the schema that migrations refer to: keep them predictable.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The newest migration (migrations/versions), which this code needs: /readyz is ready once the
# database has applied it (or a later one). Kept here rather than asked of Alembic, whose import would
# slow start-up; tests/test_migrations.py checks that it is Alembic's head.
SCHEMA_REVISION = "0008"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True)}  # noqa: RUF012 - SQLAlchemy's own hook
