"""Hostile input through real HTTP: every refused request is a clear 4xx problem, stores nothing (checked
in the database), and leaves the server serving; every accepted oddity round-trips byte-exact.

| input | expected |
|---|---|
| 70 KiB JSON body (Content-Length or chunked) | 413 problem, nothing stored |
| 64 KiB / 1 MiB request header | 431/400 or closed; never 5xx; still serving |
| 100,000 nested arrays (200 KB) | 413 |
| 32,000 nested arrays/objects (64 KB, under the cap) | 400 problem, server survives |
| invalid UTF-8 bytes in the body | 400 or 422 problem |
| NUL (JSON "\\u0000") in body, name, member ids, path user id | 422 problem |
| lone surrogate (JSON "\\ud800") in body, name, member ids | 422 problem |
| limit=10**30; seq, before, after, reply_to, read seq of -1, 2**63, 10**40 | 422 problem |
| `'; DROP TABLE rooms; --` in name, body, member, key, token sub | stored, returned as text |
| RTL, combining marks, ZWJ and 4-byte emoji, NFC vs NFD | byte-exact: send, history, stream |
| token: alg none, wrong key, audience, issuer, expired, future nbf, no exp | 401 problem, nothing stored |
| token: exp as a string, exp = 10^30, no iat, lifetime over 24 h | 401 problem, nothing stored |
| token whose sub holds NUL or a lone surrogate | 401 |
| JWKS rotation: new kid used; retired, forged, unknown kid refused | 201 / 401, nothing stored |
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

import chat_api.auth.tokens
from chat_api.events.cursor import Cursor
from tests.support.problems import assert_problem
from tests.support.servers import RunningServer, ServerFactory
from tests.support.sse import open_stream
from tests.support.tokens import JwksServer, claims, hs256, rsa_jwk, rsa_key, signed, unsigned
from tests.support.users import User, UserFactory

KIB = 1024
SQL = "'; DROP TABLE rooms; --"
GIANT = [-1, 2**63, 10**40]
UNICODE = {
    "rtl": "\u202eevil\u202c and \u200fשלום\u200f \u061cمرحبا",
    "combining": "Z\u0351\u0358\u0301a\u0300\u0301\u0302\u0303l\u0327g\u0328o",
    "zwj": "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f3f3\ufe0f\u200d\U0001f308",
    "astral": "\U0001f600\U0001d11e\U00020000\U0010fffd",
    "nfc": unicodedata.normalize("NFC", "caf\u00e9 \u00c5ngstr\u00f6m"),
    "nfd": unicodedata.normalize("NFD", "caf\u00e9 \u00c5ngstr\u00f6m"),
    "bom-and-invisibles": "\ufeff\u2060\u200b\u00ad\u034f",
}


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def footprint(
    db: asyncpg.Connection, room_id: str | None = None, user: str | None = None
) -> dict[str, Any]:
    """Everything a request could have stored about a room and a user."""
    row = await db.fetchrow(
        """SELECT (SELECT count(*) FROM rooms WHERE created_by = $2) AS rooms_created,
                  (SELECT count(*) FROM members WHERE user_id = $2) AS memberships,
                  (SELECT count(*) FROM messages WHERE room_id = $1) AS messages,
                  (SELECT count(*) FROM events WHERE room_id = $1) AS events,
                  (SELECT count(*) FROM members WHERE room_id = $1) AS members,
                  (SELECT last_seq FROM rooms WHERE id = $1) AS last_seq,
                  (SELECT max(xmax::text::bigint) FROM messages WHERE room_id = $1) AS touched,
                  (SELECT array_agg(last_read_seq ORDER BY user_id) FROM members WHERE room_id = $1)
                      AS marks""",
        uuid.UUID(room_id) if room_id else None,
        user,
    )
    return dict(row)


def raw_json(value: Any) -> bytes:
    """JSON with every non-ASCII character escaped: lone surrogates survive as \\udxxx escapes."""
    return json.dumps(value, ensure_ascii=True).encode()


async def post_raw(
    user: User, path: str, content: bytes, method: str = "POST", **headers: str
) -> httpx.Response:
    return await user.http.request(
        method, path, content=content, headers={"Content-Type": "application/json", **headers}
    )


async def assert_serving(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200


# --- sizes -----------------------------------------------------------------------------------------


async def test_oversized_bodies_are_413_and_store_nothing(
    server: RunningServer, alice: User, db: asyncpg.Connection
) -> None:
    room = await alice.create_room()
    rid = room["id"]
    seq = (await alice.send(rid, "keep me")).json()["seq"]
    before = await footprint(db, rid, alice.name)
    big = "x" * (70 * KIB)

    async def chunked() -> AsyncIterator[bytes]:
        body = raw_json({"body": big})
        for i in range(0, len(body), 8 * KIB):
            yield body[i : i + 8 * KIB]

    refused = [
        await post_raw(alice, f"/v1/rooms/{rid}/messages", raw_json({"body": big})),
        await alice.http.post(
            f"/v1/rooms/{rid}/messages", content=chunked(), headers={"Content-Type": "application/json"}
        ),
        await post_raw(alice, "/v1/rooms", raw_json({"name": big})),
        await post_raw(alice, f"/v1/rooms/{rid}/messages/{seq}", raw_json({"body": big}), method="PATCH"),
        await post_raw(
            alice, f"/v1/rooms/{rid}/messages", raw_json({"body": big}), **{"Idempotency-Key": "k"}
        ),
    ]
    for r in refused:
        problem = assert_problem(r, 413)
        assert "65536 bytes" in problem["detail"]
    assert await footprint(db, rid, alice.name) == before
    assert (await alice.http.get(f"/v1/rooms/{rid}/messages/{seq}")).json()["body"] == "keep me"
    await assert_serving(server.url)


async def _send_with_header(base_url: str, token: str, rid: str, size: int) -> int | str:
    """Status of a send carrying one `size`-byte header, or how the connection ended."""
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
            r = await client.post(
                f"/v1/rooms/{rid}/messages",
                json={"body": f"header of {size}"},
                headers={"Authorization": f"Bearer {token}", "X-Padding": "a" * size},
            )
    except httpx.TransportError as exc:
        return type(exc).__name__
    return r.status_code


async def test_huge_headers_never_cause_a_server_error(
    start_server: ServerFactory, make_user: UserFactory
) -> None:
    app = await start_server()
    alice = make_user("alice", app.url)
    rid = (await alice.create_room())["id"]
    for size in (64 * KIB, 1024 * KIB):
        outcome = await _send_with_header(app.url, alice.token, rid, size)
        assert not (isinstance(outcome, int) and outcome >= 500), (size, outcome)
        await assert_serving(app.url)
    assert (await alice.send(rid, "still serving")).status_code == 201


async def test_huge_headers_are_refused_and_store_nothing(
    start_server: ServerFactory, make_user: UserFactory, db: asyncpg.Connection
) -> None:
    app = await start_server()
    alice = make_user("alice", app.url)
    rid = (await alice.create_room())["id"]
    before = await footprint(db, rid, alice.name)
    outcome = await _send_with_header(app.url, alice.token, rid, 64 * KIB)
    assert outcome == 431, outcome
    assert await footprint(db, rid, alice.name) == before


async def test_deeply_nested_json_is_a_4xx_and_the_server_survives(
    server: RunningServer, alice: User, db: asyncpg.Connection
) -> None:
    rid = (await alice.create_room())["id"]
    before = await footprint(db, rid, alice.name)
    arrays_100k = b"[" * 100_000 + b"]" * 100_000  # 200 KB: over the body cap
    assert_problem(await post_raw(alice, f"/v1/rooms/{rid}/messages", arrays_100k), 413)
    depth = 32_000  # 64,000 bytes: under the cap, far over Python's recursion limit
    arrays = b"[" * depth + b"]" * depth
    objects = b'{"body":' + b'{"a":' * (depth // 5 - 10) + b"1" + b"}" * (depth // 5 - 10) + b"}"
    in_body = b'{"body": "x", "reply_to": ' + b"[" * (depth - 20) + b"]" * (depth - 20) + b"}"
    for payload in (arrays, objects, in_body):
        assert len(payload) < 64 * KIB
        for path in (f"/v1/rooms/{rid}/messages", "/v1/rooms"):
            r = await post_raw(alice, path, payload)
            assert 400 <= r.status_code < 500, (r.status_code, r.text)
            assert_problem(r, r.status_code)
    assert await footprint(db, rid, alice.name) == before
    await assert_serving(server.url)
    assert (await alice.send(rid, "after the nesting")).status_code == 201


# --- encodings -------------------------------------------------------------------------------------


async def test_invalid_utf8_bodies_are_4xx_and_store_nothing(
    server: RunningServer, alice: User, db: asyncpg.Connection
) -> None:
    rid = (await alice.create_room())["id"]
    seq = (await alice.send(rid, "original")).json()["seq"]
    before = await footprint(db, rid, alice.name)
    for bad in (b'{"body": "\xff\xfe"}', b'{"body": "\xed\xa0\x80"}', b'{"body": "\xc0\xaf"}', b"\x80"):
        for r in (
            await post_raw(alice, f"/v1/rooms/{rid}/messages", bad),
            await post_raw(alice, f"/v1/rooms/{rid}/messages/{seq}", bad, method="PATCH"),
            await post_raw(alice, "/v1/rooms", bad.replace(b"body", b"name")),
        ):
            # 400 (the body does not decode) or 422 (a JSON string holds the bad bytes), by where they are
            assert r.status_code in (400, 422), (bad, r.status_code, r.text)
            assert_problem(r, r.status_code)
    assert await footprint(db, rid, alice.name) == before
    assert (await alice.http.get(f"/v1/rooms/{rid}/messages/{seq}")).json()["body"] == "original"


@pytest.mark.parametrize("bad", ["a\u0000b", "\u0000", "\ud800", "x\udfffy", "\ud83d"], ids=repr)
async def test_nul_and_lone_surrogates_are_422_and_store_nothing(
    bad: str, server: RunningServer, alice: User, bob: User, db: asyncpg.Connection
) -> None:
    rid = (await alice.create_room(members=[bob]))["id"]
    seq = (await alice.send(rid, "original")).json()["seq"]
    before = await footprint(db, rid, alice.name)
    refused = [
        await post_raw(alice, f"/v1/rooms/{rid}/messages", raw_json({"body": bad})),
        await post_raw(
            alice, f"/v1/rooms/{rid}/messages", raw_json({"body": bad}), **{"Idempotency-Key": "nul"}
        ),
        await post_raw(alice, f"/v1/rooms/{rid}/messages/{seq}", raw_json({"body": bad}), method="PATCH"),
        await post_raw(alice, "/v1/rooms", raw_json({"name": bad})),
        await post_raw(alice, "/v1/rooms", raw_json({"name": "ok", "members": [bad]})),
    ]
    for r in refused:
        problem = assert_problem(r, 422)
        assert problem["type"].endswith("/validation") and bad not in r.text
    if "\u0000" in bad:  # a lone surrogate cannot be percent-encoded as UTF-8 at all
        assert_problem(await alice.http.put(f"/v1/rooms/{rid}/members/{bad.replace(chr(0), '%00')}"), 422)
    assert await footprint(db, rid, alice.name) == before
    assert (await bob.http.get(f"/v1/rooms/{rid}/messages/{seq}")).json()["body"] == "original"


# --- numbers ---------------------------------------------------------------------------------------


async def test_giant_and_negative_numbers_are_422_and_store_nothing(
    server: RunningServer, alice: User, bob: User, db: asyncpg.Connection
) -> None:
    rid = (await alice.create_room(members=[bob]))["id"]
    seq = (await alice.send(rid, "original")).json()["seq"]
    before = await footprint(db, rid, alice.name)
    for path in ("/v1/rooms", f"/v1/rooms/{rid}/messages"):
        for limit in (10**30, -1, 0, 101):
            assert_problem(await alice.http.get(path, params={"limit": limit}), 422)
    for n in GIANT:
        for method in ("GET", "DELETE"):
            assert_problem(await alice.http.request(method, f"/v1/rooms/{rid}/messages/{n}"), 422)
        assert_problem(await alice.http.patch(f"/v1/rooms/{rid}/messages/{n}", json={"body": "x"}), 422)
        for where in ("before", "after"):
            assert_problem(await alice.http.get(f"/v1/rooms/{rid}/messages", params={where: n}), 422)
        assert_problem(
            await post_raw(alice, f"/v1/rooms/{rid}/messages", raw_json({"body": "x", "reply_to": n})), 422
        )
        assert_problem(await post_raw(bob, f"/v1/rooms/{rid}/read", raw_json({"seq": n})), 422)
    assert_problem(await alice.http.get(f"/v1/rooms/{rid}/messages/0"), 422)
    assert_problem(await alice.http.get(f"/v1/rooms/{rid}/messages/1e3"), 422)
    assert_problem(await alice.http.get("/v1/rooms", params={"cursor": "A" * 31}), 400)
    assert_problem(await alice.http.get("/v1/events", params={"cursor": "v1." + "9" * 40}), 400)
    assert await footprint(db, rid, alice.name) == before
    # The largest documented value is accepted: the marker is clamped to the room's last seq.
    assert (await bob.http.post(f"/v1/rooms/{rid}/read", json={"seq": 2**63 - 1})).status_code == 204
    assert (await alice.http.get(f"/v1/rooms/{rid}/messages/{2**63 - 1}")).status_code == 404
    marks = {
        m["user_id"]: m["last_read_seq"] for m in (await bob.http.get(f"/v1/rooms/{rid}")).json()["members"]
    }
    assert marks[bob.name] == before["last_seq"] and seq <= before["last_seq"]


async def test_stream_cursors_out_of_range_are_400_without_log_noise(
    server: RunningServer, alice: User, caplog: pytest.LogCaptureFixture
) -> None:
    """Security review finding 7: a cursor whose id is at or above 2^63 (`v1.AAAAAAAB9V___________w`)
    started a 200 and then aborted on the database's bigint with two tracebacks."""
    await alice.create_room()
    top = 2**63
    for xid, id_ in ((1, top), (1, 2**64 - 1), (top, 1), (2**64 - 1, 0)):
        cursor = Cursor(xid, id_).encode()
        for where in ("query", "header"):
            params = {"cursor": cursor} if where == "query" else {}
            headers = {"Last-Event-ID": cursor} if where == "header" else {}
            r = await alice.http.get("/v1/events", params=params, headers=headers)
            problem = assert_problem(r, 400)
            assert problem["type"].endswith("/malformed-cursor"), problem
    assert (
        await alice.http.get("/v1/events", params={"cursor": "v1.AAAAAAAB9V___________w"})
    ).status_code == 400
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --- text that must survive ------------------------------------------------------------------------


