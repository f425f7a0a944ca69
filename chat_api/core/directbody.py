"""A way around the ASGI send chain for a long-lived response's body: the HTTP server (chat_api/server.py)
puts a writer into the request's scope, and the event stream's live frames are written with it by the
hub, at once, instead of waking the stream's task to pass each frame through every middleware.

The writer takes a body chunk and returns True when it has written it; False when it cannot now (the
response has not started or has ended, the client is gone or is not reading: the transport's buffer
is full, or the response is not chunked): then the caller sends it the ordinary way, which waits.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

# The scope's `extensions` key of the writer: `Callable[[bytes], bool]`.
DIRECT_BODY = "chat_api.direct_body"

DirectBody = Callable[[bytes], bool]


class ChunkWriter:
    """Writes chunks of one uvicorn response cycle (uvicorn.protocols.http.httptools_impl's
    RequestResponseCycle, whose state it reads as that cycle's own `send` does). It holds the cycle
    weakly: the cycle holds the scope, which holds this, and a reference cycle would leave every
    request's objects to the garbage collector."""

    __slots__ = ("cycle",)

    # The chunk of the last body written: a frame goes to many streams one after the other, and its
    # chunk is built once for all of them.
    _last: tuple[bytes, bytes] = (b"", b"")

    def __init__(self, cycle: Any) -> None:
        self.cycle = weakref.ref(cycle)

    def __call__(self, body: bytes) -> bool:
        cycle = self.cycle()
        if (
            cycle is None
            or cycle.disconnected
            or not cycle.response_started
            or cycle.response_complete
            or not cycle.chunked_encoding
            or cycle.flow.write_paused
        ):
            return False
        last_body, chunk = ChunkWriter._last
        if body is not last_body:
            chunk = b"%x\r\n%b\r\n" % (len(body), body)
            ChunkWriter._last = (body, chunk)
        cycle.transport.write(chunk)
        return True
