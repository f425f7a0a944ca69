"""Bearer-token authentication through real HTTP: HS256, issuer/audience, JWKS (RS256/ES256, caching,
rotation, algorithm confusion) and the `chat-api token` command."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

import chat_api.auth.tokens
from chat_api import cli
from chat_api.auth.tokens import TokenVerifier
from chat_api.core.config import load_settings, parse_jwt_keys
from chat_api.core.secretfile import RECHECK_SECONDS, SecretFile
from tests.support.ports import free_port
from tests.support.problems import assert_problem
from tests.support.secretvolume import SecretVolume
from tests.support.servers import RunningServer, ServerFactory
from tests.support.settings import TEST_SECRET
from tests.support.tokens import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    claims,
    ec_jwk,
    ec_key,
    hmac_token,
    hs256,
    rsa_jwk,
    rsa_key,
    signed,
    unsigned,
)

ROOMS = "/v1/rooms"

# RFC 6750 §3: error_description is a quoted-string of %x20-21 / %x23-5B / %x5D-7E (no `"` or `\`).
AUTH_PARAM = re.compile(r'\s*([A-Za-z_]+)="([\x20\x21\x23-\x5b\x5d-\x7e]*)"\s*(?:,|$)')


# --- helpers ---------------------------------------------------------------------------------------


async def get_rooms(base_url: str, authorization: str | None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
        return await client.get(ROOMS, headers=headers)


async def assert_accepted(base_url: str, token: str) -> None:
    r = await get_rooms(base_url, f"Bearer {token}")
    assert r.status_code == 200, r.text


async def assert_refused(base_url: str, authorization: str | None) -> dict[str, Any]:
    """A 401 problem with a Bearer challenge that never echoes the presented credentials."""
    r = await get_rooms(base_url, authorization)
    body = assert_problem(r, 401)
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer"), challenge
    if authorization and " " in authorization:
        credentials = authorization.split(" ", 1)[1]
        assert credentials not in r.text, r.text
        assert credentials not in challenge, challenge
        for part in credentials.split("."):  # not even one segment of a JWT
            if len(part) >= 16:
                assert part not in r.text and part not in challenge
    return body


# --- HS256 -----------------------------------------------------------------------------------------


async def test_valid_hs256_token_is_accepted(server: RunningServer) -> None:
    await assert_accepted(server.url, hs256(claims()))


async def test_missing_authorization_header_is_refused(server: RunningServer) -> None:
    await assert_refused(server.url, None)


async def test_basic_authorization_is_refused(server: RunningServer) -> None:
    await assert_refused(server.url, "Basic " + base64.b64encode(b"alice:secret-password").decode())


async def test_empty_bearer_is_refused(server: RunningServer) -> None:
    await assert_refused(server.url, "Bearer")


async def test_token_that_is_not_a_jwt_is_refused(server: RunningServer) -> None:
    await assert_refused(server.url, "Bearer not-a-jwt")


async def test_token_signed_with_wrong_secret_is_refused(server: RunningServer) -> None:
    await assert_refused(server.url, f"Bearer {hs256(claims(), 'another-secret-' + 'y' * 32)}")


async def test_expired_token_is_refused(server: RunningServer) -> None:
    now = int(time.time())
    body = await assert_refused(server.url, f"Bearer {hs256(claims(iat=now - 7200, exp=now - 3600))}")
    assert "expired" in body["detail"]


async def test_token_expired_within_leeway_is_accepted(server: RunningServer) -> None:
    now = int(time.time())
    await assert_accepted(server.url, hs256(claims(iat=now - 600, exp=now - 10)))


async def test_token_not_yet_valid_is_refused(server: RunningServer) -> None:
    await assert_refused(server.url, f"Bearer {hs256(claims(nbf=int(time.time()) + 300))}")


async def test_token_without_exp_is_refused(server: RunningServer) -> None:
    payload = claims()
    del payload["exp"]
    await assert_refused(server.url, f"Bearer {hs256(payload)}")


async def test_token_without_sub_is_refused(server: RunningServer) -> None:
    payload = claims()
    del payload["sub"]
    await assert_refused(server.url, f"Bearer {hs256(payload)}")


async def test_token_with_empty_sub_is_refused(server: RunningServer) -> None:
    await assert_refused(server.url, f"Bearer {hs256(claims() | {'sub': ''})}")


async def test_token_with_non_string_or_overlong_sub_is_refused(server: RunningServer) -> None:
    await assert_refused(server.url, f"Bearer {hs256(claims() | {'sub': 12345})}")
    await assert_refused(server.url, f"Bearer {hs256(claims('u' * 256))}")


async def test_unsigned_alg_none_token_is_refused(server: RunningServer) -> None:
    await assert_refused(server.url, f"Bearer {unsigned(claims())}")


async def test_refusal_challenge_is_a_well_formed_bearer_challenge(server: RunningServer) -> None:
    """Every refusal's WWW-Authenticate parses as RFC 6750 auth-params (quoted values without `"`)."""
    now = int(time.time())
    no_exp = claims()
    del no_exp["exp"]
    cases = [
        "Bearer not-a-jwt",
        f"Bearer {hs256(claims(exp=now - 3600))}",
        f"Bearer {hs256(no_exp)}",  # PyJWT says: Token is missing the "exp" claim
        f"Bearer {hs256(claims(nbf=now + 300))}",
    ]
    for authorization in cases:
        r = await get_rooms(server.url, authorization)
        assert r.status_code == 401
        challenge = r.headers["www-authenticate"]
        params = challenge.removeprefix("Bearer ")
        parsed = AUTH_PARAM.findall(params)
        assert "".join(f'{k}="{v}",' for k, v in parsed).rstrip(",") == re.sub(r",\s+", ",", params), (
            challenge
        )
        assert dict(parsed).get("error") == "invalid_token", challenge


