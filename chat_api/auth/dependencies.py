"""`CurrentUser`: the caller's user id, from a verified bearer token, or 401. (The web client's
EventSource may send the token as a cookie on GET /v1/events instead: chat_api/web/cookie.py.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chat_api.auth.tokens import InvalidToken, TokenVerifier
from chat_api.core.errors import Problem
from chat_api.web.cookie import stream_cookie_token

bearer = HTTPBearer(auto_error=False, description="A JWT whose `sub` is the user id.")

UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="chat-api"'}


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    # The Authorization header wins; the web client's stream cookie counts only for GET /v1/events.
    token = credentials.credentials if credentials is not None else stream_cookie_token(request)
    if token is None:
        raise Problem(401, "A bearer token is required.", kind="unauthorized", headers=UNAUTHORIZED_HEADERS)
    verifier: TokenVerifier = request.app.state.verifier
    try:
        user = await verifier.subject(token)
    except InvalidToken as exc:
        headers = {
            "WWW-Authenticate": f'Bearer realm="chat-api", error="invalid_token", error_description="{exc}"'
        }
        raise Problem(
            401, f"The bearer token was refused: {exc}.", kind="unauthorized", headers=headers
        ) from None
    request.state.user = user
    return user


CurrentUser = Annotated[str, Depends(current_user)]
