"""For the client libraries' tests: whether the Python client is installed, and an HTTP transport
that plays the load balancer in front of `chat-api serve` processes (it can move to another process,
cut the streams open through it, and replay a stream from an older position)."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx

from tests.support.missing import missing


def require_python_client() -> None:
    """Skips where chat-api-client is not installed (a developer's machine); fails in CI, whose
    .ci/run installs it (pip install -e clients/python)."""
    if importlib.util.find_spec("chat_api_client") is None:
        missing("the Python client tests need chat-api-client: pip install -e clients/python", module=True)


class _CuttableStream(httpx.AsyncByteStream, httpx.SyncByteStream):
    def __init__(
        self, inner: httpx.AsyncByteStream | httpx.SyncByteStream, board: Switchboard, generation: int
    ) -> None:
        self.inner, self.board, self.generation = inner, board, generation

    def _check(self) -> None:
        if self.board.generation != self.generation:
            raise httpx.ReadError("connection cut by the test")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self.inner, httpx.AsyncByteStream)
        async for chunk in self.inner:
            self._check()
            yield chunk

    def __iter__(self) -> Iterator[bytes]:
        assert isinstance(self.inner, httpx.SyncByteStream)
        for chunk in self.inner:
            self._check()
            yield chunk

    async def aclose(self) -> None:
        assert isinstance(self.inner, httpx.AsyncByteStream)
        await self.inner.aclose()

    def close(self) -> None:
        assert isinstance(self.inner, httpx.SyncByteStream)
        self.inner.close()


@dataclass
class Switchboard(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """Sends every request to 127.0.0.1:`port` (change it to move to another server process), for
    the async and the sync client alike. cut(): every stream open now fails at its next chunk (a
    heartbeat at the latest), as a dropped connection does. `rewind_to`: the next stream request
    resumes from there instead of what the client asked (a replay the client has already seen).
    `streams`: the Last-Event-ID of each stream request, in order."""

    port: int
    generation: int = 0
    rewind_to: str | None = None
    streams: list[str | None] = field(default_factory=list)
    inner: httpx.AsyncHTTPTransport = field(default_factory=httpx.AsyncHTTPTransport)
    inner_sync: httpx.HTTPTransport = field(default_factory=httpx.HTTPTransport)

    def cut(self) -> None:
        self.generation += 1

    def _route(self, request: httpx.Request) -> None:
        request.url = request.url.copy_with(port=self.port)
        if request.url.path == "/v1/events":
            if self.rewind_to is not None:
                request.headers["Last-Event-ID"], self.rewind_to = self.rewind_to, None
            self.streams.append(request.headers.get("Last-Event-ID"))

    def _cuttable(self, response: httpx.Response, generation: int) -> httpx.Response:
        assert isinstance(response.stream, httpx.AsyncByteStream | httpx.SyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CuttableStream(response.stream, self, generation),
            extensions=response.extensions,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._route(request)
        generation = self.generation
        return self._cuttable(await self.inner.handle_async_request(request), generation)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._route(request)
        generation = self.generation
        return self._cuttable(self.inner_sync.handle_request(request), generation)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def close(self) -> None:
        self.inner_sync.close()


class LosingFirstAnswer(httpx.BaseTransport):
    """Delivers each request to the server, but loses the answer of the first one that matches
    `method path` (the connection drops after the server did the work): the client must send again."""

    def __init__(self, port: int, method: str, path: str) -> None:
        self.port, self.method, self.path = port, method, path
        self.lost: httpx.Response | None = None
        self.requests: list[httpx.Request] = []
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(port=self.port)
        self.requests.append(request)
        response = self.inner.handle_request(request)
        if self.lost is None and (request.method, request.url.path) == (self.method, self.path):
            response.read()
            self.lost = response
            raise httpx.ReadError("the answer was lost on the way back")
        return response

    def close(self) -> None:
        self.inner.close()
