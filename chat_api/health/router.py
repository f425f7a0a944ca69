"""Probes for the kubelet: /healthz (the process is alive) and /readyz (it can serve traffic)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from opentelemetry.instrumentation.utils import suppress_instrumentation

from chat_api.core.db import SCHEMA_REVISION, DbEngine, connection
from chat_api.core.errors import problem_response, problem_responses

router = APIRouter(tags=["health"])

READY_TIMEOUT_SECONDS = 2.0
_REVISION = "SELECT version_num FROM alembic_version"


@router.get("/healthz", include_in_schema=True)
async def healthz() -> dict[str, str]:
    """The process is alive (touches nothing else)."""
    return {"status": "ok"}


@router.get("/readyz", responses=problem_responses(503))
async def readyz(request: Request, engine: DbEngine) -> Response:
    """Ready for traffic: the database answers and its schema is at the migration head."""
    if request.app.state.draining.is_set():
        return _not_ready("shutting down")
    try:
        # Probes run every few seconds: keep their statements out of the traces.
        with suppress_instrumentation():
            async with asyncio.timeout(READY_TIMEOUT_SECONDS), connection(engine) as conn:
                revision = await conn.fetchval(_REVISION)
    except TimeoutError:
        return _not_ready("the database did not answer in time")
    except Exception as exc:
        if "alembic_version" in str(exc):
            return _not_ready("the database has no schema yet: run `chat-api migrate`")
        return _not_ready(f"the database is unavailable ({type(exc).__name__})")
    if revision != SCHEMA_REVISION:
        return _not_ready(f"the schema is at {revision}, not at {SCHEMA_REVISION}: run `chat-api migrate`")
    return Response(b'{"status":"ready"}', media_type="application/json")


def _not_ready(reason: str) -> Response:
    return problem_response(503, f"Not ready: {reason}.", kind="not-ready", headers={"Retry-After": "1"})