async def test_sql_metacharacters_round_trip_as_text(
    start_server: ServerFactory, make_user: UserFactory, server: RunningServer, db: asyncpg.Connection
) -> None:
    alice, evil = make_user("alice", server.url), User(f"{SQL} {uuid.uuid4().hex[:6]}", server.url)
    try:
        room = await evil.create_room(SQL, members=[alice])
        rid = room["id"]
        assert room["name"] == SQL and room["created_by"] == evil.name
        sent = await evil.send(rid, SQL + ' " \\ %s $1 \\x00', key=SQL)
        assert sent.status_code == 201, sent.text
        assert (await evil.send(rid, SQL + ' " \\ %s $1 \\x00', key=SQL)).status_code == 200
        member = await evil.http.put(f"/v1/rooms/{rid}/members/{SQL.replace(' ', '%20').replace(';', '%3B')}")
        assert member.status_code == 201 and member.json()["user_id"] == SQL
        history = (await alice.http.get(f"/v1/rooms/{rid}/messages")).json()["items"]
        assert history[-1]["body"] == SQL + ' " \\ %s $1 \\x00' and history[-1]["sender"] == evil.name
        detail = (await alice.http.get(f"/v1/rooms/{rid}")).json()
        assert {m["user_id"] for m in detail["members"]} == {evil.name, alice.name, SQL}
        assert await db.fetchval("SELECT count(*) FROM rooms WHERE id = $1", uuid.UUID(rid)) == 1
    finally:
        await evil.http.aclose()


