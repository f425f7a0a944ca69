"""The web client's server side, without a browser: where it exists, /dev/token, the stream cookie."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from chat_api.app import create_app
from chat_api.auth import streamcookie
from chat_api.auth.streamcookie import cookie_name, session_id
from chat_api.auth.tokens import mint_token
from chat_api.core.config import ConfigError, load_settings
from chat_api.devserver import create_dev_app
from chat_api.web.router import CONTENT_SECURITY_POLICY, STATIC_DIR
from tests.support.problems import assert_problem
from tests.support.servers import RunningServer, serve
from tests.support.settings import TEST_SECRET, make_settings

# The library's compiled modules the page imports (clients/typescript, copied by its vendor script).
VENDORED = sorted(path.name for path in (STATIC_DIR / "vendor" / "chat-api-client").glob("*.js"))


@contextlib.asynccontextmanager
async def client_of(running: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
async def web_server(database_url: str) -> AsyncIterator[RunningServer]:
    """`serve` with CHAT_API_WEB_CLIENT=true."""
    async with serve(make_settings(database_url, web_client=True)) as running:
        yield running


@pytest.fixture(scope="module")
async def dev_server(database_url: str) -> AsyncIterator[RunningServer]:
    settings = make_settings(database_url)
    async with serve(settings, create_dev_app(settings)) as running:
        yield running


def user_token(prefix: str = "web") -> tuple[str, str]:
    user = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return user, mint_token(TEST_SECRET, user, 3600)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def stream_status(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> int:
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("text/event-stream")
        else:
            await response.aread()
            assert_problem(response, response.status_code)
        return response.status_code


def test_web_client_setting_is_off_by_default_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHAT_API_WEB_CLIENT", raising=False)
    assert load_settings().web_client is False
    monkeypatch.setenv("CHAT_API_WEB_CLIENT", "true")
    assert load_settings().web_client is True


async def test_serve_by_default_has_no_web_client_and_no_cookie_auth(server: RunningServer) -> None:
    user, token = user_token()
    session = session_id(user)
    async with client_of(server) as client:
        for path in ("/", "/web/app.js", "/web/index.html"):
            assert_problem(await client.get(path), 404)
        assert_problem(await client.post("/dev/token", json={"sub": "mallory"}), 404)
        assert_problem(await client.post("/v1/session", headers=bearer(token)), 404)
        cookie = {"Cookie": f"{cookie_name(session)}={token}"}
        assert await stream_status(client, f"/v1/events?session={session}", cookie) == 401


async def test_serve_with_the_web_client_serves_it_but_has_no_dev_token(web_server: RunningServer) -> None:
    async with client_of(web_server) as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/web/app.js">' in page.text
        assert_problem(await client.post("/dev/token", json={"sub": "mallory"}), 404)
        assert "/dev/token" not in (await client.get("/openapi.json")).text
        # The web client adds no catch-all: unknown paths and wrong methods keep their problems.
        assert_problem(await client.get("/nope"), 404)
        assert_problem(await client.delete("/v1/rooms"), 405)


SCRIPTS = ("app.js", "tokens.js", "model.js", *(f"vendor/chat-api-client/{name}" for name in VENDORED))


@pytest.mark.parametrize("path", ["/", "/web/style.css", *(f"/web/{name}" for name in SCRIPTS)])
async def test_page_and_assets_carry_a_strict_content_security_policy(
    web_server: RunningServer, path: str
) -> None:
    async with client_of(web_server) as client:
        r = await client.get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    assert r.headers["x-content-type-options"] == "nosniff"
    if path.endswith(".js"):
        assert "javascript" in r.headers["content-type"]


async def test_page_loads_nothing_from_elsewhere(web_server: RunningServer) -> None:
    async with client_of(web_server) as client:
        html = (await client.get("/")).text
        scripts = [(await client.get(f"/web/{name}")).text for name in SCRIPTS]
    assert "index.js" in VENDORED and "stream.js" in VENDORED, "the page imports the library"
    for text in [html, *scripts]:
        assert "http://" not in text and "https://" not in text, "everything must come from this origin"


async def test_dev_token_mints_a_working_token_in_dev(dev_server: RunningServer) -> None:
    user = f"dev-{uuid.uuid4().hex[:8]}"
    async with client_of(dev_server) as client:
        r = await client.post("/dev/token", json={"sub": user})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["sub"] == user and body["expires_in"] > 0
        rooms = await client.get("/v1/rooms", headers=bearer(body["token"]))
        assert rooms.status_code == 200, rooms.text
        # ... and the dev app has the web client on, without CHAT_API_WEB_CLIENT.
        assert (await client.get("/")).status_code == 200
        assert_problem(await client.post("/dev/token", json={}), 422)
        assert_problem(await client.post("/dev/token", json={"sub": ""}), 422)
        assert_problem(await client.post("/dev/token", json={"sub": "x", "admin": True}), 422)


def set_cookie_of(r: httpx.Response) -> tuple[str, str, list[str]]:
    """(name, value, lower-cased attributes) of the response's one Set-Cookie."""
    cookies = r.headers.get_list("set-cookie")
    assert len(cookies) == 1, cookies
    pair, *attributes = [part.strip() for part in cookies[0].split(";")]
    name, _, value = pair.partition("=")
    return name, value, [a.lower() for a in attributes]