# --- strict time claims and the longest lifetime -----------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": "__exp__"},  # a string holding a number was accepted (PyJWT calls int() on it)
        {"iat": "__iat__"},
        {"nbf": "__iat__"},
        {"exp": True},
        {"iat": [1]},
        {"exp": 1e400},  # JSON's largest floats turn into infinity
    ],
    ids=["string exp", "string iat", "string nbf", "boolean exp", "list iat", "infinite exp"],
)
async def test_time_claims_that_are_not_numbers_are_refused(
    server: RunningServer, changes: dict[str, Any]
) -> None:
    """Security review finding 3: `exp`, `nbf` and `iat` must be JSON numbers."""
    payload = claims()
    for name, value in changes.items():
        payload[name] = (
            str(payload["exp"])
            if value == "__exp__"
            else str(payload["iat"])
            if value == "__iat__"
            else value
        )
    await assert_refused(server.url, f"Bearer {hs256(payload)}")


async def test_tokens_living_longer_than_the_maximum_are_refused(
    server: RunningServer, start_server: ServerFactory
) -> None:
    """Security review finding 3: a token could live for ever (exp = 10^30 was accepted). The default
    maximum lifetime (exp - iat) is 24 hours, and `iat` is required while there is one."""
    now = int(time.time())
    await assert_accepted(server.url, hs256(claims(iat=now, exp=now + 86400)))
    body = await assert_refused(server.url, f"Bearer {hs256(claims(iat=now, exp=now + 86401))}")
    assert "lifetime" in body["detail"]
    await assert_refused(server.url, f"Bearer {hs256(claims(iat=now, exp=10**30))}")
    await assert_refused(server.url, f"Bearer {hs256(claims(iat=now - 10**9, exp=now + 60))}")
    no_iat = claims()
    del no_iat["iat"]
    body = await assert_refused(server.url, f"Bearer {hs256(no_iat)}")
    assert "iat" in body["detail"]

    short = await start_server(jwt_max_lifetime_seconds=60)
    await assert_accepted(short.url, hs256(claims(ttl=60)))
    await assert_refused(short.url, f"Bearer {hs256(claims(ttl=61))}")
    off = await start_server(jwt_max_lifetime_seconds=0)  # 0 turns the check off (and iat optional)
    await assert_accepted(off.url, hs256(claims(ttl=10 * 86400)))
    await assert_accepted(off.url, hs256(no_iat))


# --- issuer and audience ---------------------------------------------------------------------------