async def test_unicode_edge_cases_round_trip_byte_exact(
    server: RunningServer, alice: User, bob: User
) -> None:
    assert UNICODE["nfc"] != UNICODE["nfd"]
    name = UNICODE["zwj"] + UNICODE["rtl"][:20]
    room = await alice.create_room(name, members=[bob])
    rid = room["id"]
    assert room["name"].encode() == name.encode()
    cursor = (await bob.http.get("/v1/rooms")).json()["stream_cursor"]
    sent: dict[str, dict[str, Any]] = {}
    for label, text in UNICODE.items():
        r = await alice.send(rid, text, key=f"unicode-{label}")
        assert r.status_code == 201, r.text
        assert r.json()["body"].encode() == text.encode() and text.encode() in r.content
        sent[label] = r.json()
    history = await bob.http.get(f"/v1/rooms/{rid}/messages")
    bodies = [m["body"] for m in history.json()["items"]]
    assert [b.encode() for b in bodies] == [t.encode() for t in UNICODE.values()]
    for label, text in UNICODE.items():
        one = await bob.http.get(f"/v1/rooms/{rid}/messages/{sent[label]['seq']}")
        assert one.json()["body"].encode() == text.encode() and text.encode() in one.content
    async with open_stream(server.url, bob.token, room_id=rid, cursor=cursor) as stream:
        frames = await stream.wait_for(len(UNICODE), "message.created")
    assert [f.data["message"]["body"].encode() for f in frames] == [t.encode() for t in UNICODE.values()]
    listed = [r for r in (await bob.http.get("/v1/rooms")).json()["items"] if r["id"] == rid]
    assert listed[0]["name"].encode() == name.encode()


