"""Shared fixtures: one migrated database per test session, real HTTP servers, users with tokens."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from chat_api.core.config import Settings
from chat_api.core.migrations import migrate
from tests.support.databases import throwaway_database
from tests.support.pg import admin_database_url
from tests.support.servers import RunningServer, ServerFactory, serve
from tests.support.settings import RUNTIME_PASSWORD, RUNTIME_ROLE, make_settings, with_user
from tests.support.users import User, UserFactory


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
    async with throwaway_database(admin_url, "chat_test") as url:
        await migrate(make_settings(url, db_runtime_role=runtime_role))
        yield url


@pytest.fixture(scope="session")
def runtime_url(database_url: str, runtime_role: str) -> str:
    """The session's database as the runtime role: what the servers of the tests connect as."""
    return with_user(database_url, runtime_role, RUNTIME_PASSWORD)


@pytest.fixture(scope="session")
def settings(runtime_url: str) -> Settings:
    return make_settings(runtime_url)


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
