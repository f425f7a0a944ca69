"""`POST /dev/token`: sign-in for `chat-api dev` only. It mints a token for any name, so it must never
exist in `serve` (not even with CHAT_API_WEB_CLIENT=true): only devserver.create_dev_app adds it."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from chat_api.auth.tokens import mint_token
from chat_api.core.config import Settings
from chat_api.rooms.schemas import UserId

# Short: the page renews its token through this route before it runs out (static/tokens.js).
DEV_TOKEN_TTL = 3600


class DevTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sub: UserId


class DevToken(BaseModel):
    sub: str
    token: str
    expires_in: int


router = APIRouter(tags=["dev"])


@router.post("/dev/token", response_model=DevToken)
async def dev_token(new: DevTokenRequest, request: Request) -> DevToken:
    """Mint a bearer token for any user id (`chat-api dev` only; absent in `serve`)."""
    settings: Settings = request.state.settings
    secret = settings.jwt_signing_secret()
    assert secret is not None  # create_dev_app refuses to start without one
    ttl = min(DEV_TOKEN_TTL, settings.jwt_max_lifetime_seconds or DEV_TOKEN_TTL)
    token = mint_token(secret, new.sub, ttl)
    return DevToken(sub=new.sub, token=token, expires_in=ttl)
