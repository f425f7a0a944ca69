"""One access-log line per request: method, route template, status, duration, user id.
Never the query string or headers (they may carry tokens), never bodies. Probes are not logged."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("chat_api.access")

UNLOGGED_PATHS = frozenset({"/healthz", "/readyz"})


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLOGGED_PATHS or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app fails before answering, the error handler answers 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "(no route)"
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            user = scope.get("state", {}).get("user")
            log.info(
                "%s %s %d %.1fms",
                scope["method"],
                template,
                status,
                duration_ms,
                extra={
                    "http.request.method": scope["method"],
                    "http.route": template,
                    "http.response.status_code": status,
                    "duration_ms": duration_ms,
                    "user.id": user,
                },
            )
