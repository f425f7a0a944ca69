"""A fault test's own PostgreSQL: a throwaway cluster with database `chat`, to stop, freeze and restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from chat_api.core.migrations import migrate
from tests.support.pgcluster import ThrowawayCluster
from tests.support.settings import make_settings


@dataclass
class ChatDatabase:
    cluster: ThrowawayCluster
    url: str  # the service's DATABASE_URL (TCP, SCRAM, as CloudNativePG writes it)

    async def stop(self, mode: str = "fast") -> None:
        # pg_ctl -w blocks: run it off the event loop, so the clients keep going meanwhile.
        await asyncio.to_thread(self.cluster.stop, mode)

    async def start(self) -> None:
        await asyncio.to_thread(self.cluster.start)

    def processes(self) -> list[int]:
        """The cluster's postmaster and its children (backends, background workers)."""
        postmaster = int((self.cluster.data_dir / "postmaster.pid").read_text().split()[0])
        pids = [postmaster]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                        pids.append(int(entry.name))
        return pids

    def freeze(self) -> list[int]:
        """SIGSTOP the whole cluster: a database that hangs (a partition, a stalled disk), where
        connections neither fail nor answer. Returns the pids for thaw()."""
        pids = self.processes()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.cluster.admin_dsn.replace("/postgres?", "/chat?"))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def chat_database() -> AsyncIterator[ChatDatabase]:
    """A throwaway cluster with database `chat`, migrated with the real migrations."""
    cluster = ThrowawayCluster()
    await asyncio.to_thread(cluster.start)
    try:
        admin = await asyncpg.connect(cluster.admin_dsn)
        try:
            await admin.execute("CREATE DATABASE chat")
        finally:
            await admin.close()
        url = cluster.url("postgres", cluster.admin_password, "chat")
        await migrate(make_settings(url))
        database = ChatDatabase(cluster, url)
        yield database
    finally:
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            ChatDatabase.thaw(ChatDatabase(cluster, "").processes())  # a test failed while frozen
        await asyncio.to_thread(cluster.destroy)
