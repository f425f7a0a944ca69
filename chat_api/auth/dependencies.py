"""`CurrentUser`: the caller's user id, from a verified bearer token, or 401. (The web client's
EventSource may send the token as a cookie on GET /v1/events instead: chat_api/web/cookie.py.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from chat_api.auth.tokens import InvalidToken, TokenVerifier
from chat_api.core.errors import Problem
from chat_api.web.cookie import stream_cookie_token

UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="chat-api"'}


def bearer_token(request: Request) -> str | None:
    """The token of the request's `Authorization: Bearer` header, if it has one."""
    scheme, credentials = get_authorization_scheme_param(request.headers.get("authorization"))
    return credentials if scheme.lower() == "bearer" and credentials else None


class BearerUser(HTTPBearer):
    """The bearer security scheme (it appears in OpenAPI as FastAPI's HTTPBearer does) that also
    verifies the token: one dependency per request instead of two."""

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        # The Authorization header wins; the web client's stream cookie counts only for GET /v1/events.
        token = bearer_token(request) or stream_cookie_token(request)
        if token is None:
            raise Problem(
                401, "A bearer token is required.", kind="unauthorized", headers=UNAUTHORIZED_HEADERS
            )
        verifier: TokenVerifier = request.app.state.verifier
        try:
            principal = await verifier.verify(token)
        except InvalidToken as exc:
            challenge = f'Bearer realm="chat-api", error="invalid_token", error_description="{exc}"'
            headers = {"WWW-Authenticate": challenge}
            raise Problem(
                401, f"The bearer token was refused: {exc}.", kind="unauthorized", headers=headers
            ) from None
        request.state.user = principal.user
        request.state.principal = principal  # GET /v1/events ends the stream at its expiry
        return principal.user


current_user = BearerUser(scheme_name="HTTPBearer", description="A JWT whose `sub` is the user id.")
CurrentUser = Annotated[str, Depends(current_user)]
