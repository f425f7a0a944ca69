"""The real app on a real uvicorn in the test's event loop, on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from chat_api.app import create_app
from chat_api.core.config import Settings
from chat_api.server import server_config
from tests.support.ports import free_port


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
