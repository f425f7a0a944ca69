"""The HTTP server: uvicorn (uvloop, httptools) configured from the settings, hardened where uvicorn
leaves it open, and drained on SIGTERM. `chat-api serve` and `chat-api dev` run it; the tests build
their servers with the same `server_config`.

What uvicorn does not bound by itself, and this does:
- the request head (request line and headers): at most MAX_HEAD_BYTES, refused with 431 as soon as
  more arrives, instead of being read whole first (a 4 MB header block was);
- how long a head may take: CHAT_API_HEADER_TIMEOUT_SECONDS from the connection (or the end of the
  previous response) to the end of the headers, then the connection is closed (trickled headers
  held one for 28 s and more). A stream, once its headers are in, is not affected.
Also from the settings: keep-alive, a connection limit (`limit_concurrency`; open streams count), and
which peers may set X-Forwarded-* (CHAT_API_FORWARDED_ALLOW_IPS; none by default).
"""

from __future__ import annotations

import asyncio
from asyncio import TimerHandle, Transport
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chat_api.core.config import Settings
from chat_api.core.directbody import DIRECT_BODY, ChunkWriter

# uvicorn waits this long for open requests after SIGTERM; streams end at once (the app drains
# them), so this only bounds slow ordinary requests. Keep it below the pod's grace period (30 s).
GRACEFUL_SHUTDOWN_SECONDS = 20
MAX_HEAD_BYTES = 16 * 1024
_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/problem+json\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)
_HEAD_BODY = (
    b'{"type":"about:blank","title":"Request Header Fields Too Large","status":431,'
    b'"detail":"The request line and headers are larger than %d bytes."}' % MAX_HEAD_BYTES
)


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size and a time limit on each request head."""

    head_timeout = 10.0  # set per server by `server_config`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._refused = False
        self._head_timer: TimerHandle | None = None

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head:
            # Every byte since the head began is still head: the headers are not complete yet.
            self._head_bytes += len(data)
        if (self._refused or (self._in_head and self._head_bytes > MAX_HEAD_BYTES)) and not (
            self.transport.is_closing()
        ):
            self._stop_head_timer()
            self.transport.write(_HEAD_TOO_LARGE % (len(_HEAD_BODY), _HEAD_BODY))
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        # A head that arrived in one piece is measured here, before the app sees it.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > MAX_HEAD_BYTES:
            self._refused = True  # no request cycle starts; data_received answers 431
            return
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.scope is self.scope:
            # The event stream's frames skip the send chain through it (core/directbody.py).
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[DIRECT_BODY] = ChunkWriter(self.cycle)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()  # the next request on this connection (keep-alive bounds the idle part)

    def _await_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.transport.close()


class Server(uvicorn.Server):
    """uvicorn, plus: the first SIGTERM/SIGINT starts the app's drain (readiness 503, streams end)."""

    def __init__(self, config: uvicorn.Config, draining: asyncio.Event) -> None:
        super().__init__(config)
        self.draining = draining

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        try:
            asyncio.get_running_loop().call_soon_threadsafe(self.draining.set)
        except RuntimeError:  # no loop running yet or any more
            self.draining.set()
        super().handle_exit(sig, frame)


def server_config(app: FastAPI, settings: Settings, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for `app` (its lifespan, no access log of its own: core/access.py)."""
    trusted = settings.forwarded_allow_ips
    protocol = type(
        "HttpProtocol", (HardenedHttpToolsProtocol,), {"head_timeout": settings.header_timeout_seconds}
    )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": protocol,
        "lifespan": "on",
        "access_log": False,
        "log_config": None,
        "server_header": False,
        # X-Forwarded-For/-Proto only from these peers (the ingress); nobody's by default.
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": list(trusted) if trusted else None,
        "timeout_keep_alive": settings.keepalive_timeout_seconds,
        "limit_concurrency": settings.limit_concurrency,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        **overrides,
    }
    return uvicorn.Config(app, **options)


def run_server(app: FastAPI, settings: Settings, host: str, port: int) -> None:
    Server(server_config(app, settings, host, port), app.state.draining).run()
