"""chat-api-client (clients/python) against a live `chat-api serve`: the whole /v1 API sync and async,
its models against the OpenAPI document, retries that never send twice, the token provider, and the
event stream: resumed across two server processes, reset, reauth, typing, dedupe."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NotRequired, get_args, get_origin, get_type_hints

import pytest

import chat_api
from chat_api.auth.tokens import mint_token
from tests.support.clients import LosingFirstAnswer, Switchboard, require_python_client
from tests.support.eventlog import age_and_prune
from tests.support.ports import free_port
from tests.support.settings import TEST_SECRET
from tests.support.workers import ServeProcess, serve_process

require_python_client()

import chat_api_client  # noqa: E402
from chat_api_client import (  # noqa: E402
    UNSET,
    AsyncChatClient,
    AsyncEventStream,
    ChatClient,
    Event,
    EventStream,
    ProblemError,
    Reset,
    StreamItem,
    Typing,
    _calls,
    models,
)

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "python"
FAST = {"CHAT_API_STREAM_HEARTBEAT_SECONDS": "0.5"}
WAIT = 20.0  # seconds: a deadline for waiting, never a measurement


def token(user: str, ttl: int = 3600) -> str:
    return mint_token(TEST_SECRET, user, ttl)


async def eventually(what: str, condition: Callable[[], bool], timeout: float = WAIT) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)


class Collector:
    """Iterates a stream of either client in the background (a task, or a thread for the sync one),
    keeping every item."""

    def __init__(self, stream: EventStream | AsyncEventStream) -> None:
        self.stream = stream
        self.items: list[StreamItem] = []
        self.error: BaseException | None = None
        if isinstance(stream, EventStream):
            self.thread: threading.Thread | None = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        else:
            self.thread = None
            self.task = asyncio.create_task(self._aread(stream))

    def _read(self) -> None:
        assert isinstance(self.stream, EventStream)
        try:
            for item in self.stream:
                self.items.append(item)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    async def _aread(self, stream: AsyncEventStream) -> None:
        async for item in stream:
            self.items.append(item)

    def bodies(self) -> list[str]:
        return [i.message["body"] for i in self.events("message.created")]

    def events(self, *kinds: str) -> list[Event]:
        return [i for i in self.items if isinstance(i, Event) and (not kinds or i.kind in kinds)]

    async def stop(self) -> None:
        if self.thread is not None:
            assert isinstance(self.stream, EventStream)
            self.stream.close()
            await asyncio.to_thread(self.thread.join, 5)
            assert not self.thread.is_alive(), "close() ends the iteration"
        else:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.error is not None:
            raise self.error


def reader(flavour: str, url: str, credential: Any, board: Switchboard) -> Awaited:
    """A client of `flavour` whose requests go through `board`."""
    if flavour == "sync":
        return Awaited(ChatClient(url, credential, transport=board))
    return Awaited(AsyncChatClient(url, credential, transport=board))


# --- the package --------------------------------------------------------------------------------------


def test_the_client_is_versioned_with_the_service() -> None:
    client_project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    service_project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chat_api_client.__version__ == client_project["version"] == service_project["version"]
    assert chat_api_client.__version__ == chat_api.__version__
    assert client_project["dependencies"] == ["httpx>=0.27,<1"], "httpx is its one dependency"


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    """`chat-api openapi`: the document the models are checked against (no database needed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_API_", "DATABASE_URL"))}
    out = subprocess.run(
        [sys.executable, "-m", "chat_api", "openapi"], env=env, capture_output=True, check=True, timeout=60
    )
    document: dict[str, Any] = json.loads(out.stdout)
    return document


def schema_type(schema: dict[str, Any]) -> set[str]:
    """The JSON types of a schema as names: "string", "integer", ..., "null", or a schema's name."""
    if "anyOf" in schema:
        return set().union(*(schema_type(s) for s in schema["anyOf"]))
    if "$ref" in schema:
        return {schema["$ref"].rsplit("/", 1)[1]}
    if schema.get("type") == "array":
        return {f"array[{'|'.join(sorted(schema_type(schema.get('items', {}))))}]"}
    return {schema.get("type", "any")}


def hint_type(hint: Any) -> set[str]:
    names = {str: "string", int: "integer", bool: "boolean", float: "number", type(None): "null"}
    if get_origin(hint) is NotRequired:
        return hint_type(get_args(hint)[0])
    if hint in names:
        return {names[hint]}
    if get_origin(hint) is list:
        return {f"array[{'|'.join(sorted(hint_type(get_args(hint)[0])))}]"}
    if get_origin(hint) is dict:
        return {"object"}
    if args := get_args(hint):  # a union
        return set().union(*(hint_type(a) for a in args))
    return {hint.__name__}


def test_the_models_are_the_openapi_documents_schemas(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    for name, model in models.SCHEMAS.items():
        schema = schemas[name]
        hints = get_type_hints(model)
        assert set(hints) == set(schema["properties"]), name
        assert set(model.__required_keys__) == set(schema.get("required", [])), name  # type: ignore[attr-defined]
        for field, prop in schema["properties"].items():
            # The document says "an object" for the errors of a validation problem; so do we.
            assert hint_type(hints[field]) == schema_type(prop), f"{name}.{field}"
    answered = {
        ref.rsplit("/", 1)[1]
        for path in openapi["paths"].values()
        for operation in path.values()
        for answer in operation["responses"].values()
        for content in answer.get("content", {}).values()
        if (ref := content.get("schema", {}).get("$ref"))
    }
    assert answered <= set(models.SCHEMAS), "every object the service answers with has a model"


def test_every_v1_operation_is_covered_with_its_answers_schema(openapi: dict[str, Any]) -> None:
    operations = {}
    for path, methods in openapi["paths"].items():
        for method, operation in methods.items():
            if path.startswith("/v1/"):
                ok = [a for status, a in operation["responses"].items() if status.startswith("2")]
                refs = {
                    c["schema"]["$ref"].rsplit("/", 1)[1]
                    for a in ok
                    for c in a.get("content", {}).values()
                    if "$ref" in c.get("schema", {})
                }
                operations[(method.upper(), path)] = refs.pop() if refs else None
    assert operations == _calls.OPERATIONS


# --- the whole API, sync and async ---------------------------------------------------------------------


class Awaited:
    """One awaitable face for both clients: the sync one's calls run in a thread."""

    def __init__(self, client: ChatClient | AsyncChatClient) -> None:
        self.client = client

    def stream(self, *args: Any, **kwargs: Any) -> EventStream | AsyncEventStream:
        return self.client.stream(*args, **kwargs)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if isinstance(self.client, ChatClient):
                return await asyncio.to_thread(method, *args, **kwargs)
            return await method(*args, **kwargs)

        return call


async def problem(call: Awaitable[Any]) -> ProblemError:
    with pytest.raises(ProblemError) as caught:
        await call
    return caught.value


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_the_whole_api_round_trip(live: ServeProcess, tag: str, flavour: str) -> None:
    alice_id, bob_id, carol_id = f"alice-{tag}", f"bob-{tag}", f"carol-{tag}"
    make = ChatClient if flavour == "sync" else AsyncChatClient
    a, b = Awaited(make(live.url, token(alice_id))), Awaited(make(live.url, token(bob_id)))

    # Rooms: create, list with a cursor, get, rename, topic set and cleared, members.
    room = await a.create_room("general", [bob_id])
    rid = room["id"]
    assert (room["kind"], room["name"], room["created_by"]) == ("group", "general", alice_id)
    assert {(m["user_id"], m["role"]) for m in room["members"]} == {(alice_id, "owner"), (bob_id, "member")}
    other = await a.create_room("second")
    first_page = await a.list_rooms(limit=1)
    assert [r["id"] for r in first_page["items"]] == [other["id"]] and first_page["next_cursor"]
    assert first_page["stream_cursor"].startswith("v1.")
    second_page = await a.list_rooms(limit=1, cursor=first_page["next_cursor"])
    assert [r["id"] for r in second_page["items"]] == [rid]
    if isinstance(a.client, ChatClient):
        pages = await asyncio.to_thread(lambda: list(a.client.iter_rooms(limit=1)))  # type: ignore[union-attr]
    else:
        pages = [page async for page in a.client.iter_rooms(limit=1)]
    assert [r["id"] for page in pages for r in page["items"]] == [other["id"], rid]
    assert (await a.get_room(rid))["members"] == room["members"]
    renamed = await a.update_room(rid, name="renamed", topic="plans")
    assert (renamed["name"], renamed["topic"]) == ("renamed", "plans")
    cleared = await a.update_room(rid, topic=None)
    assert (cleared["name"], cleared["topic"]) == ("renamed", None)
    assert (await a.update_room(rid, name="general", topic=UNSET))["topic"] is None
    assert await a.add_member(rid, carol_id) == {"user_id": carol_id, "role": "member", "last_read_seq": 0}
    assert (await a.add_member(rid, carol_id))["user_id"] == carol_id  # already a member: 200
    assert await a.remove_member(rid, carol_id) is None
    assert (await problem(b.update_room(rid, name="mine"))).status == 403

    # Direct messages: one room, whoever opens it.
    dm = await a.open_dm(bob_id)
    assert dm["kind"] == "direct" and (await b.open_dm(alice_id))["id"] == dm["id"]
    yourself = await problem(a.open_dm(alice_id))
    assert yourself.status == 422 and yourself.kind == "validation"

    # Messages: send once per key, threads, history pages, one, edit, reactions, read marker.
    key = f"key-{tag}-{flavour}"
    hello = await a.send_message(rid, f"hello @{bob_id}", idempotency_key=key)
    assert hello["mentions"] == [bob_id] and hello["sender"] == alice_id
    assert await a.send_message(rid, f"hello @{bob_id}", idempotency_key=key) == hello
    reply = await b.send_message(rid, "a reply", reply_to=hello["seq"])
    assert (reply["reply_to"], reply["thread_root"]) == (hello["seq"], hello["seq"])
    thread = await a.get_thread(rid, hello["seq"])
    assert [m["id"] for m in thread["items"]] == [reply["id"]] and not thread["has_more"]
    newest = await a.get_messages(rid, limit=1)
    assert [m["id"] for m in newest["items"]] == [reply["id"]] and newest["has_more"]
    older = await a.get_messages(rid, before=reply["seq"], limit=1)
    assert [m["id"] for m in older["items"]] == [hello["id"]]
    newer = await a.get_messages(rid, after=hello["seq"])
    assert [m["id"] for m in newer["items"]] == [reply["id"]] and not newer["has_more"]
    root = await a.get_message(rid, hello["seq"])
    assert (root["reply_count"], root["last_reply_seq"]) == (1, reply["seq"])
    edited = await a.edit_message(rid, hello["seq"], "hello again")
    assert edited["body"] == "hello again" and edited["edited_at"] is not None
    reacted = await b.add_reaction(rid, hello["seq"], "👍🏽")
    assert reacted["reactions"] == [{"emoji": "👍🏽", "count": 1, "users": [bob_id]}]
    await a.add_reaction(rid, hello["seq"], "+1")
    await b.remove_reaction(rid, hello["seq"], "👍🏽")
    assert (await a.get_message(rid, hello["seq"]))["reactions"] == [
        {"emoji": "+1", "count": 1, "users": [alice_id]}
    ]
    assert (await problem(a.add_reaction(rid, hello["seq"], "not an emoji"))).status == 422
    await b.mark_read(rid, reply["seq"])
    marks = {m["user_id"]: m["last_read_seq"] for m in (await a.get_room(rid))["members"]}
    assert marks[bob_id] == reply["seq"]
    await a.typing(rid)

    # Search, paged by cursor, newest first.
    word = f"w{tag}{flavour}"
    sent = [await a.send_message(rid, f"{word} number {i}") for i in range(3)]
    page = await a.search(word, limit=2)
    assert [m["id"] for m in page["items"]] == [sent[2]["id"], sent[1]["id"]] and page["next_cursor"]
    rest = await a.search(word, room_id=rid, limit=2, cursor=page["next_cursor"])
    assert [m["id"] for m in rest["items"]] == [sent[0]["id"]] and rest["next_cursor"] is None

    # Delete leaves a tombstone; problems come typed.
    await b.delete_message(rid, reply["seq"])
    tomb = await a.get_message(rid, reply["seq"])
    assert (tomb["deleted"], tomb["body"]) == (True, None)
    gone = await problem(b.edit_message(rid, reply["seq"], "too late"))
    assert (gone.status, gone.kind, gone.title) == (409, "message-deleted", "Conflict")
    missing = await problem(a.get_room(str(uuid.uuid4())))
    assert (missing.status, missing.type, missing.detail) == (404, "about:blank", "No such room.")

    # Leaving for good: the owner cannot add you back.
    await b.leave_room(rid, stay_out=True)
    refused = await problem(a.add_member(rid, bob_id))
    assert (refused.status, refused.kind) == (403, "refused")
    assert (await problem(b.get_room(rid))).status == 404


def test_a_send_whose_answer_is_lost_is_sent_again_with_its_key_and_makes_one_message(
    live: ServeProcess, tag: str
) -> None:
    alice = ChatClient(live.url, token(f"alice-{tag}"))
    room = alice.create_room("retries")
    path = f"/v1/rooms/{room['id']}/messages"
    lossy = LosingFirstAnswer(live.port, "POST", path)
    with ChatClient(live.url, token(f"alice-{tag}"), transport=lossy) as flaky:
        message = flaky.send_message(room["id"], "exactly once")
    assert lossy.lost is not None and lossy.lost.status_code == 201, "the first attempt made the message"
    keys = [r.headers["Idempotency-Key"] for r in lossy.requests if r.url.path == path]
    assert len(keys) == 2 and keys[0] == keys[1], "the retry carried the same key"
    history = alice.get_messages(room["id"])["items"]
    assert [m["id"] for m in history] == [message["id"]]


async def test_the_token_provider_is_asked_again_with_refresh_after_a_401(
    live: ServeProcess, tag: str
) -> None:
    user = f"alice-{tag}"
    asked: list[bool] = []

    async def provider(*, refresh: bool) -> str:
        asked.append(refresh)
        return token(user) if refresh else token(user, ttl=-3600)  # expired beyond any leeway

    async with AsyncChatClient(live.url, provider) as client:
        assert (await client.create_room("fresh"))["created_by"] == user
    assert asked == [False, True]

    with ChatClient(live.url, lambda *, refresh: token(user, ttl=-3600)) as stale:
        assert (await problem(asyncio.to_thread(stale.list_rooms))).status == 401


# --- the stream --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flavour", "stop"), [("async", "sigterm"), ("async", "sigkill"), ("sync", "sigkill")]
)
async def test_a_stream_cut_on_one_server_process_resumes_on_another_with_nothing_lost_or_repeated(
    clients_db: tuple[str, str], tmp_path: Path, tag: str, flavour: str, stop: str
) -> None:
    """N messages around the cut, exactly N received, in order: process A stops mid-stream (drained
    or killed), the helper finds process B behind the same address and resumes with Last-Event-ID."""
    with (
        serve_process(clients_db[1], tmp_path, "a", **FAST) as a,
        serve_process(clients_db[1], tmp_path, "b", **FAST) as b,
    ):
        await asyncio.gather(asyncio.to_thread(a.wait_ready, 1), asyncio.to_thread(b.wait_ready, 1))
        board = Switchboard(a.port)
        alice = AsyncChatClient(b.url, token(f"alice-{tag}"))
        bob = reader(flavour, a.url, token(f"bob-{tag}"), board)
        room = await alice.create_room("cut", [f"bob-{tag}"])
        start = (await bob.list_rooms())["stream_cursor"]
        seen = Collector(bob.stream(start))
        expected = [f"m{i}" for i in range(15)]
        for body in expected[:5]:
            await alice.send_message(room["id"], body)
        await eventually("5 messages on process A", lambda: len(seen.bodies()) == 5)
        before_cut = seen.stream.cursor
        if stop == "sigkill":
            a.proc.kill()
        await asyncio.to_thread(a.stop)
        board.port = b.port  # the balancer sends new connections to B
        for body in expected[5:10]:  # while the helper is away
            await alice.send_message(room["id"], body)
        await eventually("the helper reconnects", lambda: len(board.streams) >= 2)
        for body in expected[10:]:
            await alice.send_message(room["id"], body)
        await eventually("15 messages", lambda: len(seen.bodies()) >= 15)
        await asyncio.sleep(1)  # a repeat would come now
        await seen.stop()
    assert seen.bodies() == expected
    assert board.streams[0] == start and set(board.streams[1:]) == {before_cut}


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_cursor_older_than_the_log_resets_once_and_the_stream_goes_on_from_the_reset(
    live: ServeProcess, clients_db: tuple[str, str], tag: str, flavour: str
) -> None:
    alice = AsyncChatClient(live.url, token(f"alice-{tag}"))
    room = await alice.create_room("reset")
    old = (await alice.list_rooms())["stream_cursor"]
    await alice.send_message(room["id"], "soon pruned")
    assert await age_and_prune(clients_db[0], room["id"]) > 0

    resets: list[Reset] = []
    board = Switchboard(live.port)
    again = reader(flavour, live.url, token(f"alice-{tag}"), board)
    seen = Collector(again.stream(old, on_reset=resets.append))
    await eventually("a reset", lambda: len(resets) == 1)
    board.cut()  # before anything else arrives: the resume must start from the reset's id
    await eventually("the helper reconnects", lambda: len(board.streams) == 2)
    after = await alice.send_message(room["id"], "after the reset")
    await eventually("the message after the reset", lambda: len(seen.bodies()) == 1)
    await asyncio.sleep(1)
    await seen.stop()
    assert seen.items[0] == resets[0] and len(resets) == 1, "one reset, not one per reconnection"
    assert board.streams == [old, resets[0].cursor]
    assert seen.bodies() == [after["body"]], "nothing of the pruned log"


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_stream_that_ends_with_reauth_continues_with_a_fresh_token_losing_nothing(
    live: ServeProcess, tag: str, flavour: str
) -> None:
    """The stream's token lives 2 s; at the heartbeat after it, the service ends the stream with
    `event: reauth`. The helper asks the provider for a fresh token and resumes from its last id: a
    message sent while it does so (by the provider itself, so always in that gap) is not lost."""
    alice = ChatClient(live.url, token(f"alice-{tag}"))
    room = alice.create_room("reauth", [f"bob-{tag}"])
    asked: list[bool] = []
    current = token(f"bob-{tag}", ttl=2)

    def provider(*, refresh: bool) -> str:
        nonlocal current
        asked.append(refresh)
        if refresh:
            alice.send_message(room["id"], "while reconnecting")
            current = token(f"bob-{tag}")
        return current

    async def async_provider(*, refresh: bool) -> str:
        return await asyncio.to_thread(provider, refresh=refresh)

    board = Switchboard(live.port)
    bob = reader(flavour, live.url, provider if flavour == "sync" else async_provider, board)
    start = (await bob.list_rooms())["stream_cursor"]
    seen = Collector(bob.stream(start))
    await asyncio.to_thread(alice.send_message, room["id"], "before expiry")
    await eventually("the first message", lambda: len(seen.bodies()) == 1)
    before = seen.stream.cursor
    await eventually("a fresh token", lambda: True in asked, timeout=10)
    await eventually("the message sent during the reconnection", lambda: len(seen.bodies()) == 2)
    await asyncio.to_thread(alice.send_message, room["id"], "after")
    await eventually("the message after", lambda: len(seen.bodies()) == 3)
    await asyncio.sleep(1)
    await seen.stop()
    alice.close()
    assert seen.bodies() == ["before expiry", "while reconnecting", "after"]
    assert asked.count(True) == 1, asked
    assert board.streams == [start, before], "one reconnection, from the last id"


def test_typing_notices_come_through_without_moving_the_cursor_and_close_ends_the_stream(
    live: ServeProcess, tag: str
) -> None:
    """With the sync client, its stream iterated in a thread."""
    alice = ChatClient(live.url, token(f"alice-{tag}"))
    bob = ChatClient(live.url, token(f"bob-{tag}"))
    room = alice.create_room("typing", [f"bob-{tag}"])
    stream = bob.stream(bob.list_rooms()["stream_cursor"])
    got: list[tuple[StreamItem, str | None]] = []

    def read() -> None:
        for item in stream:
            got.append((item, stream.cursor))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def wait(what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            assert time.monotonic() < deadline, f"not within {WAIT} s: {what}: {got}"
            time.sleep(0.05)

    hello = alice.send_message(room["id"], "hello")
    wait("hello", lambda: any(isinstance(i, Event) and i.message.get("id") == hello["id"] for i, _ in got))
    at_hello = stream.cursor
    alice.typing(room["id"])
    wait("typing", lambda: any(isinstance(i, Typing) for i, _ in got))
    after = alice.send_message(room["id"], "after typing")
    wait("after", lambda: any(isinstance(i, Event) and i.message.get("id") == after["id"] for i, _ in got))
    stream.close()
    reader.join(5)
    assert not reader.is_alive(), "close() from another thread ends the iteration"
    [(notice, cursor_then)] = [(i, c) for i, c in got if isinstance(i, Typing)]
    assert (notice.room_id, notice.user_id) == (room["id"], f"alice-{tag}") and notice.expires_at.endswith(
        "Z"
    )
    assert cursor_then == at_hello, "a typing frame has no id: the cursor stays"
    assert stream.cursor != at_hello and got[-1][0] == Event(
        "message.created", stream.cursor or "", room["id"], after["seq"], {**got[-1][0].data}
    )


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_a_repeated_event_is_applied_once(live: ServeProcess, tag: str, flavour: str) -> None:
    """The connection is cut and the next stream replays from an older position (as a stream opened
    from `stream_cursor` may repeat what a listing showed): the repeats are dropped by (room_id, seq)."""
    alice = AsyncChatClient(live.url, token(f"alice-{tag}"))
    room = await alice.create_room("dedupe", [f"bob-{tag}"])
    board = Switchboard(live.port)
    bob = reader(flavour, live.url, token(f"bob-{tag}"), board)
    start = (await bob.list_rooms())["stream_cursor"]
    seen = Collector(bob.stream(start))
    for body in ("one", "two", "three"):
        await alice.send_message(room["id"], body)
    await eventually("three messages", lambda: len(seen.bodies()) == 3)
    board.rewind_to = start
    board.cut()
    await eventually("the replay from the start", lambda: len(board.streams) == 2)
    await alice.send_message(room["id"], "four")
    await eventually("four", lambda: len(seen.bodies()) >= 4)
    await asyncio.sleep(1)
    await seen.stop()
    assert board.streams == [start, start], "the server really replayed them"
    assert seen.bodies() == ["one", "two", "three", "four"]
    positions = [(e.room_id, e.seq) for e in seen.events()]
    assert len(positions) == len(set(positions))


# --- the example bot ---------------------------------------------------------------------------------


class Bot:
    """clients/python/examples/ping_bot.py as a child process, its output in a file."""

    def __init__(self, url: str, user: str, state: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_API_", "DATABASE_URL"))}
        env.update(CHAT_API_URL=url, CHAT_API_TOKEN=token(user), PING_BOT_STATE=str(state))
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(CLIENT / "examples" / "ping_bot.py")],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_the_ping_bot_answers_every_ping_once_across_a_server_restart_and_its_own_crash(
    clients_db: tuple[str, str], tmp_path: Path, tag: str
) -> None:
    bot_id, alice_id = f"pingbot-{tag}", f"alice-{tag}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state, log = tmp_path / "bot.cursor", tmp_path / "bot.log"
    server = ServeProcess(clients_db[1], tmp_path, "first", port, **FAST)
    bot: Bot | None = None
    pings: list[tuple[str, int]] = []
    alice = ChatClient(url, token(alice_id))

    def answers() -> list[tuple[str, int | None]]:
        """(room, the ping it answers) of every pong of the bot, repeats included."""
        found = []
        for rid in {room for room, _ in pings}:
            for m in alice.get_messages(rid, limit=100)["items"]:
                if m["sender"] == bot_id:
                    assert m["body"] == "pong", m
                    found.append((rid, m["reply_to"]))
        return found

    def ping(room_id: str) -> None:
        pings.append((room_id, alice.send_message(room_id, "ping")["seq"]))
        deadline = time.monotonic() + WAIT
        while set(answers()) != set(pings):
            assert bot is not None and bot.proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no pong for {pings[-1]}:\n{log.read_text()}"
            time.sleep(0.1)

    try:
        server.wait_ready(1)
        general = alice.create_room("general", [bot_id])["id"]
        bot = Bot(url, bot_id, state, log)
        deadline = time.monotonic() + WAIT
        while not state.exists():
            assert time.monotonic() < deadline and bot.proc.poll() is None, log.read_text()
            time.sleep(0.05)
        first_place = state.read_text()
        ping(general)
        later = alice.create_room("later")["id"]
        alice.add_member(later, bot_id)  # a room the bot is added to while it runs
        ping(later)

        server.stop()  # the server restarts: same port, same database
        server = ServeProcess(clients_db[1], tmp_path, "second", port, **FAST)
        server.wait_ready(1)
        ping(general)
        ping(later)

        # The bot crashes, and its saved place is older than its answers (as after a crash between
        # sending a pong and saving): the stream replays those pings; their pongs are not sent again.
        bot.kill()
        state.write_text(first_place)
        bot = Bot(url, bot_id, state, log)
        ping(general)
        time.sleep(1.5)  # a second answer to anything would come now
        assert sorted(answers()) == sorted(pings), log.read_text()
        assert len(pings) == 5
    finally:
        if bot is not None:
            bot.kill()
        server.stop()
        alice.close()


async def test_aclose_inside_the_loop_ends_the_async_stream(live: ServeProcess, tag: str) -> None:
    alice = AsyncChatClient(live.url, token(f"alice-{tag}"))
    room = await alice.create_room("close")
    start = (await alice.list_rooms())["stream_cursor"]
    sent = await alice.send_message(room["id"], "the only one")
    got = []
    async with asyncio.timeout(WAIT):
        async with alice.stream(start) as stream:
            async for item in stream:
                got.append(item)
                if isinstance(item, Event) and item.kind == "message.created":
                    await stream.aclose()
    assert isinstance(got[-1], Event) and got[-1].message == sent
    await alice.aclose()