# --- tokens ----------------------------------------------------------------------------------------

ISSUER, AUDIENCE = "https://issuer.test", "chat-api"


def good(sub: str, **extra: Any) -> dict[str, Any]:
    return claims(sub, iss=ISSUER, aud=AUDIENCE, **extra)


def _no_exp(sub: str) -> dict[str, Any]:
    payload = good(sub)
    del payload["exp"]
    return payload


def _without(sub: str, claim: str) -> dict[str, Any]:
    payload = good(sub)
    del payload[claim]
    return payload


TOKENS = {
    # label: (token for `sub`, a phrase of the 401 detail)
    "alg none": (lambda sub: unsigned(good(sub)), "algorithm is not accepted"),
    "wrong key": (lambda sub: hs256(good(sub), "another-secret-" + "y" * 32), "signature"),
    "wrong audience": (lambda sub: hs256(claims(sub, iss=ISSUER, aud="other-api")), "audience"),
    "no audience": (lambda sub: hs256(claims(sub, iss=ISSUER)), "aud"),
    "wrong issuer": (lambda sub: hs256(claims(sub, iss="https://evil.test", aud=AUDIENCE)), "issuer"),
    "expired": (
        lambda sub: hs256(good(sub, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)),
        "expired",
    ),
    "future nbf": (lambda sub: hs256(good(sub, nbf=int(time.time()) + 600)), "not valid yet"),
    "no exp": (lambda sub: hs256(_no_exp(sub)), "exp"),
    "garbage": (lambda sub: "not.a.jwt", "malformed"),
    # Security review finding 3: time claims are numbers, and a token lives 24 hours at most.
    "string exp": (lambda sub: hs256(good(sub) | {"exp": str(int(time.time()) + 600)}), "not a number"),
    "exp 10^30": (lambda sub: hs256(good(sub, exp=10**30)), "lifetime"),
    "lifetime of a day and a second": (lambda sub: hs256(good(sub, ttl=86401)), "lifetime"),
    "no iat": (lambda sub: hs256(_without(sub, "iat")), "iat"),
}


