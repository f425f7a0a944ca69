"""Stream measurements against a running `chat-api serve`: memory per idle stream, fan-out latency.

    python -m bench.streams --url http://127.0.0.1:8080 --pid <server pid> --secret <jwt secret> \
        --idle 2000 --subscribers 200 --messages 100 --rate 50

Idle streams are raw sockets (the client stays light); the server's RSS is read from /proc.
Latency is from just before the send request to receipt on each subscriber (an upper bound of
commit → receipt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import urllib.parse
import uuid

import httpx

from bench.harness import cpu_seconds, rss_kib
from chat_api.auth.tokens import mint_token


async def open_raw_stream(url: str, token: str, path: str = "/v1/events") -> asyncio.StreamReader:
    parts = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"stream refused: {status!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    reader._writer = writer  # type: ignore[attr-defined]  # keep the socket open
    return reader


async def idle_memory(url: str, secret: str, pid: int, count: int) -> dict[str, float]:
    before = rss_kib(pid)
    readers = []
    for batch in range(0, count, 200):
        tokens = [mint_token(secret, f"idle-{uuid.uuid4().hex[:8]}") for _ in range(min(200, count - batch))]
        readers += await asyncio.gather(*[open_raw_stream(url, t) for t in tokens])
    await asyncio.sleep(2)
    after = rss_kib(pid)
    for r in readers:
        r._writer.close()  # type: ignore[attr-defined]
    return {
        "streams": count,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_stream": (after - before) / count,
    }


PING = b'"body":"ping '  # how a fan-out message's body appears in its frame (JSON built by PostgreSQL)


class _Subscriber(asyncio.Protocol):
    """A fan-out subscriber kept as light as possible, so that the measurement is the server's:
    no JSON parsing, just the arrival time of each `ping N` body found in the bytes."""

    def __init__(
        self, request: bytes, sent_at: dict[int, float], latencies: list[float], expected: int
    ) -> None:
        self.request = request
        self.sent_at = sent_at
        self.latencies = latencies
        self.expected = expected
        self.got = 0
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streaming = asyncio.get_running_loop().create_future()  # the 200 and its headers came
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buffer += data
        if not self.streaming.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buffer.split(b"\r\n", 1)[0]
            if b" 200 " not in status:
                self.streaming.set_exception(RuntimeError(f"stream refused: {status!r}"))
                return
            self.streaming.set_result(None)
            self.buffer = self.buffer[end + 4 :]
        while True:
            start = self.buffer.find(PING)
            if start < 0:
                self.buffer = self.buffer[-len(PING) :]  # a marker may be split across reads
                return
            stop = self.buffer.find(b'"', start + len(PING))
            if stop < 0:
                self.buffer = self.buffer[start:]
                return
            self.latencies.append(now - self.sent_at[int(self.buffer[start + len(PING) : stop])])
            self.buffer = self.buffer[stop:]
            self.got += 1
            if self.got == self.expected and not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"stream ended after {self.got} messages"))


async def fan_out(
    url: str, secret: str, subscribers: int, messages: int, rate: float, pid: int | None = None
) -> dict[str, float]:
    """Latency from just before each send to its receipt on every stream; with the server's `pid`,
    also the server's CPU seconds from the first send to the last delivery (`server_cpu_s`)."""
    sender = f"sender-{uuid.uuid4().hex[:8]}"
    members = [f"sub-{uuid.uuid4().hex[:8]}" for _ in range(subscribers)]
    headers = {"Authorization": f"Bearer {mint_token(secret, sender)}"}
    parts = urllib.parse.urlsplit(url)
    loop = asyncio.get_running_loop()
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        room = (await client.post("/v1/rooms", json={"name": "fan-out", "members": members})).json()["id"]
        readers: list[_Subscriber] = []
        for member in members:
            request = (
                f"GET /v1/events?room_id={room} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Authorization: Bearer {mint_token(secret, member)}\r\n\r\n"
            ).encode()
            _, reader = await loop.create_connection(
                lambda request=request: _Subscriber(request, sent_at, latencies, messages),
                parts.hostname,
                parts.port,
            )
            readers.append(reader)
        await asyncio.gather(*[r.streaming for r in readers])
        cpu_before = cpu_seconds(pid) if pid is not None else 0.0
        for n in range(messages):
            started = sent_at[n] = time.perf_counter()
            await client.post(f"/v1/rooms/{room}/messages", json={"body": f"ping {n}"})
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
        await asyncio.wait_for(asyncio.gather(*[r.done for r in readers]), 60)
        cpu = cpu_seconds(pid) - cpu_before if pid is not None else None
        for r in readers:
            if r.transport is not None:
                r.transport.close()
    latencies.sort()
    return {
        "subscribers": subscribers,
        "messages": messages,
        "deliveries": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * len(latencies)) - 1],
        **({"server_cpu_s": cpu} if cpu is not None else {}),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50)
    args = parser.parse_args()
    fan = await fan_out(args.url, args.secret, args.subscribers, args.messages, args.rate, args.pid)
    print(json.dumps(fan))
    print(json.dumps(await idle_memory(args.url, args.secret, args.pid, args.idle)))


if __name__ == "__main__":
    asyncio.run(main())
