"""Routes of the web client: the page at `/`, its assets under `/web/`, and `/v1/session`, which gives
the page's EventSource a short-lived stream credential in a cookie (chat_api/auth/streamcookie.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chat_api.auth.dependencies import CurrentUser
from chat_api.auth.streamcookie import (
    COOKIE_PATH,
    SESSION_PARAM,
    StreamCredentials,
    cookie_name,
    cookie_path,
    session_id,
)
from chat_api.auth.tokens import Principal

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PATH = "/web"

# Everything comes from this origin: no inline script or style, no plug-ins, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",  # revalidate: a new release's files are seen at once
}

router = APIRouter(tags=["web client"])


class StreamSession(BaseModel):
    user: str
    stream_session: str
    events_url: str
    expires_in: int  # seconds: the stream ends then (`event: reauth`); ask again before


@router.post("/v1/session", response_model=StreamSession)
async def open_session(
    request: Request,
    user: CurrentUser,
    response: Response,
) -> StreamSession:
    """Sets the HttpOnly stream cookie for `GET /v1/events?session=…` (browsers' EventSource cannot
    send an Authorization header): a stream-only credential for at most 15 minutes, in a session
    cookie. Only present when the web client is enabled."""
    principal: Principal = request.state.principal  # CurrentUser: the bearer token, never the cookie
    credentials: StreamCredentials = request.state.stream_credentials
    credential, expires = credentials.mint(principal)
    session = session_id(user)
    secure = request.url.scheme == "https"  # the scope's: uvicorn trusts X-Forwarded-Proto from proxies only
    response.set_cookie(
        cookie_name(session, secure),
        credential,
        path=cookie_path(secure),
        secure=secure,
        httponly=True,
        samesite="strict",
    )  # no Max-Age or Expires: the browser forgets it when it closes
    response.headers["Cache-Control"] = "no-store"
    return StreamSession(
        user=user,
        stream_session=session,
        events_url=f"{COOKIE_PATH}?{SESSION_PARAM}={session}",
        expires_in=max(0, expires - int(time.time())),
    )


@router.delete("/v1/session", status_code=204)
async def close_session(request: Request, user: CurrentUser) -> Response:
    """Removes the caller's stream cookie (signing out)."""
    response = Response(status_code=204)
    secure = request.url.scheme == "https"
    response.delete_cookie(
        cookie_name(session_id(user), secure),
        path=cookie_path(secure),
        secure=secure,
        httponly=True,
        samesite="strict",
    )
    return response


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


class _WithHeaders:
    """Adds the page headers to every asset response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in PAGE_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_web_client(app: FastAPI) -> None:
    """Adds the page, its assets and /v1/session. Assets live under /web/ (not a catch-all mount at
    /), so unknown API paths and wrong methods keep their usual 404 and 405 problems."""
    app.include_router(router)
    assets: Any = _WithHeaders(StaticFiles(directory=STATIC_DIR))
    app.mount(ASSETS_PATH, assets, name="web")