@pytest.fixture
async def audience_app(start_server: ServerFactory) -> RunningServer:
    return await start_server(jwt_issuer=ISSUER, jwt_audience=AUDIENCE)


async def _create_room_as(base_url: str, token: str, name: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
        return await client.post(
            "/v1/rooms", json={"name": name, "members": ["x"]}, headers={"Authorization": f"Bearer {token}"}
        )


@pytest.mark.parametrize("label", list(TOKENS))
async def test_refused_tokens_are_401_and_store_nothing(
    label: str, audience_app: RunningServer, db: asyncpg.Connection
) -> None:
    make, phrase = TOKENS[label]
    sub = f"intruder-{uuid.uuid4().hex[:8]}"
    name = f"should not exist {sub}"
    assert (await _create_room_as(audience_app.url, hs256(good(sub)), "control")).status_code == 201
    r = await _create_room_as(audience_app.url, make(sub), name)
    problem = assert_problem(r, 401)
    assert phrase in problem["detail"] and r.headers["www-authenticate"].startswith("Bearer")
    assert await db.fetchval("SELECT count(*) FROM rooms WHERE name = $1", name) == 0
    assert (await footprint(db, None, sub))["rooms_created"] == 1  # only the control room


@pytest.mark.parametrize("sub", ["a\u0000b", "\ud800"], ids=["nul", "surrogate"])
async def test_token_whose_subject_cannot_be_stored_is_401(
    sub: str, server: RunningServer, db: asyncpg.Connection
) -> None:
    token = hs256(claims() | {"sub": sub})  # PyJWT writes the JSON escapes \u0000 / \ud800
    name = f"stored-by-bad-sub-{uuid.uuid4().hex[:8]}"
    r = await _create_room_as(server.url, token, name)
    assert await db.fetchval("SELECT count(*) FROM rooms WHERE name = $1", name) == 0
    assert_problem(r, 401)


# --- JWKS rotation ---------------------------------------------------------------------------------


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


async def test_jwks_rotation_retires_the_old_key_and_refused_tokens_store_nothing(
    start_server: ServerFactory, jwks: JwksServer, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in tests/test_auth.py: 0 s between refetches, so the rotation needs no 10 s sleep.
    monkeypatch.setattr(chat_api.auth.tokens, "JWKS_MIN_REFRESH_SECONDS", 0.0)
    old, new, forger = rsa_key(), rsa_key(), rsa_key()
    jwks.publish(rsa_jwk(old, "key-1"))
    app = await start_server(jwt_secret=None, jwt_jwks_url=jwks.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    sub = f"rotating-{uuid.uuid4().hex[:8]}"
    assert (
        await _create_room_as(app.url, signed(old, "key-1", sub=sub), "before rotation")
    ).status_code == 201

    with jwks._lock:  # the issuer rotates: the new key replaces the old one
        jwks.keys[:] = [rsa_jwk(new, "key-2")]
    assert (
        await _create_room_as(app.url, signed(new, "key-2", sub=sub), "after rotation")
    ).status_code == 201
    refused = {
        "retired key": signed(old, "key-1", sub=sub),
        "forged with the new kid": signed(forger, "key-2", sub=sub),
        "unknown kid": signed(forger, "key-3", sub=sub),
        "HS256 under a JWKS": hs256(good(sub)),
    }
    for label, token in refused.items():
        r = await _create_room_as(app.url, token, f"refused: {label}")
        assert_problem(r, 401)
        assert await db.fetchval("SELECT count(*) FROM rooms WHERE name = $1", f"refused: {label}") == 0, (
            label
        )
    assert (await footprint(db, None, sub))["rooms_created"] == 2


async def test_server_still_serves_after_the_hostile_requests(server: RunningServer, alice: User) -> None:
    await assert_serving(server.url)
    rid = (await alice.create_room())["id"]
    r = await asyncio.wait_for(alice.send(rid, "fine"), 10)
    assert r.status_code == 201
