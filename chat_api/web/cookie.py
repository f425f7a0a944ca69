"""The stream cookie: how the browser's EventSource, which cannot send an Authorization header,
authenticates `GET /v1/events` without putting the token in a URL.

`POST /v1/session` (with the bearer token in the Authorization header) sets the cookie
`chat_api_stream_<id>` = the token, HttpOnly, SameSite=Strict, Path=/v1/events; `<id>` is derived from
the user id, so two users signed in in two tabs of one browser each have their own cookie. The page
opens `EventSource('/v1/events?session=<id>')`: the `session` parameter only names which cookie to
read and is worth nothing without it. The cookie is accepted for `GET /v1/events` only (a safe
method, so it cannot be used for cross-site request forgery; SameSite=Strict keeps it off cross-site
requests anyway), only when the web client is enabled, and only when no bearer token is given: a
bearer token in the Authorization header always wins.
"""

from __future__ import annotations

import hashlib
import re

from starlette.requests import Request

COOKIE_PREFIX = "chat_api_stream_"
COOKIE_PATH = "/v1/events"
SESSION_PARAM = "session"
STREAM_ROUTE = "/v1/events"
_SESSION_ID = re.compile(r"[0-9a-f]{20}")


def session_id(user: str) -> str:
    """Names the user's stream cookie; not a secret (it is a hash of the user id)."""
    return hashlib.sha256(user.encode()).hexdigest()[:20]


def cookie_name(session: str) -> str:
    return COOKIE_PREFIX + session


def stream_cookie_token(request: Request) -> str | None:
    """The token from the stream cookie, when this request may be authenticated by one."""
    if not getattr(request.app.state.settings, "web_client", False) or request.method != "GET":
        return None
    route = request.scope.get("route")
    if getattr(route, "path", None) != STREAM_ROUTE:
        return None
    session = request.query_params.get(SESSION_PARAM, "")
    if not _SESSION_ID.fullmatch(session):
        return None
    return request.cookies.get(cookie_name(session)) or None