async def test_session_cookie_is_a_short_lived_stream_only_session_cookie(web_server: RunningServer) -> None:
    """Security review finding 4: the cookie held the whole bearer token for the token's lifetime
    (Max-Age), so on a shared browser it alone replayed the user's history after the tab closed."""
    user, token = user_token()
    async with client_of(web_server) as client:
        assert_problem(await client.post("/v1/session"), 401)
        r = await client.post("/v1/session", headers=bearer(token))
        assert r.status_code == 200, r.text
        session = r.json()["stream_session"]
        assert r.json()["user"] == user and r.json()["events_url"] == f"/v1/events?session={session}"
        assert 0 < r.json()["expires_in"] <= 15 * 60
        assert r.headers["cache-control"] == "no-store"
        name, value, attributes = set_cookie_of(r)
        assert name == f"chat_api_stream_{session}"
        assert value and token not in r.headers["set-cookie"] and value not in token
        for part in token.split("."):
            assert part not in value
        assert (
            "httponly" in attributes and "samesite=strict" in attributes and "path=/v1/events" in attributes
        )
        assert not [a for a in attributes if a.startswith(("max-age", "expires"))], (
            attributes
        )  # session cookie
        assert "secure" not in attributes  # plain http on loopback (see the https test)

        # The credential opens the stream, and nothing else: never as a bearer token.
        cookie = {"Cookie": f"{name}={value}"}
        assert await stream_status(client, f"/v1/events?session={session}", cookie) == 200
        assert_problem(await client.get("/v1/rooms", headers=bearer(value)), 401)
        assert await stream_status(client, "/v1/events", bearer(value)) == 401
        # A cookie holding a bearer token (what the cookie used to be) is refused.
        old = {"Cookie": f"{name}={token}"}
        assert await stream_status(client, f"/v1/events?session={session}", old) == 401

        # A token about to expire gives a credential that expires with it.
        soon = mint_token(TEST_SECRET, user, 20)
        assert (await client.post("/v1/session", headers=bearer(soon))).json()["expires_in"] <= 20

        out = await client.delete("/v1/session", headers=bearer(token))
        assert out.status_code == 204
        name, value, attributes = set_cookie_of(out)
        assert name == f"chat_api_stream_{session}" and value in ("", '""')
        assert "max-age=0" in attributes and "path=/v1/events" in attributes


async def test_over_https_the_cookie_is_secure_with_the_host_prefix(database_url: str) -> None:
    """The scheme is the ASGI scope's (uvicorn takes X-Forwarded-Proto only from trusted proxies)."""
    app = create_app(make_settings(database_url, web_client=True))
    user, token = user_token()
    async with (
        LifespanManager(app) as started,  # the lifespan's state: what requests reach
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=started.app), base_url="https://chat.test"
        ) as client,
    ):
        r = await client.post("/v1/session", headers=bearer(token))
        assert r.status_code == 200, r.text
        name, _, attributes = set_cookie_of(r)
        assert name == f"__Host-chat_api_stream_{session_id(user)}"
        # __Host- cookies must have Path=/ (RFC 6265bis): the server accepts it on GET /v1/events only.
        assert "secure" in attributes and "path=/" in attributes and "httponly" in attributes
        assert not [a for a in attributes if a.startswith(("max-age", "expires", "domain"))], attributes
        out = await client.delete("/v1/session", headers=bearer(token))
        name, _, attributes = set_cookie_of(out)
        assert name.startswith("__Host-") and "secure" in attributes and "max-age=0" in attributes


