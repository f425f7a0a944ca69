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

from chat_api.auth.tokens import mint_token


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


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


async def fan_out(url: str, secret: str, subscribers: int, messages: int, rate: float) -> dict[str, float]:
    sender = f"sender-{uuid.uuid4().hex[:8]}"
    members = [f"sub-{uuid.uuid4().hex[:8]}" for _ in range(subscribers)]
    headers = {"Authorization": f"Bearer {mint_token(secret, sender)}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        room = (await client.post("/v1/rooms", json={"name": "fan-out", "members": members})).json()["id"]
        readers = await asyncio.gather(
            *[open_raw_stream(url, mint_token(secret, m), f"/v1/events?room_id={room}") for m in members]
        )
        sent_at: dict[str, float] = {}
        latencies: list[float] = []

        async def receive(reader: asyncio.StreamReader) -> None:
            got = 0
            while got < messages:
                line = await reader.readline()
                if line.startswith(b"data: "):
                    data = json.loads(line[6:])
                    if "message" in data and data["message"]["body"] in sent_at:
                        latencies.append(time.perf_counter() - sent_at[data["message"]["body"]])
                        got += 1

        receivers = [asyncio.create_task(receive(r)) for r in readers]
        for n in range(messages):
            started = sent_at[f"ping {n}"] = time.perf_counter()
            await client.post(f"/v1/rooms/{room}/messages", json={"body": f"ping {n}"})
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
        await asyncio.wait_for(asyncio.gather(*receivers), 60)
    latencies.sort()
    return {
        "subscribers": subscribers,
        "messages": messages,
        "deliveries": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * len(latencies)) - 1],
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
    print(json.dumps(await fan_out(args.url, args.secret, args.subscribers, args.messages, args.rate)))
    print(json.dumps(await idle_memory(args.url, args.secret, args.pid, args.idle)))


if __name__ == "__main__":
    asyncio.run(main())
