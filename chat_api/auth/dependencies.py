"""`CurrentUser`: the caller's user id, from a verified bearer token, or 401. `StreamUser`: the same for
GET /v1/events, where the web client's EventSource may send a stream cookie instead
(chat_api/auth/streamcookie.py); it also gives the credential's expiry, where the stream ends."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from chat_api.auth.streamcookie import StreamCredentials, stream_cookie
from chat_api.auth.tokens import InvalidToken, Principal, TokenVerifier
from chat_api.core.errors import Problem

UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="chat-api"'}


def bearer_token(request: Request) -> str | None:
    """The token of the request's `Authorization: Bearer` header, if it has one."""
    scheme, credentials = get_authorization_scheme_param(request.headers.get("authorization"))
    return credentials if scheme.lower() == "bearer" and credentials else None


def _refused(exc: InvalidToken) -> Problem:
    challenge = f'Bearer realm="chat-api", error="invalid_token", error_description="{exc}"'
    return Problem(
        401,
        f"The bearer token was refused: {exc}.",
        kind="unauthorized",
        headers={"WWW-Authenticate": challenge},
    )


def _missing() -> Problem:
    return Problem(401, "A bearer token is required.", kind="unauthorized", headers=UNAUTHORIZED_HEADERS)


async def _principal(request: Request, *, stream_cookie_allowed: bool) -> Principal:
    """The verified caller: the Authorization header wins; the stream cookie only where allowed."""
    token = bearer_token(request)
    try:
        if token is not None:
            verifier: TokenVerifier = request.state.verifier
            principal = await verifier.verify(token)
        else:
            credential = stream_cookie(request) if stream_cookie_allowed else None
            if credential is None:
                raise _missing()
            credentials: StreamCredentials = request.state.stream_credentials
            principal = credentials.verify(credential)
    except InvalidToken as exc:
        raise _refused(exc) from None
    request.state.user = principal.user
    request.state.principal = principal
    return principal


class BearerUser(HTTPBearer):
    """The bearer security scheme (it appears in OpenAPI as FastAPI's HTTPBearer does) that also
    verifies the token: one dependency per request instead of two."""

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        return (await _principal(request, stream_cookie_allowed=False)).user


class StreamPrincipal(HTTPBearer):
    """GET /v1/events: a bearer token, or (web client) the stream cookie; who and until when."""

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        return await _principal(request, stream_cookie_allowed=True)


current_user = BearerUser(scheme_name="HTTPBearer", description="A JWT whose `sub` is the user id.")
CurrentUser = Annotated[str, Depends(current_user)]
stream_principal = StreamPrincipal(scheme_name="HTTPBearer", description="A JWT whose `sub` is the user id.")
StreamUser = Annotated[Principal, Depends(stream_principal)]