async def test_a_stream_opened_with_the_cookie_ends_when_the_credential_expires(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streamcookie, "CREDENTIAL_SECONDS", 2)
    settings = make_settings(database_url, web_client=True, stream_heartbeat_seconds=0.2)
    _user, token = user_token()
    async with serve(settings) as running, client_of(running) as client:
        r = await client.post("/v1/session", headers=bearer(token))
        assert r.json()["expires_in"] <= 2
        name, value, _ = set_cookie_of(r)
        url = r.json()["events_url"]
        async with asyncio.timeout(10), client.stream("GET", url, headers={"Cookie": f"{name}={value}"}) as s:
            assert s.status_code == 200
            body = (await s.aread()).decode()
        assert body.endswith('event: reauth\ndata: {"reason":"token expired"}\n\n'), body
        assert await stream_status(client, url, {"Cookie": f"{name}={value}"}) == 401  # and stays dead


def test_auth_does_not_import_the_web_client() -> None:
    """Imports go down: the browser client builds on auth, never the other way round."""
    code = (
        "import sys, chat_api.auth.dependencies, chat_api.auth.streamcookie; "
        "sys.exit(any(m.startswith('chat_api.web') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


async def test_the_cookie_authenticates_only_get_v1_events(
    web_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chat_api.access")
    user, token = user_token()
    async with client_of(web_server) as client:
        name, credential, _ = set_cookie_of(await client.post("/v1/session", headers=bearer(token)))
        client.cookies.clear()
        session = session_id(user)
        cookie = {"Cookie": f"{name}={credential}"}
        assert await stream_status(client, f"/v1/events?session={session}", cookie) == 200
        # The resume cursor still works beside it.
        rooms = (await client.get("/v1/rooms", headers=bearer(token))).json()
        url = f"/v1/events?session={session}&cursor={rooms['stream_cursor']}"
        assert await stream_status(client, url, cookie) == 200

        # Not without naming the cookie, not with another name, not for anything else.
        assert await stream_status(client, "/v1/events", cookie) == 401
        assert await stream_status(client, f"/v1/events?session={session_id('someone-else')}", cookie) == 401
        assert await stream_status(client, "/v1/events?session=..%2F", cookie) == 401
        assert_problem(await client.get("/v1/rooms", headers=cookie), 401)
        assert_problem(await client.get(f"/v1/rooms?session={session}", headers=cookie), 401)
        created = await client.post(f"/v1/rooms?session={session}", headers=cookie, json={"name": "csrf"})
        assert_problem(created, 401)
        assert_problem(await client.post("/v1/session", headers=cookie), 401)

        # The Authorization header wins: a bad bearer token is refused even beside a good cookie.
        bad = {**cookie, "Authorization": "Bearer not-a-jwt"}
        assert await stream_status(client, f"/v1/events?session={session}", bad) == 401
        # A forged or altered credential is refused like a bad header, with the same 401 problem.
        forged = {"Cookie": f"{name}={credential[:-4]}AAAA"}
        async with client.stream("GET", f"/v1/events?session={session}", headers=forged) as r:
            await r.aread()
        body = assert_problem(r, 401)
        assert body["type"].endswith("/unauthorized") and "signature" in body["detail"]
        assert r.headers["www-authenticate"].startswith('Bearer realm="chat-api", error="invalid_token"')
        # Another user's name in a credential signed for this one does not verify either.
        head, _, rest = credential.partition(".")
        other = base64.urlsafe_b64encode(b"mallory").rstrip(b"=").decode()
        swapped = {"Cookie": f"{name}={head}.{other}.{rest.partition('.')[2]}"}
        assert await stream_status(client, f"/v1/events?session={session}", swapped) == 401

    # What the access log says about those requests: the route template, never a credential.
    lines: list[dict[str, Any]] = [{"msg": rec.getMessage(), **rec.__dict__} for rec in caplog.records]
    assert any(line.get("http.route") == "/v1/events" for line in lines), lines
    assert all(token not in str(line) and credential not in str(line) for line in lines)


async def test_with_a_jwks_the_web_client_needs_a_stream_cookie_secret(database_url: str) -> None:
    """A JWKS gives the replicas no shared secret to sign stream credentials with."""
    jwks = {
        "jwt_secret": None,
        "jwt_jwks_url": "https://issuer.test/jwks.json",
        "jwt_issuer": "https://issuer.test",
        "jwt_audience": "chat-api",
        "web_client": True,
    }
    with pytest.raises(ConfigError, match="CHAT_API_STREAM_COOKIE_SECRET"):
        create_app(make_settings(database_url, **jwks))
    app = create_app(make_settings(database_url, stream_cookie_secret="s" * 32, **jwks))
    async with LifespanManager(app):
        assert app.state.resources.stream_credentials is not None
    with pytest.raises(ConfigError, match="at least 32 characters"):
        make_settings(database_url, stream_cookie_secret="too short", **jwks)
