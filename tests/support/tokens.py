"""Tokens for the tests: claims, HS256 and unsigned JWTs, RSA/EC keys and their JWKs, a JWKS server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.settings import TEST_SECRET

# What the JWKS servers of the tests require.
ISSUER = "https://issuer.test"
AUDIENCE = "chat-api"


def claims(sub: str | None = None, *, ttl: int = 3600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {"sub": sub or f"user-{uuid.uuid4().hex[:8]}", "iat": now, "exp": now + ttl}
    values.update(extra)
    return {k: v for k, v in values.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = TEST_SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def unsigned(payload: dict[str, Any], **headers: Any) -> str:
    token = jwt.encode(payload, "", algorithm="none", headers=headers or None)
    assert jwt.get_unverified_header(token)["alg"] == "none"
    return token


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_token(payload: dict[str, Any], secret: bytes, **headers: Any) -> str:
    """An HS256 JWT built by hand: PyJWT refuses to use a PEM public key as an HMAC secret."""
    header = {"alg": "HS256", "typ": "JWT", **headers}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


class JwksServer:
    """A real HTTP server on loopback, in a thread, serving a JWKS document and counting fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.document: Any = None  # when set, served instead of {"keys": keys}
        self.delay = 0.0  # seconds each answer takes (a slow issuer)
        self.requests = 0
        self._lock = threading.Lock()
        jwks = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with jwks._lock:
                    jwks.requests += 1
                    document = jwks.document if jwks.document is not None else {"keys": list(jwks.keys)}
                    body = json.dumps(document).encode()
                time.sleep(jwks.delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def publish(self, jwk: dict[str, Any]) -> None:
        with self._lock:
            self.keys.append(jwk)

    @property
    def fetches(self) -> int:
        with self._lock:
            return self.requests


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "RS256", "use": "sig"}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "ES256", "use": "sig"}


def signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str, **extra: Any) -> str:
    """A fresh token signed by `key` (RS256 for RSA, ES256 for EC) whose header names `kid`."""
    algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    extra = {"iss": ISSUER, "aud": AUDIENCE, **extra}  # what the JWKS servers of the tests require
    return jwt.encode(claims(**extra), key, algorithm=algorithm, headers={"kid": kid})
