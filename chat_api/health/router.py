"""Probes for the kubelet: /healthz (the process is alive) and /readyz (it can serve traffic)."""

from __future__ import annotations

import asyncio

import asyncpg
from fastapi import APIRouter, Response
from opentelemetry.instrumentation.utils import suppress_instrumentation

from chat_api.core.config import Draining
from chat_api.core.db import DatabaseDep, DatabaseUnavailable
from chat_api.core.errors import problem_response, problem_responses
from chat_api.core.schema import SCHEMA_REVISION

router = APIRouter(tags=["health"])

READY_TIMEOUT_SECONDS = 2.0
# The schema may be ahead of this code (the next release's wave-4 migration ran while this release
# still serves; migrations are expand/contract): ready when this code's revision is among those
# `chat-api migrate` recorded as applied (chat_api/core/migrations.py), not only when it is the newest.
_SCHEMA = """
SELECT (SELECT string_agg(version_num, ',') FROM alembic_version) AS at,
       EXISTS (SELECT 1 FROM chat_schema_revisions WHERE revision = $1) AS applied
"""


@router.get("/healthz", include_in_schema=True)
async def healthz() -> dict[str, str]:
    """The process is alive (touches nothing else)."""
    return {"status": "ok"}


@router.get("/readyz", responses=problem_responses(503))
async def readyz(db: DatabaseDep, draining: Draining) -> Response:
    """Ready for traffic: the database answers and its schema is at this release's revision or ahead."""
    if draining.is_set():
        return _not_ready("shutting down")
    try:
        # Probes run every few seconds: keep their statements out of the traces.
        with suppress_instrumentation():
            async with asyncio.timeout(READY_TIMEOUT_SECONDS), db.connection() as conn:
                schema = await conn.fetchrow(_SCHEMA, SCHEMA_REVISION)
    except TimeoutError:
        return _not_ready("the database did not answer in time")
    except asyncpg.exceptions.UndefinedTableError:
        return _not_ready("the database has no schema yet: run `chat-api migrate`")
    except DatabaseUnavailable as exc:
        return _not_ready(f"the database is unavailable ({exc})")
    except Exception as exc:
        return _not_ready(f"the database does not answer as expected ({type(exc).__name__})")
    if not schema["applied"]:
        return _not_ready(
            f"the schema is at {schema['at']}, which does not include revision {SCHEMA_REVISION} "
            "of this release: run `chat-api migrate`"
        )
    return Response(b'{"status":"ready"}', media_type="application/json")


def _not_ready(reason: str) -> Response:
    return problem_response(503, f"Not ready: {reason}.", kind="not-ready", headers={"Retry-After": "1"})
