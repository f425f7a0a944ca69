"""Caps request bodies before they are read whole: a declared Content-Length over the cap is refused
at once, and a chunked body is counted as it arrives and cut off when it passes the cap. (The request
head has its own cap in the HTTP server: chat_api/server.py.)"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chat_api.core.errors import problem_response

DETAIL = "The request body is larger than the service accepts ({limit} bytes)."


class BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException, so FastAPI's body parsing lets it through to the
    problem handler instead of turning it into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, DETAIL.format(limit=limit))


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                response = problem_response(
                    413, DETAIL.format(limit=self.max_bytes), headers={"Connection": "close"}
                )
                await response(scope, receive, send)
                return
            chunked = chunked or name == b"transfer-encoding"
        if not chunked:
            # No body, or one of the declared (and checked) length, which the server enforces.
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)
