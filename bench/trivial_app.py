"""The read paths' floor: the smallest ASGI app on the same server stack as chat-api serve.

uvicorn, uvloop, httptools, one process: `python -m bench.trivial_app PORT` (bench.harness starts it).
"""

from __future__ import annotations

import sys

import uvicorn

BODY = b'{"items":[],"has_more":false}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )
