"""Bearer tokens: verify JWTs (HS256 secret or an OIDC issuer's JWKS) and mint HS256 ones."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, NamedTuple

import jwt

from chat_api.core.config import Settings, parse_jwt_keys
from chat_api.core.secretfile import SecretFile
from chat_api.core.wire import storable

log = logging.getLogger("chat_api.auth")

LEEWAY_SECONDS = 30  # clock skew tolerated on exp / nbf / iat (the contract allows at most 60)
SYMMETRIC_ALGORITHMS = ["HS256"]
ASYMMETRIC_ALGORITHMS = ["RS256", "ES256"]
MAX_SUBJECT_CHARS = 255
JWKS_MIN_REFRESH_SECONDS = 10.0  # an unknown kid triggers a refetch at most this often
JWKS_MAX_AGE_SECONDS = 3600.0
# Verified tokens remembered (a client sends the same token with every request until it renews it);
# the oldest entry is dropped first. An entry is the token (HS256 ~200 bytes, an OIDC issuer's up to
# a few KB) and its Principal: ~5 MB full with HS256, ~30 MB with large OIDC tokens.
VERIFIED_TOKENS_CACHED = 10_000


_TIME_CLAIMS = ("exp", "nbf", "iat")
_NUMBERS = (int, float)  # exact types: bool is an int to isinstance(); inf never gets here (int() fails)


class Principal(NamedTuple):
    """Who a verified credential speaks for, and until when (its `exp`, seconds since the epoch):
    a stream opened with it ends there (chat_api/events/hub.py)."""

    user: str
    expires_at: float


class InvalidToken(Exception):
    """The token is missing, malformed, unsigned, expired or not for us. The message is a short fixed
    phrase: it goes into the WWW-Authenticate challenge, where quotes are not allowed."""


class JwksCache:
    """The issuer's signing keys by kid, fetched lazily and refetched on an unknown kid."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> jwt.PyJWK:
        seen = self.fetched_at
        stale = time.monotonic() - seen > JWKS_MAX_AGE_SECONDS
        if stale or kid not in self.keys:
            await self._refresh(seen, force=stale)
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        if kid is None or kid not in self.keys:
            raise InvalidToken("signing key is unknown")
        return self.keys[kid]

    async def _refresh(self, seen: float, *, force: bool) -> None:
        """Fetches the key set, once for everyone waiting: `seen` is the fetch the caller found
        wanting; if another one finished while the caller waited for the lock, its result is used
        (single flight: one fetch per expiry, however many requests queued behind it)."""
        async with self._lock:
            if self.fetched_at != seen:
                return
            if not force and time.monotonic() - self.fetched_at < JWKS_MIN_REFRESH_SECONDS:
                return
            import httpx  # only JWKS deployments need it: keeps it out of start-up otherwise

            try:
                async with httpx.AsyncClient(timeout=5.0) as client:
                    response = await client.get(self.url)
                    response.raise_for_status()
                document = response.json()
                if not isinstance(document, dict):
                    raise ValueError("the JWKS document is not a JSON object")
                key_set = jwt.PyJWKSet.from_dict(document)
            except (httpx.HTTPError, ValueError, jwt.PyJWKSetError) as exc:
                log.warning("cannot fetch the JWKS from %s: %s", self.url, exc)
                self.fetched_at = time.monotonic()  # back off; keep the keys we had
                return
            self.keys = {
                k.key_id: k for k in key_set.keys if k.key_id and k.algorithm_name in ASYMMETRIC_ALGORITHMS
            }
            self.fetched_at = time.monotonic()


