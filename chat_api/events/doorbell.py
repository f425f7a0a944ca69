"""The doorbell, rung by the process that wrote, right after the commit, coalesced.

A NOTIFY inside a writing transaction takes a cluster-wide lock at commit, held until the commit
record is flushed: every notifying writer of the whole cluster would commit one at a time. So no
write transaction notifies (migration 0007, events/log.py, messages/service.py); instead, after a
write has committed, the service calls `Database.committed()`, which the lifespan points at `ring()`:

- the local hub is woken at once (same process: no round trip through PostgreSQL);
- at most one `SELECT pg_notify('chat_events', '')` per process per `INTERVAL_SECONDS` is sent, in
  a transaction of its own on a pooled connection (no WAL, no flush), by a background task: the
  request never waits for it. The first ring after a quiet spell is sent at once; rings during the
  interval are coalesced into one more NOTIFY at its end, which is sent after all of their commits.
- a ring that fails (the database is away, the pool is exhausted) is logged at debug and dropped:
  hubs read the log on their idle check anyway (events/hub.py IDLE_CHECK_SECONDS), which is also
  what covers a process that dies between its commit and its doorbell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from opentelemetry.instrumentation.utils import suppress_instrumentation

from chat_api.core.db import Database
from chat_api.events.contract import NOTIFY_CHANNEL

log = logging.getLogger("chat_api.events")

# While writes keep coming, one NOTIFY per process per this interval.
INTERVAL_SECONDS = 0.005
RING_SQL = f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"


class Doorbell:
    def __init__(
        self, db: Database, wake_local: Callable[[], None] | None = None, interval: float = INTERVAL_SECONDS
    ) -> None:
        self.db = db
        self.wake_local = wake_local
        self.interval = interval
        self.sent = 0  # NOTIFYs sent
        self.rings = 0  # ring() calls
        self._pending = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def ring(self) -> None:
        """A write has committed. Returns at once; never raises."""
        self.rings += 1
        if self.wake_local is not None:
            self.wake_local()
        if self._closed:
            return
        self._pending = True
        if self._task is None:
            try:
                self._task = asyncio.get_running_loop().create_task(self._send(), name="chat-api doorbell")
            except RuntimeError:  # no running loop: nothing to ring with, the idle check covers it
                self._pending = False

    async def _send(self) -> None:
        try:
            while self._pending:
                self._pending = False
                try:
                    with suppress_instrumentation():
                        async with self.db.connection() as conn:
                            await conn.execute(RING_SQL)
                    self.sent += 1
                except Exception as exc:
                    log.debug("doorbell not rung (%s); hubs find the events on their idle check", exc)
                # Rings in the meantime wait for the next NOTIFY, which follows all their commits.
                await asyncio.sleep(self.interval)
        finally:
            self._task = None

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
