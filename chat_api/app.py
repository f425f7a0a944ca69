"""The application factory: create_app(settings) builds the app; its lifespan owns the resources."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

import chat_api
from chat_api.auth.streamcookie import stream_credentials
from chat_api.auth.tokens import TokenVerifier
from chat_api.core.access import AccessLog
from chat_api.core.bodylimit import BodySizeLimit
from chat_api.core.config import Settings
from chat_api.core.db import new_engine
from chat_api.core.errors import install_problem_handlers, serve_problems_in_openapi
from chat_api.core.nostore import NoStore
from chat_api.core.ratelimit import RateLimits
from chat_api.core.telemetry import Metrics, Telemetry
from chat_api.events.hub import Hub
from chat_api.events.pruner import prune_periodically
from chat_api.events.router import router as events_router
from chat_api.health.router import router as health_router
from chat_api.messages.router import router as messages_router
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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    draining: asyncio.Event = app.state.draining
    telemetry: Telemetry = app.state.telemetry
    telemetry.start()
    engine = app.state.engine = new_engine(settings)
    hub = app.state.hub = Hub(settings, engine, telemetry.tracer)
    app.state.metrics = Metrics(telemetry.meter, lambda: hub.open_streams, lambda: hub.delivered, engine.pool)
    hub.start()

    async def end_streams_when_draining() -> None:
        await draining.wait()
        hub.end_streams()

    background = [asyncio.create_task(end_streams_when_draining(), name="chat-api drain watcher")]
    if settings.event_prune_interval_seconds:
        background.append(asyncio.create_task(prune_periodically(settings, engine), name="chat-api pruner"))
    log.info("chat-api %s started; database %s", chat_api.__version__, settings.database_target().redacted)
    try:
        yield
    finally:
        draining.set()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await hub.close()
        await engine.dispose()
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
    app = _new_fastapi(
        settings,
        title="chat-api",
        version=chat_api.__version__,
        summary="Rooms, messages and a lossless event stream over HTTP.",
        lifespan=lifespan,
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
    app.state.settings = settings
    app.state.telemetry = telemetry
    app.state.rate_limits = RateLimits(settings)
    app.state.verifier = verifier = TokenVerifier(settings)
    # The web client's stream cookie (chat_api/auth/streamcookie.py); None: no cookie is accepted.
    app.state.stream_credentials = stream_credentials(settings, verifier) if settings.web_client else None
    # Set once shutdown begins: /readyz answers 503 and open streams end.
    app.state.draining = asyncio.Event()
    install_problem_handlers(app)
    serve_problems_in_openapi(app)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(NoStore)
    app.add_middleware(AccessLog)
    app.include_router(health_router)
    app.include_router(rooms_router)
    app.include_router(messages_router)
    app.include_router(events_router)
    if settings.web_client:
        from chat_api.web.router import install_web_client

        install_web_client(app)
    return app
