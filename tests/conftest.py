"""Shared fixtures: one migrated database per test session, real HTTP servers, users with tokens."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from chat_api.app import create_app
from chat_api.auth.tokens import mint_token
from chat_api.core.config import Settings, load_settings
from chat_api.core.migrations import migrate
from chat_api.server import server_config
from tests.support.pg import admin_database_url

TEST_SECRET = "test-secret-" + "x" * 32
# The servers of the tests log in as a runtime role without DDL rights, as in the overlays (a hyphen
# in the name, like theirs, so quoting is exercised). Roles belong to the whole PostgreSQL server:
# one per test session, dropped at its end.
RUNTIME_ROLE = f"chat-runtime-test-{uuid.uuid4().hex[:8]}"
RUNTIME_PASSWORD = "runtime-" + uuid.uuid4().hex  # trust auth ignores it; testcontainers needs one


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def with_user(url: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    login = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{login}@{host}"))


@pytest.fixture(scope="session")
def admin_url() -> Iterator[str]:
    with admin_database_url() as url:
        yield url


@pytest.fixture(scope="session")
async def runtime_role(admin_url: str) -> AsyncIterator[str]:
    """A login role for the servers of this session; `chat-api migrate` grants it what it needs."""
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f"CREATE ROLE \"{RUNTIME_ROLE}\" LOGIN PASSWORD '{RUNTIME_PASSWORD}'")
    try:
        yield RUNTIME_ROLE
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{RUNTIME_ROLE}"')
        await admin.close()


@pytest.fixture(scope="session")
async def database_url(admin_url: str, runtime_role: str) -> AsyncIterator[str]:
    """A fresh database for this session, migrated with the real Alembic migrations (as the owner,
    granting the runtime role as the migration Job does)."""
    name = f"chat_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(admin_url, name)
    try:
        await migrate(make_settings(url, db_runtime_role=runtime_role))
        yield url
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
def runtime_url(database_url: str, runtime_role: str) -> str:
    """The session's database as the runtime role: what the servers of the tests connect as."""
    return with_user(database_url, runtime_role, RUNTIME_PASSWORD)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "database_url_file": None,
        "jwt_secret": TEST_SECRET,
        "jwt_jwks_url": None,
        "jwt_issuer": None,
        "jwt_audience": None,
        "db_pool_size": 5,
        "db_pool_max_overflow": 10,
        "rate_limits": False,  # off unless a test turns them on (tests/test_rate_limits.py)
        "send_rate_per_second": 0,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture(scope="session")
def settings(runtime_url: str) -> Settings:
    return make_settings(runtime_url)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def stop(self) -> None:
        app = self.server.config.app
        app.state.draining.set()
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 30)


@contextlib.asynccontextmanager
async def serve(
    settings: Settings, app: FastAPI | None = None, port: int | None = None
) -> AsyncIterator[RunningServer]:
    """The real app on a real uvicorn, configured as `chat-api serve` configures it, on a loopback
    port (a free one unless given: a restart can take the same origin again), in this event loop."""
    app = app or create_app(settings)
    port = port or free_port()
    server = uvicorn.Server(server_config(app, settings, "127.0.0.1", port))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    running = RunningServer(url=f"http://127.0.0.1:{port}", server=server, task=task)
    try:
        yield running
    finally:
        if not task.done():
            await running.stop()


ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start_server(runtime_url: str) -> AsyncIterator[ServerFactory]:
    """Starts servers (as the runtime role unless told otherwise) with extra settings; all are
    stopped after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> RunningServer:
            url = overrides.pop("database_url", runtime_url)
            return await stack.enter_async_context(serve(make_settings(url, **overrides)))

        yield start


@pytest.fixture(scope="session")
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    async with serve(settings) as running:
        yield running


class User:
    """A user with a unique id for this test and an HTTP client carrying its token."""

    def __init__(self, name: str, base_url: str) -> None:
        self.name = name
        self.token = mint_token(TEST_SECRET, name, 3600)
        self.http = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=20
        )

    async def create_room(self, name: str = "room", members: list[User] | None = None) -> dict[str, Any]:
        r = await self.http.post("/v1/rooms", json={"name": name, "members": [m.name for m in members or []]})
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def send(self, room_id: str, body: str, key: str | None = None, **extra: Any) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return await self.http.post(
            f"/v1/rooms/{room_id}/messages", json={"body": body, **extra}, headers=headers
        )


UserFactory = Callable[[str], User]


@pytest.fixture
async def make_user(server: RunningServer) -> AsyncIterator[UserFactory]:
    users: list[User] = []
    tag = uuid.uuid4().hex[:8]

    def make(name: str, base_url: str | None = None) -> User:
        user = User(f"{name}-{tag}", base_url or server.url)
        users.append(user)
        return user

    yield make  # type: ignore[misc]
    for user in users:
        await user.http.aclose()


@pytest.fixture
def alice(make_user: UserFactory) -> User:
    return make_user("alice")


@pytest.fixture
def bob(make_user: UserFactory) -> User:
    return make_user("bob")


@pytest.fixture
def carol(make_user: UserFactory) -> User:
    return make_user("carol")


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status and body["title"] and body["type"] and "detail" in body, body
    return dict(body)
