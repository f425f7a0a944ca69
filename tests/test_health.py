"""Probes: /healthz needs nothing; /readyz needs the database at this release's revision or ahead of it
(a later release migrated it), and not draining."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from chat_api.core.migrations import migrate
from chat_api.core.schema import SCHEMA_REVISION
from tests.support.databases import throwaway_database
from tests.support.ports import free_port
from tests.support.problems import assert_problem
from tests.support.servers import RunningServer, ServerFactory
from tests.support.settings import make_settings


async def test_healthz_and_readyz_ok(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"status": "ready"}


async def readyz(running: RunningServer) -> httpx.Response:
    async with httpx.AsyncClient(base_url=running.url) as client:
        return await client.get("/readyz")


async def test_readyz_503_when_schema_is_missing(admin_url: str, start_server: ServerFactory) -> None:
    async with throwaway_database(admin_url, "chat_ready") as url:
        running = await start_server(database_url=url)
        problem = assert_problem(await readyz(running), 503)
        assert "chat-api migrate" in problem["detail"]
        async with httpx.AsyncClient(base_url=running.url) as client:
            assert (await client.get("/healthz")).status_code == 200
        await running.stop()


async def test_readyz_503_when_schema_is_behind_and_after_a_downgrade(
    admin_url: str, start_server: ServerFactory
) -> None:
    async with throwaway_database(admin_url, "chat_ready") as url:
        await migrate(make_settings(url), "0003")
        running = await start_server(database_url=url)
        problem = assert_problem(await readyz(running), 503)
        assert "0003" in problem["detail"] and SCHEMA_REVISION in problem["detail"], problem
        await migrate(make_settings(url))
        assert (await readyz(running)).status_code == 200
        # Downgraded below this release's revision: no longer ready.
        await migrate(make_settings(url), "0003")
        problem = assert_problem(await readyz(running), 503)
        assert "0003" in problem["detail"], problem
        await running.stop()


async def test_readyz_200_when_schema_is_ahead(admin_url: str, start_server: ServerFactory) -> None:
    """A later release's migration recorded itself on top of this release's head (what its wave-4
    Job does while this release still serves): still ready. tests/test_upgrade.py does it for real."""
    async with throwaway_database(admin_url, "chat_ready") as url:
        await migrate(make_settings(url))
        db = await asyncpg.connect(url)
        try:
            await db.execute(
                "INSERT INTO chat_schema_revisions (revision) VALUES ('9001');"
                "UPDATE alembic_version SET version_num = '9001'"
            )
        finally:
            await db.close()
        running = await start_server(database_url=url)
        assert (await readyz(running)).json() == {"status": "ready"}
        await running.stop()


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