async def test_issuer_and_audience_are_enforced(start_server: ServerFactory) -> None:
    app = await start_server(jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    await assert_accepted(app.url, hs256(claims(iss=ISSUER, aud=AUDIENCE)))
    await assert_accepted(app.url, hs256(claims(iss=ISSUER, aud=["other", AUDIENCE])))
    for payload in [
        claims(iss="https://evil.test", aud=AUDIENCE),
        claims(aud=AUDIENCE),  # no iss
        claims(iss=ISSUER, aud="other-api"),
        claims(iss=ISSUER),  # no aud
    ]:
        await assert_refused(app.url, f"Bearer {hs256(payload)}")


# --- issuer and audience are required with a JWKS ------------------------------------------------


def serve_env(**extra: str) -> dict[str, str]:
    """An environment for `chat-api serve` without any chat-api setting of this machine."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHAT_API_") and k not in ("DATABASE_URL", "DATABASE_URL_FILE")
    }
    env.update(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", CHAT_API_PORT=str(free_port()))
    env.update(extra)
    return env


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({}, "CHAT_API_JWT_AUDIENCE"),
        ({"CHAT_API_JWT_AUDIENCE": AUDIENCE}, "CHAT_API_JWT_ISSUER"),
        ({"CHAT_API_JWT_ISSUER": ISSUER}, "CHAT_API_JWT_AUDIENCE"),
    ],
)
def test_serve_with_a_jwks_url_refuses_to_start_without_audience_and_issuer(
    given: dict[str, str], missing: str
) -> None:
    """Security review finding 2: with a JWKS, audience and issuer were optional, so a token the issuer
    made for any other service of the same identity provider was accepted here."""
    env = serve_env(CHAT_API_JWT_JWKS_URL="https://issuer.test/jwks.json", **given)
    done = subprocess.run(
        [sys.executable, "-m", "chat_api", "serve"], env=env, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and missing in lines[0], done.stderr
    assert done.stdout == ""


def test_serve_with_hs256_warns_at_start_up_without_audience_and_issuer() -> None:
    env = serve_env(CHAT_API_JWT_SECRET=TEST_SECRET, CHAT_API_LOG_FORMAT="json")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chat_api", "serve"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "started" in line:
                break
    finally:
        proc.kill()
        proc.wait(10)
    warnings = [json.loads(line) for line in seen if line.startswith("{") and '"WARNING"' in line]
    messages = [w.get("message", w.get("msg", "")) for w in warnings]
    assert any("CHAT_API_JWT_AUDIENCE" in m and "CHAT_API_JWT_ISSUER" in m for m in messages), seen
    assert TEST_SECRET not in "".join(seen)


async def test_jwks_token_for_another_audience_or_issuer_is_refused(
    start_server: ServerFactory, jwks: JwksServer, keys: dict[str, Any]
) -> None:
    jwks.publish(rsa_jwk(keys["rsa"], "rsa-1"))
    app = await start_server(jwt_secret=None, jwt_jwks_url=jwks.url, jwt_audience=AUDIENCE, jwt_issuer=ISSUER)
    await assert_accepted(app.url, signed(keys["rsa"], "rsa-1", iss=ISSUER, aud=AUDIENCE))
    body = await assert_refused(app.url, f"Bearer {signed(keys['rsa'], 'rsa-1', iss=ISSUER, aud='other')}")
    assert "audience" in body["detail"]
    await assert_refused(app.url, f"Bearer {signed(keys['rsa'], 'rsa-1', aud=None)}")
    await assert_refused(
        app.url, f"Bearer {signed(keys['rsa'], 'rsa-1', iss='https://evil.test', aud=AUDIENCE)}"
    )


# --- JWKS ------------------------------------------------------------------------------------------


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"rsa": rsa_key(), "ec": ec_key(), "rsa-new": rsa_key()}


@pytest.fixture
async def jwks_app(start_server: ServerFactory, jwks: JwksServer, keys: dict[str, Any]) -> RunningServer:
    jwks.publish(rsa_jwk(keys["rsa"], "rsa-1"))
    jwks.publish(ec_jwk(keys["ec"], "ec-1"))
    return await start_server(
        jwt_secret=None, jwt_jwks_url=jwks.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )


async def test_jwks_rs256_and_es256_tokens_are_accepted_and_keys_cached(
    jwks_app: RunningServer, jwks: JwksServer, keys: dict[str, Any]
) -> None:
    rs = signed(keys["rsa"], "rsa-1")
    es = signed(keys["ec"], "ec-1")
    before = jwks.fetches
    await assert_accepted(jwks_app.url, rs)
    assert jwks.fetches == before + 1
    await assert_accepted(jwks_app.url, es)
    await assert_accepted(jwks_app.url, rs)
    await assert_accepted(jwks_app.url, signed(keys["ec"], "ec-1"))
    assert jwks.fetches == before + 1, "known kids must be served from the cache"


async def test_jwks_unknown_kid_refetch_is_rate_limited(
    jwks_app: RunningServer, jwks: JwksServer, keys: dict[str, Any]
) -> None:
    await assert_accepted(jwks_app.url, signed(keys["rsa"], "rsa-1"))
    fetched = jwks.fetches
    for i in range(5):  # a flood of unknown kids right after a fetch: no refetch within the 10 s floor
        forged = signed(keys["rsa-new"], f"unknown-{i}")
        await assert_refused(jwks_app.url, f"Bearer {forged}")
    assert jwks.fetches == fetched


async def test_jwks_key_rotation_is_picked_up_on_unknown_kid(
    jwks_app: RunningServer, jwks: JwksServer, keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The verifier refetches on an unknown kid at most every JWKS_MIN_REFRESH_SECONDS (10 s). The server
    # runs in this process and reads the module global on each refresh, so 0 lets this test show
    # "unknown kid -> refetch -> still unknown -> 401" and then "published -> refetch -> 200" without
    # sleeping 10 s; the rate limit itself is proven by test_jwks_unknown_kid_refetch_is_rate_limited.
    monkeypatch.setattr(chat_api.auth.tokens, "JWKS_MIN_REFRESH_SECONDS", 0.0)
    await assert_accepted(jwks_app.url, signed(keys["rsa"], "rsa-1"))
    fetched = jwks.fetches
    rotated = signed(keys["rsa-new"], "rsa-2")

    await assert_refused(jwks_app.url, f"Bearer {rotated}")  # not published yet
    assert jwks.fetches == fetched + 1, "an unknown kid must trigger a refetch"

    jwks.publish(rsa_jwk(keys["rsa-new"], "rsa-2"))
    await assert_accepted(jwks_app.url, rotated)
    assert jwks.fetches == fetched + 2
    await assert_accepted(jwks_app.url, rotated)
    await assert_accepted(jwks_app.url, signed(keys["rsa"], "rsa-1"))
    assert jwks.fetches == fetched + 2, "after the rotation both kids are cached"


async def test_jwks_hs256_token_signed_with_public_key_is_refused(
    jwks_app: RunningServer, keys: dict[str, Any]
) -> None:
    """Algorithm confusion: the RSA public key's PEM used as an HMAC secret."""
    pem = (
        keys["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    await assert_refused(jwks_app.url, f"Bearer {hmac_token(claims(), pem, kid='rsa-1')}")
    await assert_refused(jwks_app.url, f"Bearer {hmac_token(claims(), pem)}")
    # The same forgery claiming RS256 in its header does not verify either.
    await assert_refused(jwks_app.url, f"Bearer {hmac_token(claims(), pem, alg='RS256', kid='rsa-1')}")


async def test_jwks_unsigned_alg_none_token_is_refused(jwks_app: RunningServer) -> None:
    await assert_refused(jwks_app.url, f"Bearer {unsigned(claims(), kid='rsa-1')}")
    await assert_refused(jwks_app.url, f"Bearer {unsigned(claims())}")


async def test_jwks_token_whose_alg_does_not_match_its_kid_is_refused(
    jwks_app: RunningServer, keys: dict[str, Any]
) -> None:
    rs_claiming_ec = jwt.encode(claims(), keys["rsa"], algorithm="RS256", headers={"kid": "ec-1"})
    body = await assert_refused(jwks_app.url, f"Bearer {rs_claiming_ec}")
    assert "does not match" in body["detail"]
    es_claiming_rsa = jwt.encode(claims(), keys["ec"], algorithm="ES256", headers={"kid": "rsa-1"})
    await assert_refused(jwks_app.url, f"Bearer {es_claiming_rsa}")


async def test_jwks_token_signed_by_another_key_with_a_known_kid_is_refused(
    jwks_app: RunningServer, keys: dict[str, Any]
) -> None:
    forged = signed(keys["rsa-new"], "rsa-1")
    await assert_refused(jwks_app.url, f"Bearer {forged}")


async def test_jwks_server_refuses_hs256_tokens_signed_with_the_test_secret(jwks_app: RunningServer) -> None:
    await assert_refused(jwks_app.url, f"Bearer {hs256(claims())}")


async def test_jwks_document_that_is_not_an_object_is_a_401_not_a_500(
    start_server: ServerFactory, jwks: JwksServer, keys: dict[str, Any]
) -> None:
    jwks.document = ["not", "a", "key", "set"]
    app = await start_server(jwt_secret=None, jwt_jwks_url=jwks.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    token = signed(keys["rsa"], "rsa-1")
    await assert_refused(app.url, f"Bearer {token}")


def jwks_verifier(jwks: JwksServer) -> TokenVerifier:
    """A verifier of JWKS tokens without a server (no database)."""
    settings = load_settings(
        database_url=None,
        database_url_file=None,
        jwt_secret=None,
        jwt_secret_file=None,
        jwt_jwks_url=jwks.url,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
    )
    return TokenVerifier(settings)


async def test_jwks_refresh_after_expiry_is_single_flight(jwks: JwksServer, keys: dict[str, Any]) -> None:
    """Security review finding 5: when the cached key set expired, every verification queued behind
    the refresh fetched again (15 concurrent verifications: 15 fetches)."""
    jwks.publish(rsa_jwk(keys["rsa"], "rsa-1"))
    verifier = jwks_verifier(jwks)
    token = signed(keys["rsa"], "rsa-1")
    await verifier.subject(token)
    assert jwks.fetches == 1
    assert verifier.jwks is not None
    verifier.jwks.fetched_at -= chat_api.auth.tokens.JWKS_MAX_AGE_SECONDS + 1  # the cache expires
    jwks.delay = 0.3
    subjects = await asyncio.gather(*(verifier.subject(token) for _ in range(15)))
    assert len(set(subjects)) == 1
    assert jwks.fetches == 2, "one fetch per expiry; the waiters use its result"
    # A cold cache too: 15 verifications at once before any key is known make one fetch.
    cold = jwks_verifier(jwks)
    await asyncio.gather(*(cold.subject(token) for _ in range(15)))
    assert jwks.fetches == 3


# --- chat-api token --------------------------------------------------------------------------------


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CHAT_API_JWT_SECRET",
        "CHAT_API_JWT_SECRET_FILE",
        "CHAT_API_JWT_JWKS_URL",
        "CHAT_API_JWT_MAX_LIFETIME_SECONDS",
        "DATABASE_URL",
        "DATABASE_URL_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


async def test_token_command_prints_a_token_the_server_accepts(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("CHAT_API_JWT_SECRET", TEST_SECRET)
    assert cli.main(["token", "bob", "--ttl", "60"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1
    token = out.strip()
    decoded = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    assert decoded["sub"] == "bob"
    assert abs(decoded["exp"] - (time.time() + 60)) <= 5
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    await assert_accepted(server.url, token)


def test_token_command_refuses_a_ttl_beyond_the_maximum_lifetime(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("CHAT_API_JWT_SECRET", TEST_SECRET)
    assert cli.main(["token", "bob", "--ttl", "86401"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "CHAT_API_JWT_MAX_LIFETIME_SECONDS" in lines[0], captured.err
    assert cli.main(["token", "bob", "--ttl", "86400"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("CHAT_API_JWT_MAX_LIFETIME_SECONDS", "0")
    assert cli.main(["token", "bob", "--ttl", str(30 * 86400)]) == 0


def test_token_command_without_secret_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env(monkeypatch)
    assert cli.main(["token", "bob", "--ttl", "60"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "CHAT_API_JWT_SECRET" in lines[0], captured.err


# --- CHAT_API_JWT_SECRET_FILE: keys in a mounted Secret, rotated without a restart ------------------

KEY_A = "key-a-" + "a" * 40
KEY_B = "key-b-" + "b" * 40


def after_recheck() -> float:
    """Seconds after which a change to the file is certainly seen (the verifier looks once a second)."""
    return RECHECK_SECONDS + 0.2


async def test_token_signed_with_the_key_file_is_accepted(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    volume = SecretVolume(tmp_path / "jwt")
    volume.write(keys=KEY_A + "\n")
    app = await start_server(jwt_secret=None, jwt_secret_file=volume.path("keys"))
    await assert_accepted(app.url, hs256(claims(), KEY_A))
    await assert_refused(app.url, f"Bearer {hs256(claims(), TEST_SECRET)}")


async def test_key_file_rotation_needs_no_restart(
    start_server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    volume = SecretVolume(tmp_path / "jwt")
    volume.write(keys=KEY_A + "\n")
    app = await start_server(jwt_secret=None, jwt_secret_file=volume.path("keys"))
    old = hs256(claims(), KEY_A)
    await assert_accepted(app.url, old)

    # Step 1: the new key first (it signs from now on), the old one kept for one token lifetime.
    volume.write(keys=f"{KEY_B}\n\n{KEY_A}\n")
    await asyncio.sleep(after_recheck())
    new = hs256(claims(), KEY_B)
    await assert_accepted(app.url, new)
    await assert_accepted(app.url, old)
    # `chat-api token` signs with the first key of the file.
    clean_env(monkeypatch)
    monkeypatch.setenv("CHAT_API_JWT_SECRET_FILE", str(volume.path("keys")))
    assert cli.main(["token", "carol", "--ttl", "60"]) == 0
    minted = capsys.readouterr().out.strip()
    assert jwt.decode(minted, KEY_B, algorithms=["HS256"])["sub"] == "carol"
    await assert_accepted(app.url, minted)
    # An old-key token is still checked like any other: expired is expired.
    now = int(time.time())
    body = await assert_refused(app.url, f"Bearer {hs256(claims(iat=now - 7200, exp=now - 3600), KEY_A)}")
    assert "expired" in body["detail"]

    # Step 2: the old key dropped: its tokens are refused once the file has been looked at again.
    volume.write(keys=KEY_B + "\n")
    await asyncio.sleep(after_recheck())
    body = await assert_refused(app.url, f"Bearer {old}")
    assert "signature" in body["detail"]
    await assert_accepted(app.url, new)


async def test_key_file_that_turns_bad_keeps_the_last_good_keys(
    start_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume = SecretVolume(tmp_path / "jwt")
    volume.write(keys=f"{KEY_A}\n{KEY_B}\n")
    app = await start_server(jwt_secret=None, jwt_secret_file=volume.path("keys"))
    token_a, token_b = hs256(claims(), KEY_A), hs256(claims(), KEY_B)
    short = "too-short-a-key-for-hs256"
    caplog.set_level(logging.INFO, logger="chat_api.config")

    for bad in ({"keys": f"{KEY_B}\n{short}\n"}, {"keys": "\n\n"}, {}):  # a short key, no key, no file
        volume.write(**bad)
        await asyncio.sleep(after_recheck())
        await assert_accepted(app.url, token_a)
        await assert_accepted(app.url, token_b)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once, not once per look
    assert "CHAT_API_JWT_SECRET_FILE" in warnings[0].getMessage()
    assert "key 2 is shorter than 32 characters" in warnings[0].getMessage()
    for secret in (short, KEY_A, KEY_B):
        assert secret not in caplog.text

    volume.write(keys=KEY_B + "\n")  # good again: taken, and said so
    await asyncio.sleep(after_recheck())
    await assert_refused(app.url, f"Bearer {token_a}")
    await assert_accepted(app.url, token_b)
    assert any("usable again" in r.getMessage() for r in caplog.records)


def test_key_file_is_looked_at_once_per_interval_at_most(tmp_path: Path) -> None:
    """No database: the verifier's file is read again only after RECHECK_SECONDS, and only when it
    changed (stat through the kubelet's symlinks)."""
    volume = SecretVolume(tmp_path / "jwt")
    volume.write(keys=KEY_A)
    started = time.monotonic()
    keys = SecretFile(volume.path("keys"), parse_jwt_keys, "CHAT_API_JWT_SECRET_FILE")
    volume.write(keys=f"{KEY_B}\n{KEY_A}")
    seen = keys.current()
    if time.monotonic() - started < RECHECK_SECONDS:  # else this machine stalled for a second
        assert seen == (KEY_A,)
    time.sleep(after_recheck())
    assert keys.current() == (KEY_B, KEY_A)
    # Rewritten in place with the same length: the stamp (mtime, inode, size) still changes.
    path = volume.path("keys").resolve()
    path.write_text(f"{KEY_A}\n{KEY_B}")
    time.sleep(after_recheck())
    assert keys.current() == (KEY_A, KEY_B)


# --- verified tokens remembered: until exp, while the keys stay -------------------------------------


def hs256_verifier(**settings: Any) -> TokenVerifier:
    """A verifier of HS256 tokens without a server (no database)."""
    values: dict[str, Any] = {
        "database_url": None,
        "database_url_file": None,
        "jwt_secret": TEST_SECRET,
        "jwt_secret_file": None,
        "jwt_jwks_url": None,
        "jwt_issuer": None,
        "jwt_audience": None,
    }
    return TokenVerifier(load_settings(**{**values, **settings}))


def count_verifications(verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens the verifier really verifies from now on (the rest it answers from memory)."""
    verified: list[str] = []
    verify = verifier._verify

    async def counted(token: str) -> chat_api.auth.tokens.Principal:
        verified.append(token)
        return await verify(token)

    monkeypatch.setattr(verifier, "_verify", counted)
    return verified


async def test_a_remembered_token_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = hs256_verifier()
    verified = count_verifications(verifier, monkeypatch)
    token = hs256(claims("alice"))
    assert await verifier.subject(token) == "alice"
    assert await verifier.subject(token) == "alice"
    assert verified == [token]


async def test_a_tampered_sibling_of_a_remembered_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = hs256_verifier()
    token = hs256(claims("alice"))
    assert await verifier.subject(token) == "alice"
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    other_payload = hs256(claims("mallory")).split(".")[1]
    for forged in (f"{header}.{payload}.{flipped}", f"{header}.{other_payload}.{signature}", token + "x"):
        with pytest.raises(chat_api.auth.tokens.InvalidToken):
            await verifier.verify(forged)
    assert await verifier.subject(token) == "alice"


async def test_an_expired_token_is_never_accepted_from_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # No leeway, so that the token really expires a second from now (PyJWT reads the real clock).
    monkeypatch.setattr(chat_api.auth.tokens, "LEEWAY_SECONDS", 0)
    verifier = hs256_verifier(jwt_max_lifetime_seconds=0)
    exp = int(time.time()) + 1
    token = hs256({"sub": "alice", "exp": exp})
    assert await verifier.subject(token) == "alice"
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.05)
    with pytest.raises(chat_api.auth.tokens.InvalidToken, match="expired"):
        await verifier.verify(token)


async def test_a_key_rotated_out_forgets_the_tokens_it_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = SecretVolume(tmp_path / "jwt")
    volume.write(keys=f"{KEY_B}\n{KEY_A}\n")
    verifier = hs256_verifier(jwt_secret=None, jwt_secret_file=volume.path("keys"))
    verified = count_verifications(verifier, monkeypatch)
    old, new = hs256(claims("alice"), KEY_A), hs256(claims("bob"), KEY_B)
    assert await verifier.subject(old) == "alice"
    assert await verifier.subject(new) == "bob"
    assert await verifier.subject(old) == "alice"
    assert verified == [old, new]

    volume.write(keys=KEY_B + "\n")  # the old key dropped
    await asyncio.sleep(after_recheck())
    with pytest.raises(chat_api.auth.tokens.InvalidToken, match="signature"):
        await verifier.verify(old)
    assert await verifier.subject(new) == "bob"  # verified again with the new key set, then remembered
    assert await verifier.subject(new) == "bob"
    assert verified == [old, new, old, new]


async def test_remembered_tokens_are_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat_api.auth.tokens, "VERIFIED_TOKENS_CACHED", 3)
    verifier = hs256_verifier()
    verified = count_verifications(verifier, monkeypatch)
    tokens = [hs256(claims(f"user-{n}")) for n in range(5)]
    for token in tokens:
        await verifier.verify(token)
    for token in tokens[2:]:  # the newest three are remembered
        await verifier.verify(token)
    assert verified == tokens
    await verifier.verify(tokens[0])  # the oldest were forgotten
    assert verified == [*tokens, tokens[0]]


async def test_a_jwks_refetch_forgets_remembered_tokens(
    jwks: JwksServer, keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    jwks.publish(rsa_jwk(keys["rsa"], "rsa-1"))
    verifier = jwks_verifier(jwks)
    verified = count_verifications(verifier, monkeypatch)
    token = signed(keys["rsa"], "rsa-1")
    await verifier.subject(token)
    await verifier.subject(token)
    assert verified == [token] and jwks.fetches == 1
    assert verifier.jwks is not None
    verifier.jwks.fetched_at -= chat_api.auth.tokens.JWKS_MAX_AGE_SECONDS + 1  # the key set is due
    jwks.keys[:] = [rsa_jwk(keys["rsa-new"], "rsa-2")]  # and the issuer has rotated rsa-1 out meanwhile
    with pytest.raises(chat_api.auth.tokens.InvalidToken, match="unknown"):
        await verifier.verify(token)
    assert jwks.fetches == 2
