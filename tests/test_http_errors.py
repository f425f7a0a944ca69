"""Every error is an RFC 9457 problem: unknown routes, wrong methods, oversized bodies, crashes."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from chat_api.app import create_app
from chat_api.core.config import Settings
from tests.support.problems import assert_problem
from tests.support.servers import RunningServer, ServerFactory, serve
from tests.support.users import User


async def test_unknown_route_is_a_404_problem(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert_problem(await client.get("/no/such/thing"), 404)
        assert_problem(await client.get("/v1/nope"), 404)


async def test_wrong_method_is_a_405_problem(alice: User) -> None:
    r = await alice.http.put("/v1/rooms")
    assert_problem(r, 405)
    assert r.headers["allow"]  # Starlette names the methods of the first matching route


async def test_body_over_64_kib_is_413_before_it_is_read(alice: User) -> None:
    room = await alice.create_room()
    url = f"/v1/rooms/{room['id']}/messages"
    big = b'{"body": "' + b"x" * (70 * 1024) + b'"}'
    assert_problem(await alice.http.post(url, content=big, headers={"content-type": "application/json"}), 413)

    async def chunks():  # no Content-Length: the limit applies while the body streams in
        for _ in range(70):
            yield b"x" * 1024

    r = await alice.http.post(url, content=chunks(), headers={"content-type": "application/json"})
    assert_problem(r, 413)
    assert (await alice.http.get(url)).json()["items"] == [], "nothing was stored"


async def test_body_just_under_the_limit_is_read(alice: User) -> None:
    room = await alice.create_room()
    padded = b'{"body": "ok"' + b" " * (60 * 1024) + b"}"
    r = await alice.http.post(
        f"/v1/rooms/{room['id']}/messages", content=padded, headers={"content-type": "application/json"}
    )
    assert r.status_code == 201, r.text


async def test_unexpected_error_is_a_500_problem_without_a_trace(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("internal detail that must not leak")

    async with serve(settings, app) as running, httpx.AsyncClient(base_url=running.url) as client:
        with caplog.at_level(logging.ERROR, logger="chat_api.errors"):
            r = await client.get("/boom")
    problem = assert_problem(r, 500)
    assert "internal detail" not in r.text and "Traceback" not in r.text
    assert problem["detail"]
    logged = [rec for rec in caplog.records if rec.name == "chat_api.errors"]
    assert logged and logged[0].exc_info and "internal detail" in str(logged[0].exc_info[1])


async def test_validation_problem_lists_errors_without_values(alice: User) -> None:
    secret_value = "x" * 300
    r = await alice.http.post("/v1/rooms", json={"name": secret_value})
    problem = assert_problem(r, 422)
    assert problem["errors"][0]["loc"] == ["body", "name"]
    assert secret_value not in r.text


DOC_PATHS = ("/openapi.json", "/docs", "/redoc")


async def test_serve_hides_the_api_docs_by_default(server: RunningServer) -> None:
    """Security review finding 8: /docs, /redoc and /openapi.json were public in `serve`."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        for path in DOC_PATHS:
            assert_problem(await client.get(path), 404)


async def test_api_docs_when_asked_for_load_no_third_party_script(start_server: ServerFactory) -> None:
    """With CHAT_API_DOCS=true the pages are served, and every script, style and icon they load comes
    from this origin (FastAPI's default pages load them from a CDN, without integrity)."""
    running = await start_server(docs=True)
    async with httpx.AsyncClient(base_url=running.url) as client:
        spec = (await client.get("/openapi.json")).json()
        assert {"/v1/rooms", "/v1/rooms/{room_id}/messages", "/v1/events", "/readyz"} <= set(spec["paths"])
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            sources = re.findall(r"""(?:src|href)\s*[=:]\s*['"]([^'"]+)['"]""", html)
            assert sources, html
            for source in sources:
                assert source.startswith("/"), (page, source)  # same origin, no scheme or host
                if not source.startswith("/openapi.json"):
                    asset = await client.get(source)
                    assert asset.status_code == 200 and asset.content, (page, source)
            assert "://" not in html, html  # no absolute URL at all


async def test_answers_under_v1_are_never_stored_by_caches(
    alice: User, bob: User, server: RunningServer
) -> None:
    """Security review finding 10: authenticated JSON had no Cache-Control, so a shared or browser
    cache could keep one user's rooms and messages."""
    room = await alice.create_room(members=[bob])
    sent = await alice.send(room["id"], "private")
    answers = [
        sent,
        await alice.http.get("/v1/rooms"),
        await alice.http.get(f"/v1/rooms/{room['id']}"),
        await bob.http.get(f"/v1/rooms/{room['id']}/messages"),
        await alice.http.get(f"/v1/rooms/{room['id']}/messages/{sent.json()['seq']}"),
        await alice.http.get("/v1/rooms/not-a-room"),  # errors too
    ]
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        answers.append(await anonymous.get("/v1/rooms"))
        async with anonymous.stream(
            "GET", "/v1/events", headers={"Authorization": f"Bearer {alice.token}"}
        ) as s:
            answers.append(s)
        health = await anonymous.get("/healthz")
    for answer in answers:
        assert answer.headers.get_list("cache-control") == ["no-store"], (answer.request.url, answer.headers)
    assert "cache-control" not in health.headers
