"""The application factory: create_app(settings) builds the app; its lifespan owns the resources."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, fields
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

import chat_api
from chat_api.auth.streamcookie import StreamCredentials, stream_credentials
from chat_api.auth.tokens import TokenVerifier
from chat_api.core.access import AccessLog
from chat_api.core.bodylimit import BodySizeLimit
from chat_api.core.config import Settings
from chat_api.core.db import Database
from chat_api.core.errors import install_problem_handlers, serve_problems_in_openapi
from chat_api.core.nostore import NoStore
from chat_api.core.ratelimit import RateLimits
from chat_api.core.telemetry import Metrics, Telemetry
from chat_api.events.doorbell import Doorbell
from chat_api.events.hub import Hub
from chat_api.events.pruner import prune_periodically
from chat_api.events.router import router as events_router
from chat_api.health.router import router as health_router
from chat_api.messages.router import router as messages_router
from chat_api.messages.search import router as search_router
from chat_api.rooms.router import dms as dms_router
from chat_api.rooms.router import router as rooms_router

log = logging.getLogger("chat_api")

# Bodies are capped before they are read whole (Content-Length checked up front, chunked bodies
# counted as they arrive): a chat request never needs more.
MAX_BODY_BYTES = 64 * 1024
UNTRACED_PATHS = frozenset(
    {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)
# Swagger UI's and ReDoc's scripts and styles, served from the fastapi-offline wheel on our own origin
# (FastAPI's default pages load them from a CDN, without integrity, beside the web client).
DOCS_ASSETS = "/docs/assets"


@dataclass(frozen=True)
class Resources:
    """What a process holds for every request, built in one place (the lifespan). Each reaches the
    routes through its own typed dependency (AppSettings, DatabaseDep, HubDep, RateLimitsDep, the
    bearer verifier, Draining; ProcessDep: settings, database, limits and metrics at once), as the
    lifespan's state (request.state)."""

    settings: Settings
    draining: asyncio.Event  # set once shutdown begins: /readyz answers 503 and open streams end
    database: Database
    hub: Hub
    doorbell: Doorbell  # rung after every committed write (Database.committed())
    limits: RateLimits
    metrics: Metrics
    verifier: TokenVerifier
    stream_credentials: StreamCredentials | None  # the web client's stream cookie; None: no cookie

    def state(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


def _lifespan(
    settings: Settings,
    telemetry: Telemetry,
    draining: asyncio.Event,
    verifier: TokenVerifier,
    stream_credentials: StreamCredentials | None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with _resources(app, settings, telemetry, draining, verifier, stream_credentials) as state:
            yield state

    return lifespan


@asynccontextmanager
async def _resources(
    app: FastAPI,
    settings: Settings,
    telemetry: Telemetry,
    draining: asyncio.Event,
    verifier: TokenVerifier,
    stream_credentials: StreamCredentials | None,
) -> AsyncIterator[dict[str, Any]]:
    telemetry.start()
    database = Database(settings)
    await database.open()
    hub = Hub(settings, database, telemetry.tracer)
    doorbell = Doorbell(database, wake_local=hub.wake)
    database.on_commit = doorbell.ring
    resources = app.state.resources = Resources(
        settings=settings,
        draining=draining,
        database=database,
        hub=hub,
        doorbell=doorbell,
        limits=RateLimits(settings),
        metrics=Metrics(
            telemetry.meter, lambda: hub.open_streams, lambda: hub.delivered, database.connections
        ),
        verifier=verifier,
        stream_credentials=stream_credentials,
    )
    hub.start()

    async def end_streams_when_draining() -> None:
        await draining.wait()
        hub.end_streams()

    background = [asyncio.create_task(end_streams_when_draining(), name="chat-api drain watcher")]
    if settings.event_prune_interval_seconds:
        background.append(asyncio.create_task(prune_periodically(settings, database), name="chat-api pruner"))
    log.info("chat-api %s started; database %s", chat_api.__version__, settings.database_target().redacted)
    # What start-up made (modules, the app, settings, pools) lives as long as the process: kept out of
    # the collector's generations, a full collection no longer walks it on every request burst.
    gc.freeze()
    try:
        yield resources.state()
    finally:
        draining.set()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await hub.close()
        database.on_commit = None
        await doorbell.close()
        await database.close()
        log.info("chat-api stopped")
        telemetry.shutdown()


def _not_traced(scope: MutableMapping[str, Any]) -> bool:
    path = scope.get("path", "")
    return path in UNTRACED_PATHS or path.startswith(DOCS_ASSETS)


def _new_fastapi(settings: Settings, **kwargs: Any) -> FastAPI:
    """FastAPI with the API docs when CHAT_API_DOCS is on (self-hosted assets), else without them."""
    if settings.docs:
        return FastAPIOffline(static_url=DOCS_ASSETS, **kwargs)
    return FastAPI(openapi_url=None, docs_url=None, redoc_url=None, **kwargs)


def create_app(settings: Settings) -> FastAPI:
    settings.require_database()
    telemetry = Telemetry()
    draining = asyncio.Event()
    # Made now, not in the lifespan: a configuration they refuse stops start-up with one line.
    verifier = TokenVerifier(settings)
    credentials = stream_credentials(settings, verifier) if settings.web_client else None
    app = _new_fastapi(
        settings,
        title="chat-api",
        version=chat_api.__version__,
        summary="Rooms, messages and a lossless event stream over HTTP.",
        lifespan=_lifespan(settings, telemetry, draining, verifier, credentials),
        # FastAPI's own OpenTelemetry support makes the server span per request (W3C trace context
        # from the request's headers, `http.route`) and the request-duration histogram, with the
        # providers the lifespan starts. Probes and docs are not traced.
        telemetry={
            "tracing": telemetry.enabled,
            "metrics": telemetry.enabled,
            "logs": False,  # errors are logged by our handlers, and reach OTLP through logging
            "operation_spans": False,
            "auto_configure": False,
            "tracer_provider": telemetry.tracer_provider,
            "meter_provider": telemetry.meter_provider,
            "exclude": _not_traced,
        },
    )
    # Before the lifespan runs: the server's signal handler sets `draining`. (The lifespan adds
    # `resources`; requests reach them through their dependencies, never through app.state.)
    app.state.telemetry = telemetry
    app.state.draining = draining
    install_problem_handlers(app)
    serve_problems_in_openapi(app)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(NoStore)
    app.add_middleware(AccessLog)
    app.include_router(health_router)
    app.include_router(rooms_router)
    app.include_router(messages_router)
    app.include_router(dms_router)
    app.include_router(search_router)
    app.include_router(events_router)
    if settings.web_client:
        from chat_api.web.router import install_web_client

        install_web_client(app)
    return app
