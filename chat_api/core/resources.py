"""`ProcessDep`: the process's settings, database, rate limits and metrics in one dependency, for a
route that needs several of them (the send). Each FastAPI dependency costs its own pass through
FastAPI's dependency machinery on every request (tens of µs), far more than reading it."""

from __future__ import annotations

from typing import Annotated, NamedTuple

from fastapi import Depends, Request

from chat_api.core.config import Settings
from chat_api.core.db import Database
from chat_api.core.ratelimit import RateLimits
from chat_api.core.telemetry import Metrics


class Process(NamedTuple):
    """What the lifespan holds for every request (chat_api/app.py's Resources), by type."""

    settings: Settings
    database: Database
    limits: RateLimits
    metrics: Metrics


# async, though it awaits nothing: FastAPI runs plain `def` dependencies in a thread pool.
async def _process(request: Request) -> Process:
    state = request.state
    return Process(state.settings, state.database, state.limits, state.metrics)


ProcessDep = Annotated[Process, Depends(_process)]
