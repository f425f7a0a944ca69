"""The scenarios: what each one runs against the server under test and which floor it is compared with."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench import harness, streams
from bench.harness import (
    SECRET,
    SPREAD_ROOMS,
    Server,
    pgbench,
    pgbench_raw_insert_script,
    pgbench_send_script,
    room_uuid,
    wrk,
)
from bench.report import Row, against, floor_latency, p50_ratio
from chat_api.events import doorbell

DEPTH_ROUNDS = 3
STARTS = 3
FAN_OUT_RATE = 50  # messages per second (bench.compare's fan-out)
FAN_OUT_RATES = (20, 50)  # scenario 5: the target's rate, then a higher one
DELIVERY_RATE = 10  # messages per second: low load
# A process's coalesced doorbell at full load: one NOTIFY per interval (chat_api/events/doorbell.py).
DOORBELL_NOTIFY_RATE = round(1 / doorbell.INTERVAL_SECONDS)


@dataclass
class Profile:
    duration: int
    depth_messages: int
    depths: tuple[int, ...]
    subscribers: int
    fanout_messages: int
    idle_streams: int
    doorbell_rounds: int
    delivery_messages: int
    workers_rounds: int
    search_messages: int


FULL = Profile(10, 1_000_000, (0, 10_000, 500_000, 999_000), 1000, 200, 10_000, 3, 100, 3, 1_000_000)
QUICK = Profile(2, 20_000, (0, 1_000, 10_000, 19_000), 50, 20, 200, 1, 20, 1, 20_000)
SEARCH_LIMIT = 20  # the endpoint's default page


@dataclass
class Target:
    """What a scenario runs against: the sizes, the server and its seeded database, and what was
    measured of the server before anything warmed it."""

    profile: Profile
    server: Server
    connect: list[str]  # pgbench's connection arguments
    database: str
    database_url: str
    token: str
    ids: dict[str, Any]  # harness.seed's rooms
    work: Path  # wrk's data files and the server's log
    starts: list[float]  # seconds from process start to /readyz 200
    idle_rss_mib: float


# -- what wrk is given (bench.compare gives the same) ---------------------------------------------


def spread_rooms() -> str:
    return "\n".join(room_uuid(n) for n in range(1, SPREAD_ROOMS + 1)) + "\n"


def hot_room() -> str:
    return room_uuid(1) + "\n"


def newest_page_path(ids: dict[str, Any]) -> str:
    return f"/v1/rooms/{ids['page_room']}/messages?limit=50\n"


# -- the scenarios, in the order they run ---------------------------------------------------------


def start_up(t: Target) -> Row:
    """7. Start-up and idle memory, taken before anything warmed the process; against targets."""
    return Row(
        "7. start-up to /readyz 200",
        p50_ms=statistics.median(t.starts) * 1000,
        floor="target < 1500 ms",
        extra={"idle_rss_mib": round(t.idle_rss_mib, 1), "starts_ms": [round(s * 1000) for s in t.starts]},
    )


def send_spread(t: Target) -> Row:
    """1. Send spread over 100 rooms vs. the same SQL work through pgbench."""
    spread_file = t.work / "spread.txt"
    spread_file.write_text(spread_rooms())
    d = t.profile.duration
    room = harness.room_expression()
    floor = pgbench(t.connect, t.database, pgbench_send_script(room), SPREAD_ROOMS, d)
    raw = pgbench(t.connect, t.database, pgbench_raw_insert_script(room), SPREAD_ROOMS, d)
    got = wrk(t.server.url, "send.lua", spread_file, d, t.token, t.server.process.pid)
    return against(
        "1. send, 100 rooms",
        got,
        "pgbench, same SQL",
        floor,
        extra={
            **floor_latency(floor),
            "raw_insert_tps": round(raw["throughput"]),
            "raw_insert_ratio": round(got["throughput"] / raw["throughput"], 4),
        },
    )


def send_hot(t: Target) -> Row:
    """2. Send into one hot room vs. pgbench into one room."""
    hot_file = t.work / "hot.txt"
    hot_file.write_text(hot_room())
    d = t.profile.duration
    floor = pgbench(t.connect, t.database, pgbench_send_script(harness.room_expression()), 1, d)
    got = wrk(t.server.url, "send.lua", hot_file, d, t.token, t.server.process.pid)
    return against("2. send, one hot room", got, "pgbench, one room", floor, extra=floor_latency(floor))


def newest_page(t: Target) -> Row:
    """3. Newest history page vs. the trivial ASGI app on the same server stack."""
    page_file = t.work / "page.txt"
    page_file.write_text(newest_page_path(t.ids))
    trivial, trivial_url = harness.start_trivial()
    try:
        floor = wrk(trivial_url, "get.lua", page_file, t.profile.duration, pid=trivial.pid)
    finally:
        harness.stop(trivial)
    got = wrk(t.server.url, "get.lua", page_file, t.profile.duration, t.token, t.server.process.pid)
    extra = {"floor_cpu_ms": floor["cpu_ms"]}
    return against("3. newest page (50)", got, "trivial ASGI app", floor, extra=extra)


def page_at_depth(t: Target) -> Row:
    """4. History at depth in a bulk-loaded room vs. the same page at the top: p50 deep / p50 top.
    The depths take turns for a few rounds (a slow spell of a noisy machine then hits them alike);
    medians per depth."""
    profile, ids = t.profile, t.ids
    runs: dict[int, list[dict[str, Any]]] = {depth: [] for depth in profile.depths}
    for _ in range(DEPTH_ROUNDS):
        for depth in profile.depths:
            before = ids["deep_last_seq"] - depth
            path = f"/v1/rooms/{ids['deep_room']}/messages?limit=50" + (f"&before={before}" if depth else "")
            depth_file = t.work / f"depth-{depth}.txt"
            depth_file.write_text(path + "\n")
            runs[depth].append(
                wrk(
                    t.server.url,
                    "get.lua",
                    depth_file,
                    max(1, profile.duration // DEPTH_ROUNDS),
                    t.token,
                    t.server.process.pid,
                )
            )
    p50s = {
        depth: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for depth, rs in runs.items()
    }
    top, deepest = p50s[profile.depths[0]], p50s[profile.depths[-1]]
    return against(
        f"4. page at depth {profile.depths[-1]:,} of {profile.depth_messages:,}",
        deepest,
        "same page at the top",
        top,
        ratio=p50_ratio,
        extra={"p50_ms_by_depth": {str(k): round(v["p50_ms"], 2) for k, v in p50s.items()}},
    )


def fan_out(t: Target) -> Row:
    """5. Fan-out: N subscribers on one process, a sender at 20 messages/s (the target's rate), then
    at 50/s (under the table); against a target. The stream clients run on uvloop, like the server:
    they share its two cores."""
    profile = t.profile
    runs = {
        rate: uvloop.run(
            streams.fan_out(
                t.server.url, SECRET, profile.subscribers, profile.fanout_messages, rate, t.server.process.pid
            )
        )
        for rate in FAN_OUT_RATES
    }
    fan, fast = runs[FAN_OUT_RATES[0]], runs[FAN_OUT_RATES[1]]
    return Row(
        f"5. fan-out to {profile.subscribers} streams",
        throughput=fan["deliveries"] / (profile.fanout_messages / FAN_OUT_RATES[0]),
        p50_ms=fan["p50_ms"],
        p99_ms=fan["p99_ms"],
        errors=0,
        cpu_ms=fan["server_cpu_s"] * 1000 / max(1, fan["deliveries"]),
        floor=f"target p99 < 100 ms at {FAN_OUT_RATES[0]}/s",
        extra={
            **fan,
            "rate": FAN_OUT_RATES[0],
            f"at_{FAN_OUT_RATES[1]}": {
                "p50_ms": round(fast["p50_ms"], 2),
                "p99_ms": round(fast["p99_ms"], 2),
                "cpu_ms": round(fast["server_cpu_s"] * 1000 / max(1, fast["deliveries"]), 4),
            },
        },
    )


def idle_streams(t: Target) -> Row:
    """6. Idle streams: server memory per open stream; against a target."""
    count = t.profile.idle_streams
    idle = uvloop.run(streams.idle_memory(t.server.url, SECRET, t.server.process.pid, count))
    return Row(f"6. {count:,} idle streams", floor="target <= 20 KiB each", ratio=None, extra=idle)


def doorbell_floor(t: Target) -> Row:
    """8. The send statement's pgbench floor (100 rooms) three ways, taking turns each round: the
    doorbell inside the transaction (migration 0004's chat_send()), the doorbell after the commit
    (0007's chat_send() with a separate NOTIFY at the coalesced rate of one process at full load),
    and no doorbell at all. Ratio: after-commit / none (medians over rounds)."""
    asyncio.run(harness.create_in_transaction_send(t.database_url))
    d, rooms = t.profile.duration, SPREAD_ROOMS
    send = pgbench_send_script(harness.room_expression())
    in_transaction = send.replace("chat_send(", f"{harness.IN_TRANSACTION_SEND}(")
    runs: dict[str, list[dict[str, Any]]] = {"in_transaction": [], "after_commit": [], "none": []}
    for _ in range(t.profile.doorbell_rounds):
        runs["in_transaction"].append(pgbench(t.connect, t.database, in_transaction, rooms, d))
        with harness.notifier(t.connect, t.database, DOORBELL_NOTIFY_RATE, d):
            runs["after_commit"].append(pgbench(t.connect, t.database, send, rooms, d))
        runs["none"].append(pgbench(t.connect, t.database, send, rooms, d))
    m = {way: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for way, rs in runs.items()}
    return against(
        "8. send floor, doorbell after commit",
        m["after_commit"],
        "pgbench, no doorbell",
        m["none"],
        extra={
            **floor_latency(m["none"]),
            "in_transaction_tps": round(m["in_transaction"]["throughput"]),
            "in_transaction_ratio": round(m["in_transaction"]["throughput"] / m["none"]["throughput"], 3),
            "in_transaction_p99_ms": round(m["in_transaction"]["p99_ms"], 2),
            "notify_per_s": DOORBELL_NOTIFY_RATE,
            "rounds": t.profile.doorbell_rounds,
        },
    )


def delivery(t: Target) -> Row:
    """9. Delivery at low load: one subscriber, 10 messages a second; send request to stream frame."""
    got = uvloop.run(streams.fan_out(t.server.url, SECRET, 1, t.profile.delivery_messages, DELIVERY_RATE))
    return Row(
        f"9. delivery at {DELIVERY_RATE} messages/s",
        p50_ms=got["p50_ms"],
        p99_ms=got["p99_ms"],
        floor="target p99 < 50 ms",
        extra=got,
    )


def workers(t: Target) -> Row:
    """10. CHAT_API_WORKERS: send into 100 rooms and the newest page through a second server with
    2 workers on the same database against the server under test (1 worker), taking turns for a few
    rounds; medians. Ratio: 2-worker / 1-worker send throughput (the page's under the table). On a
    machine of two cores, with wrk on the same cores, what 2 workers can win is bounded."""
    spread_file, page_file = t.work / "spread.txt", t.work / "page.txt"
    spread_file.write_text(spread_rooms())
    page_file.write_text(newest_page_path(t.ids))
    # The same pool in all (2 workers of 10 against 1 of 20): the workers are compared, not a bigger pool.
    two = harness.start_server(
        t.database_url, t.work / "serve-2-workers.log", CHAT_API_WORKERS="2", CHAT_API_DB_POOL_SIZE="10"
    )
    servers = {1: t.server, 2: two}
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {
        (load, n): [] for load in ("send", "page") for n in servers
    }
    try:
        for _ in range(t.profile.workers_rounds):
            for n, server in servers.items():
                pid = server.process.pid
                runs["send", n].append(
                    wrk(server.url, "send.lua", spread_file, t.profile.duration, t.token, pid)
                )
                runs["page", n].append(
                    wrk(server.url, "get.lua", page_file, t.profile.duration, t.token, pid)
                )
    finally:
        harness.stop(two.process)
    m = {key: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for key, rs in runs.items()}
    return against(
        "10. workers: 2 vs 1, send 100 rooms",
        m["send", 2],
        "same, 1 worker",
        m["send", 1],
        extra={
            "send_cpu_ms_1_worker": round(m["send", 1]["cpu_ms"], 3),
            "page_tps_1_worker": round(m["page", 1]["throughput"]),
            "page_tps_2_workers": round(m["page", 2]["throughput"]),
            "page_ratio": round(m["page", 2]["throughput"] / m["page", 1]["throughput"], 3),
            "page_cpu_ms_1_worker": round(m["page", 1]["cpu_ms"], 3),
            "page_cpu_ms_2_workers": round(m["page", 2]["cpu_ms"], 3),
            "page_errors": int(m["page", 1]["errors"] + m["page", 2]["errors"]),
            "rounds": t.profile.workers_rounds,
            "cpus": os.cpu_count(),
        },
    )


def search_path(word: str, cursor: str | None = None) -> str:
    path = f"/v1/search?q={word}&limit={SEARCH_LIMIT}"
    return path + (f"&cursor={urllib.parse.quote(cursor, safe='')}" if cursor else "")


def search_answer(url: str, token: str, path: str) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """One search's items and next_cursor, or what was wrong with the answer."""
    try:
        response = httpx.get(url + path, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    except httpx.HTTPError as error:
        return [], None, f"GET {path}: {error!r}"
    if response.status_code != 200:
        return [], None, f"GET {path}: {response.status_code} {response.text[:200]}"
    body = response.json()
    return body["items"], body["next_cursor"], None


def search_wrong(items: list[dict[str, Any]], word: str, member_rooms: list[str], expected: int) -> list[str]:
    """What is wrong with a page of search results: how many, whose rooms, the word, the order."""
    wrong = []
    if len(items) != expected:
        wrong.append(f"{word}: {len(items)} items, expected {expected}")
    if any(item["room_id"] not in member_rooms for item in items):
        wrong.append(f"{word}: items from rooms the user is not in")
    if any(word not in (item["body"] or "").split() for item in items):
        wrong.append(f"{word}: items without the word")
    keys = [(item["created_at"], item["room_id"], item["seq"]) for item in items]
    if keys != sorted(keys, reverse=True):
        wrong.append(f"{word}: not newest first")
    return wrong


def search(t: Target) -> Row:
    """11. Search (GET /v1/search?q=WORD&limit=20) by a user who is a member of 3 of 10 rooms that
    hold the search messages (bulk-loaded with SQL here, last, so no other row runs on the bigger
    table): the common word (every other message) as the row, the rare word (a few messages of each
    room) and the common word's second page (by next_cursor) under it, and each word's p50 for one
    client alone. The answers are checked first (count, rooms, word, order). Floor: the newest page
    of 20 of one of the user's rooms, same user and server; ratio: p50 search / p50 page."""
    loaded = time.perf_counter()
    data = asyncio.run(harness.seed_search(t.database_url, t.profile.search_messages))
    load_s = time.perf_counter() - loaded
    token = harness.user_token(harness.SEARCH_USER)
    url, pid, d = t.server.url, t.server.process.pid, t.profile.duration
    member_rooms = data["member_rooms"]
    common, rare = harness.COMMON_WORD, harness.RARE_WORD
    paths = {
        "page": f"/v1/rooms/{member_rooms[0]}/messages?limit={SEARCH_LIMIT}",
        "common": search_path(common),
        "rare": search_path(rare),
    }
    first, cursor, fault = search_answer(url, token, paths["common"])
    wrong = [fault] if fault else search_wrong(first, common, member_rooms, SEARCH_LIMIT)
    if cursor is None:
        wrong.append(f"{common}: no next_cursor")
    else:
        paths["common_page_2"] = search_path(common, cursor)
        second, _, fault = search_answer(url, token, paths["common_page_2"])
        wrong += [fault] if fault else search_wrong(second, common, member_rooms, SEARCH_LIMIT)
        if second and first and second[0]["created_at"] > first[-1]["created_at"]:
            wrong.append(f"{common}: page 2 is not older than page 1")
    found, cursor, fault = search_answer(url, token, paths["rare"])
    expected_rare = min(SEARCH_LIMIT, data["rare_in_member_rooms"])
    wrong += [fault] if fault else search_wrong(found, rare, member_rooms, expected_rare)
    if cursor is not None and data["rare_in_member_rooms"] <= SEARCH_LIMIT:
        wrong.append(f"{rare}: a next_cursor after the last result")

    def measure(name: str, connections: int = harness.CONNECTIONS) -> dict[str, Any]:
        path_file = t.work / f"search-{name}.txt"
        path_file.write_text(paths[name] + "\n")
        return wrk(url, "get.lua", path_file, d, token, pid, connections=connections)

    runs = {name: measure(name) for name in paths}
    alone = {name: measure(name, connections=1) for name in ("common", "rare")}
    errors = sum(int(r["errors"]) for r in (*runs.values(), *alone.values()))
    extra: dict[str, Any] = {
        "messages": data["messages"],
        "rooms": harness.SEARCH_ROOMS,
        "member_rooms": harness.SEARCH_MEMBER_ROOMS,
        "common_in_member_rooms": data["common_in_member_rooms"],
        "rare_in_member_rooms": data["rare_in_member_rooms"],
        "load_s": round(load_s, 1),
        "floor_p99_ms": round(runs["page"]["p99_ms"], 2),
        "floor_cpu_ms": round(runs["page"]["cpu_ms"], 3),
        "wrong": wrong,
    }
    for name in ("rare", "common_page_2"):
        if name in runs:
            extra |= {f"{name}_{k}": round(v, 3) for k, v in runs[name].items() if k != "errors"}
    for name, run in alone.items():
        extra |= {
            f"{name}_alone_p50_ms": round(run["p50_ms"], 3),
            f"{name}_alone_p99_ms": round(run["p99_ms"], 3),
        }
    return against(
        f"11. search, common word, {data['messages']:,}",
        {**runs["common"], "errors": errors},
        f"newest page ({SEARCH_LIMIT}), same user",
        runs["page"],
        ratio=p50_ratio,
        extra=extra,
    )


SCENARIOS: tuple[Callable[[Target], Row], ...] = (
    start_up,
    send_spread,
    send_hot,
    newest_page,
    page_at_depth,
    fan_out,
    idle_streams,
    doorbell_floor,
    delivery,
    workers,
    search,
)


def run(profile: Profile) -> list[Row]:
    """Every scenario against one server on a fresh, seeded database."""
    harness.raise_open_files_limit()
    token = harness.user_token()
    work = Path(tempfile.mkdtemp(prefix="chat-api-bench-"))
    with (
        harness.postgres() as (admin_url, connect),
        harness.migrated_database(admin_url) as (name, database_url),
    ):
        # Start-up is timed three times (the machine's noise is large next to one start), before
        # the bulk load so that its write-back does not land in it; the last start is the server
        # that is measured.
        server, starts = harness.start_timed(database_url, work, STARTS)
        try:
            idle_rss_mib = harness.rss_kib(server.process.pid) / 1024
            ids = asyncio.run(harness.seed(database_url, profile.depth_messages))
            target = Target(
                profile, server, connect, name, database_url, token, ids, work, starts, idle_rss_mib
            )
            rows = [scenario(target) for scenario in SCENARIOS]
            errors = sum(r.errors or 0 for r in rows)
            if errors:
                print(f"warning: {errors} failed requests; see {server.log}", file=sys.stderr)
        finally:
            harness.stop(server.process)
    return rows
