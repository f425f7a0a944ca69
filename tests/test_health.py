"""Probes: /healthz needs nothing; /readyz needs the database at the migration head, and not draining."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from tests.conftest import RunningServer, ServerFactory, assert_problem, free_port, with_database


async def test_healthz_and_readyz_ok(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_readyz_503_when_schema_is_missing(admin_url: str, start_server: ServerFactory) -> None:
    name = f"chat_unmigrated_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        running = await start_server(database_url=with_database(admin_url, name))
        async with httpx.AsyncClient(base_url=running.url) as client:
            problem = assert_problem(await client.get("/readyz"), 503)
            assert "chat-api migrate" in problem["detail"]
            assert (await client.get("/healthz")).status_code == 200
        await running.stop()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_readyz_503_when_schema_is_behind(
    admin_url: str, database_url: str, start_server: ServerFactory
) -> None:
    name = f"chat_behind_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        db = await asyncpg.connect(with_database(admin_url, name))
        await db.execute(
            "CREATE TABLE alembic_version (version_num text); INSERT INTO alembic_version VALUES ('0000')"
        )
        await db.close()
        running = await start_server(database_url=with_database(admin_url, name))
        async with httpx.AsyncClient(base_url=running.url) as client:
            problem = assert_problem(await client.get("/readyz"), 503)
            assert "0000" in problem["detail"]
        await running.stop()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_readyz_503_when_database_is_unreachable(start_server: ServerFactory) -> None:
    running = await start_server(
        database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"
    )
    async with httpx.AsyncClient(base_url=running.url, timeout=10) as client:
        problem = assert_problem(await client.get("/readyz"), 503)
        assert "unavailable" in problem["detail"] and "nobody" not in problem["detail"]
        assert (await client.get("/healthz")).status_code == 200


async def test_readyz_503_once_draining(start_server: ServerFactory) -> None:
    running = await start_server()
    async with httpx.AsyncClient(base_url=running.url) as client:
        assert (await client.get("/readyz")).status_code == 200
        running.server.config.app.state.draining.set()
        await asyncio.sleep(0)
        problem = assert_problem(await client.get("/readyz"), 503)
        assert "shutting down" in problem["detail"]