class TokenVerifier:
    """Verifies tokens: the HS256 keys are prepared once (CHAT_API_JWT_SECRET_FILE's again only when
    the file changes, looked at once a second at most), JWKS keys are fetched once per kid.

    A token that verified is remembered (the exact string, so a token that differs in any byte is
    verified afresh) until its `exp`, and only as long as the keys it was verified with are still the
    keys: a key file that changes, or a JWKS that is refetched or due for a refetch, forgets every
    remembered token. What verification checks (signature, claims, `nbf`/`iat`, the lifetime, the
    subject) cannot turn false before `exp` with the same keys, so a remembered answer is the answer
    verification would give. Failures are never remembered."""

    def __init__(self, settings: Settings) -> None:
        settings.require_auth()
        self.secrets: tuple[bytes, ...] = ()
        self.secret_file: SecretFile[tuple[bytes, ...]] | None = None
        if settings.jwt_secret is not None:
            self.secrets = (settings.jwt_secret.get_secret_value().encode(),)
        elif settings.jwt_secret_file is not None:
            self.secret_file = SecretFile(settings.jwt_secret_file, _encoded_keys, "CHAT_API_JWT_SECRET_FILE")
        self.jwks = JwksCache(settings.jwt_jwks_url) if settings.jwt_jwks_url else None
        self.max_lifetime = settings.jwt_max_lifetime_seconds
        required = ["exp", "sub", "iat"] if self.max_lifetime else ["exp", "sub"]
        self._checks: dict[str, Any] = {
            "audience": settings.jwt_audience,
            "issuer": settings.jwt_issuer,
            "leeway": LEEWAY_SECONDS,
            "options": {"require": required, "verify_aud": settings.jwt_audience is not None},
        }
        # token -> (its Principal, the key set it was verified with); insertion order is age.
        self._verified: dict[str, tuple[Principal, object]] = {}

    async def subject(self, token: str) -> str:
        """The verified token's `sub`, or InvalidToken."""
        return (await self.verify(token)).user

    async def verify(self, token: str) -> Principal:
        """The verified token's `sub` and `exp`, or InvalidToken."""
        remembered = self._verified.get(token)
        if remembered is not None:
            principal, keys = remembered
            if keys is self._key_set() and time.time() < principal.expires_at:
                return principal
            del self._verified[token]
        principal = await self._verify(token)
        # Read after verifying: the keys it was verified with (a JWKS refetch happens inside).
        keys = self._key_set()
        if keys is not None and time.time() < principal.expires_at:
            if len(self._verified) >= VERIFIED_TOKENS_CACHED:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = (principal, keys)
        return principal

    def _key_set(self) -> object:
        """The keys tokens are verified with now, as an object that is replaced whenever they change;
        None when they are due for a refetch (the JWKS is older than its maximum age)."""
        if self.jwks is None:
            return self.hs256_keys()
        if time.monotonic() - self.jwks.fetched_at > JWKS_MAX_AGE_SECONDS:
            return None
        return self.jwks.keys

    async def _verify(self, token: str) -> Principal:
        try:
            if self.jwks is None:
                claims = self._hs256(token)
            else:
                key = await _issuer_key(self.jwks, token)
                claims = jwt.decode(token, key, algorithms=ASYMMETRIC_ALGORITHMS, **self._checks)
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token has expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("token is not for this service (audience)") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("token is from another issuer") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token is not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"token lacks the {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("token signature does not verify") from None
        except jwt.InvalidAlgorithmError:
            raise InvalidToken("token algorithm is not accepted") from None
        except jwt.DecodeError:
            raise InvalidToken("token is malformed") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("token is not valid") from None
        # PyJWT compares int(claim), so "1e9" (a string) or true passed; NumericDate is a JSON number.
        for name in _TIME_CLAIMS:
            if name in claims and type(claims[name]) not in _NUMBERS:
                raise InvalidToken(f"token {name} claim is not a number")
        if self.max_lifetime and claims["exp"] - claims["iat"] > self.max_lifetime:
            raise InvalidToken("token lifetime is longer than this service accepts")
        subject = claims["sub"]
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_CHARS or not storable(subject):
            raise InvalidToken("token subject is not valid")
        return Principal(subject, claims["exp"])

    def hs256_keys(self) -> tuple[bytes, ...]:
        """The HS256 keys now (the first signs); empty with a JWKS."""
        return self.secrets if self.secret_file is None else self.secret_file.current()

    def _hs256(self, token: str) -> dict[str, Any]:
        """Claims of a token signed with one of the keys. The signing (first) key is tried first, so a
        single key costs one decode as before; the others only for a token that it does not verify
        (an old key during a rotation). The signature is checked before any claim."""
        secrets = self.hs256_keys()
        try:
            return jwt.decode(token, secrets[0], algorithms=SYMMETRIC_ALGORITHMS, **self._checks)
        except jwt.InvalidSignatureError:
            for secret in secrets[1:]:
                try:
                    return jwt.decode(token, secret, algorithms=SYMMETRIC_ALGORITHMS, **self._checks)
                except jwt.InvalidSignatureError:
                    continue
            raise


def _encoded_keys(text: str) -> tuple[bytes, ...]:
    return tuple(key.encode() for key in parse_jwt_keys(text))


async def _issuer_key(jwks: JwksCache, token: str) -> Any:
    """The issuer's key named by the token's kid, for the token's (asymmetric) algorithm."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise InvalidToken("token is malformed") from None
    if header.get("alg") not in ASYMMETRIC_ALGORITHMS:
        raise InvalidToken("token algorithm is not accepted")
    jwk = await jwks.key(header.get("kid"))
    if jwk.algorithm_name != header["alg"]:
        raise InvalidToken("token algorithm does not match its key")
    return jwk.key


def mint_token(secret: str, subject: str, ttl_seconds: int = 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": subject, "iat": now, "exp": now + ttl_seconds}, secret, algorithm="HS256")
