"""The stream cookie: how a browser's EventSource, which cannot send an Authorization header,
authenticates `GET /v1/events` without putting a token in a URL, and without the cookie being worth
more than that one stream for a few minutes.

`POST /v1/session` (with the bearer token in the Authorization header) sets the cookie
`chat_api_stream_<id>` (`__Host-chat_api_stream_<id>`, Secure, Path=/ over https: the prefix requires
that path) to a **stream credential**: the user id and an expiry (at most CREDENTIAL_SECONDS, never
past the token's `exp`), signed with HMAC-SHA256 under a key derived from the configured key
material, so every replica verifies what any replica minted. It is a session cookie (no Max-Age, gone
when the browser closes), HttpOnly, SameSite=Strict; DELETE /v1/session expires it. `<id>` is derived
from the user id, so two users in two tabs of one browser each have their own cookie; the page opens
`EventSource('/v1/events?session=<id>')`, and the `session` parameter only names the cookie.

The credential is accepted on `GET /v1/events` only (the one dependency that reads it), only when the
web client is enabled, and only when no bearer token is given; it is never a bearer token (its form is
not a JWT, and the bearer path never looks at cookies). A stream opened with it ends at its expiry
like any other (`event: reauth`); the page gets a new one first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Callable

from starlette.requests import Request

from chat_api.auth.tokens import InvalidToken, Principal, TokenVerifier
from chat_api.core.config import ConfigError, Settings

COOKIE_PREFIX = "chat_api_stream_"
HOST_PREFIX = "__Host-"  # browsers keep such a cookie only if Secure, host-only and Path=/
COOKIE_PATH = "/v1/events"
SESSION_PARAM = "session"
CREDENTIAL_SECONDS = 15 * 60  # the longest a credential lives (read at each mint: tests shorten it)
VERSION = "s1"
# Derivation label: a credential key is never a JWT key, so neither can stand in for the other.
_LABEL = b"chat-api stream credential v1"
_SESSION_ID = re.compile(r"[0-9a-f]{20}")
_EXPIRY = re.compile(r"[0-9]{1,12}")


def session_id(user: str) -> str:
    """Names the user's stream cookie; not a secret (it is a hash of the user id)."""
    return hashlib.sha256(user.encode()).hexdigest()[:20]


def cookie_name(session: str, secure: bool = False) -> str:
    return (HOST_PREFIX if secure else "") + COOKIE_PREFIX + session


def cookie_path(secure: bool) -> str:
    return "/" if secure else COOKIE_PATH


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamCredentials:
    """Mints and verifies stream credentials. `key_material` gives the current secrets (the HS256
    keys, or CHAT_API_STREAM_COOKIE_SECRET); the first signs, every one verifies, as with the JWT
    keys, so a key rotation rotates these too. Derived keys are cached until the material changes."""

    def __init__(self, key_material: Callable[[], tuple[bytes, ...]]) -> None:
        self.key_material = key_material
        self._material: tuple[bytes, ...] | None = None
        self._keys: tuple[bytes, ...] = ()

    def _current_keys(self) -> tuple[bytes, ...]:
        material = self.key_material()
        if material is not self._material:
            self._keys = tuple(hmac.new(secret, _LABEL, hashlib.sha256).digest() for secret in material)
            self._material = material
        return self._keys

    def mint(self, principal: Principal) -> tuple[str, int]:
        """A credential for the user, and its expiry (seconds since the epoch)."""
        expires = min(int(principal.expires_at), int(time.time()) + CREDENTIAL_SECONDS)
        body = f"{VERSION}.{_b64(principal.user.encode())}.{expires}"
        mac = hmac.new(self._current_keys()[0], body.encode(), hashlib.sha256).digest()
        return f"{body}.{_b64(mac)}", expires

    def verify(self, credential: str) -> Principal:
        """The user and expiry of a valid credential, or InvalidToken."""
        parts = credential.split(".")
        if len(parts) != 4 or parts[0] != VERSION or not _EXPIRY.fullmatch(parts[2]):
            raise InvalidToken("stream credential is malformed")
        body = credential.rpartition(".")[0].encode()
        try:
            mac = _unb64(parts[3])
            user = _unb64(parts[1]).decode()
        except (binascii.Error, ValueError):
            raise InvalidToken("stream credential is malformed") from None
        if not any(
            hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), mac)
            for key in self._current_keys()
        ):
            raise InvalidToken("stream credential signature does not verify")
        expires = int(parts[2])
        if expires <= time.time():
            raise InvalidToken("stream credential has expired")
        return Principal(user, expires)


def stream_cookie(request: Request) -> str | None:
    """The stream credential of the cookie the request names, when the web client is enabled."""
    if request.state.stream_credentials is None:
        return None
    session = request.query_params.get(SESSION_PARAM, "")
    if not _SESSION_ID.fullmatch(session):
        return None
    return request.cookies.get(cookie_name(session, request.url.scheme == "https")) or None


def stream_credentials(settings: Settings, verifier: TokenVerifier) -> StreamCredentials:
    """The web client's credentials: keyed by CHAT_API_STREAM_COOKIE_SECRET if set, else by the HS256
    keys (the same on every replica). A JWKS gives no shared secret, so it needs the variable."""
    if settings.stream_cookie_secret is not None:
        secret = (settings.stream_cookie_secret.get_secret_value().encode(),)
        return StreamCredentials(lambda: secret)
    if verifier.jwks is not None:
        raise ConfigError(
            "CHAT_API_STREAM_COOKIE_SECRET is not set (the web client's stream cookie needs it "
            "with CHAT_API_JWT_JWKS_URL)"
        )
    return StreamCredentials(verifier.hs256_keys)
