"""`python -m bench.hubs`: what N replicas' stream hubs cost one database, for capacity planning.

N simulated replicas in one process against one fresh migrated database. Each has the real
`chat_api.events.hub.Hub` (its own LISTEN connection, its own read loop and idle check, the real
read query) and its own real `Doorbell` (rings after each commit: wakes its own hub at once, one
NOTIFY per 5 ms at most for the others). A writer sends R messages a second through the real send
(`chat_api.messages.service.send`, i.e. `SELECT chat_send(...)`), spread round-robin over 100 rooms
and over the N replicas, as a load balancer would spread them. Measured per (N, R) run:

- the database CPU of the hubs' backends and of the writers' backends (CPU time from /proc of
  exactly those PostgreSQL processes, found by their pids), and of the whole server (the
  postmaster's process tree: includes anything else using the same PostgreSQL at the time);
- the reads the hubs issued (asyncpg's query logger on each LISTEN connection), the events they
  dispatched, the rows the `events` table gave out (`pg_stat_user_tables`), the NOTIFYs sent;
- from these: database CPU per hub read and per event per hub, and the delay from a send's return
  to each hub's dispatch of that event (in this one process: all hubs share one event loop).

Where the database runs elsewhere (a container) its processes are not in /proc: the CPU figures are
then null and `db_cpu_visible` false. Writes bench/results/hubs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import uvloop

from bench import harness
from chat_api.core.config import Settings, load_settings
from chat_api.core.db import Database
from chat_api.events.doorbell import Doorbell
from chat_api.events.hub import Hub
from chat_api.events.reader import Event
from chat_api.messages import service as messages

FULL_HUBS = (1, 2, 4, 8, 16)
FULL_RATES = (100, 500)
FULL_DURATION = 8.0
QUICK_HUBS = (1, 2)
QUICK_RATES = (50,)
QUICK_DURATION = 2.0
# Events already in the log when the runs start (the retained week, scaled down), analysed as
# autovacuum keeps it in production. An events table without statistics makes the hub's read
# plan a sequential scan of the whole log for its "anything beyond the horizon?" check (measured:
# 9.6 ms of database CPU per read with 50,000 events, 0.37 ms once analysed): not what runs in
# production, so the bench does not measure it.
FULL_LOG_EVENTS = 100_000
QUICK_LOG_EVENTS = 2_000
WRITERS = 8  # concurrent senders: 500/s even at ~15 ms per send on a busy machine
CATCH_UP_SECONDS = 5.0  # after the writer stops, how long the hubs may take to read the rest
RESULTS = harness.ROOT / "bench" / "results" / "hubs.json"

# Every figure a run reports (bench.hubs.problems checks them; the test too).
RUN_FIGURES = (
    "hubs",
    "rate_target",
    "seconds",
    "events",
    "events_per_s",
    "notifies",
    "reads",
    "reads_per_s",
    "reads_per_hub_per_s",
    "reads_per_event_per_hub",
    "rows_to_hubs_per_s",
    "events_rows_fetched_per_s",
    "db_cpu_visible",
    "hub_db_cpu_core",
    "hub_db_cpu_per_read_us",
    "hub_db_cpu_per_event_per_hub_us",
    "write_db_cpu_per_send_us",
    "server_cpu_core",
    "simulator_cpu_core",
    "lag_p50_ms",
    "lag_p99_ms",
)
CPU_FIGURES = (
    "hub_db_cpu_core",
    "hub_db_cpu_per_read_us",
    "hub_db_cpu_per_event_per_hub_us",
    "write_db_cpu_per_send_us",
    "server_cpu_core",
)


class SimHub(Hub):
    """The real hub, counting: every query it runs on its LISTEN connection (asyncpg's query logger:
    its reads, nothing else after start-up) and every event it dispatches, with the delay since the
    send of that event returned."""

    def __init__(self, settings: Settings, db: Database, sent_at: dict[tuple[uuid.UUID, int], float]) -> None:
        super().__init__(settings, db)
        self.sent_at = sent_at
        self.reads = 0
        self.events = 0
        self.lags: list[float] = []
        self._logged: asyncpg.Connection | None = None

    async def _connect(self) -> asyncpg.Connection:
        conn = await super()._connect()
        if conn is not self._logged:
            conn.add_query_logger(self._count_read)
            self._logged = conn
        return conn

    def _count_read(self, record: Any) -> None:
        self.reads += 1

    def dispatch(self, event: Event) -> None:
        sent = self.sent_at.get((event.room_id, event.seq))
        if sent is not None:
            self.lags.append(time.perf_counter() - sent)
        self.events += 1
        super().dispatch(event)

    @property
    def backend_pid(self) -> int:
        assert self._conn is not None
        return int(self._conn.get_server_pid())


class Replica:
    """One simulated replica as `messages.send` sees its Database: the shared pool, and this
    replica's own doorbell rung after each commit (what the lifespan wires `committed()` to)."""

    def __init__(self, db: Database, doorbell: Doorbell) -> None:
        self.db = db
        self.doorbell = doorbell

    def connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        return self.db.connection()

    def committed(self) -> None:
        self.doorbell.ring()


# -- the database's processes ---------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def backend_cpu(pid: int) -> float:
    """CPU seconds of one PostgreSQL process so far (0 once it has gone): the scheduler's nanosecond
    count (/proc/PID/schedstat), as /proc/PID/stat's user + system time comes in 10 ms ticks, too
    coarse for one backend over a few seconds; that one where schedstat is missing."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / harness.CLOCK_TICKS if fields else 0.0


def visible(pid: int, database: str) -> bool:
    """Whether `pid` in this machine's /proc is the PostgreSQL backend of `database` (it is not when
    the server runs in a container or elsewhere: the pid is then another namespace's)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.startswith(b"postgres") and database.encode() in cmdline


def postmaster(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def server_cpu(pid: int) -> float:
    """CPU seconds of the whole PostgreSQL server so far: the postmaster's own and that of its
    children that have exited (cutime, cstime: backends of other clients come and go), plus the
    children alive now. Unlike a sum over the living processes alone, it never goes down."""
    fields = _stat(pid)
    if not fields:
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / harness.CLOCK_TICKS  # utime stime cutime cstime
    return own + sum(backend_cpu(child) for child in harness.process_tree(pid) if child != pid)


# -- one run --------------------------------------------------------------------------------------


def settings_for(database_url: str, hubs: int) -> Settings:
    return load_settings(
        database_url=database_url,
        database_url_file=None,
        jwt_secret=harness.SECRET,
        jwt_jwks_url=None,
        jwt_issuer=None,
        jwt_audience=None,
        # The writers, and the doorbells' NOTIFYs (each replica's task holds a connection briefly);
        # bounded: with the hubs' own connections a run uses at most 8 + 8 + 16 + 1 of the server's.
        db_pool_size=WRITERS + min(hubs, 8),
        db_pool_max_overflow=0,
        rate_limits=False,
        send_rate_per_second=0,
    )


async def write(
    replicas: list[Replica], rooms: list[uuid.UUID], rate: float, seconds: float, sent_at: dict[Any, float]
) -> int:
    """Sends `rate` messages a second for `seconds` (send k is due at k / rate), round-robin over the
    rooms and the replicas; returns how many were sent."""
    total = max(1, round(rate * seconds))
    numbers = itertools.count()
    start = time.perf_counter()

    async def sender() -> None:
        while (k := next(numbers)) < total:
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            room = rooms[k % len(rooms)]
            replica: Any = replicas[k % len(replicas)]  # a Database as far as send() can tell
            sent = await messages.send(replica, room, harness.USER, harness.BODY, None, None)
            sent_at[(room, orjson.loads(sent.json)["seq"])] = time.perf_counter()

    await asyncio.gather(*(sender() for _ in range(WRITERS)))
    return total


async def table_reads(monitor: asyncpg.Connection) -> int:
    """Rows the events table has given out to scans so far (index and sequential)."""
    row = await monitor.fetchrow(
        "SELECT coalesce(idx_tup_fetch, 0) + seq_tup_read AS n"
        " FROM pg_stat_user_tables WHERE relname = 'events'"
    )
    return int(row["n"]) if row else 0


async def others_gone(monitor: asyncpg.Connection, seconds: float = 5.0) -> None:
    """Waits until no other backend of this database is left: their statistics are flushed on exit."""
    deadline = time.monotonic() + seconds
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    while await monitor.fetchval(query) and time.monotonic() < deadline:  # noqa: ASYNC110 (polling the server)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def replicas_of(
    database_url: str, hubs: int, sent_at: dict[Any, float]
) -> AsyncIterator[tuple[Database, list[SimHub], list[Doorbell]]]:
    settings = settings_for(database_url, hubs)
    db = Database(settings)
    await db.open()
    sims = [SimHub(settings, db, sent_at) for _ in range(hubs)]
    doorbells = [Doorbell(db, sim.wake) for sim in sims]
    for sim in sims:
        sim.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(sim.ready.wait() for sim in sims)), 20)
        yield db, sims, doorbells
    finally:
        for doorbell in doorbells:
            await doorbell.close()
        for sim in sims:
            await sim.close()
        await db.close()


async def one_run(
    database_url: str, database: str, monitor: asyncpg.Connection, hubs: int, rate: float, seconds: float
) -> dict[str, Any]:
    rooms = [uuid.UUID(harness.room_uuid(n)) for n in range(1, harness.SPREAD_ROOMS + 1)]
    sent_at: dict[Any, float] = {}
    rows_before = await table_reads(monitor)
    async with replicas_of(database_url, hubs, sent_at) as (db, sims, doorbells):
        # Open the pool's connections now, so that connecting is not measured.
        size = db.settings.db_pool_size

        async def touch() -> None:
            async with db.connection() as conn:
                await conn.execute("SELECT pg_sleep(0.05)")

        await asyncio.gather(*(touch() for _ in range(size)))
        await asyncio.sleep(0.2)
        hub_pids = [sim.backend_pid for sim in sims]
        seen = visible(hub_pids[0], database)
        pool_query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> ALL($1)"
        async with db.connection() as conn:
            pool_pids = {
                int(r["pid"]) for r in await conn.fetch(pool_query, [*hub_pids, monitor.get_server_pid()])
            }
        server = postmaster(hub_pids[0]) if seen else None
        hub_cpu0 = sum(backend_cpu(p) for p in hub_pids)
        pool_cpu0 = {p: backend_cpu(p) for p in pool_pids}
        server_cpu0 = server_cpu(server) if server else 0.0
        sim_cpu0 = time.process_time()
        reads0 = [sim.reads for sim in sims]
        events0 = [sim.events for sim in sims]
        notifies0 = sum(d.sent for d in doorbells)
        for sim in sims:
            sim.lags.clear()
        started = time.perf_counter()

        sent = await write([Replica(db, d) for d in doorbells], rooms, rate, seconds, sent_at)
        deadline = time.perf_counter() + CATCH_UP_SECONDS
        while any(s.events - e0 < sent for s, e0 in zip(sims, events0, strict=True)):
            if time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.005)

        elapsed = time.perf_counter() - started
        sim_cpu = time.process_time() - sim_cpu0
        hub_cpu = sum(backend_cpu(p) for p in hub_pids) - hub_cpu0
        async with db.connection() as conn:
            pool_pids |= {
                int(r["pid"]) for r in await conn.fetch(pool_query, [*hub_pids, monitor.get_server_pid()])
            }
        write_cpu = sum(backend_cpu(p) - pool_cpu0.get(p, 0.0) for p in pool_pids)
        server_used = server_cpu(server) - server_cpu0 if server else 0.0
        reads = sum(s.reads - r0 for s, r0 in zip(sims, reads0, strict=True))
        dispatched = sum(s.events - e0 for s, e0 in zip(sims, events0, strict=True))
        notifies = sum(d.sent for d in doorbells) - notifies0
        lags = sorted(lag for sim in sims for lag in sim.lags)
    await others_gone(monitor)
    fetched = await table_reads(monitor) - rows_before

    def cpu(value: float) -> float | None:
        return round(value, 4) if seen else None

    return {
        "hubs": hubs,
        "rate_target": rate,
        "seconds": round(elapsed, 3),
        "events": sent,
        "events_per_s": round(sent / elapsed, 1),
        "notifies": notifies,
        "reads": reads,
        "reads_per_s": round(reads / elapsed, 1),
        "reads_per_hub_per_s": round(reads / elapsed / hubs, 1),
        "reads_per_event_per_hub": round(reads / hubs / sent, 3),
        "rows_to_hubs_per_s": round(dispatched / elapsed, 1),
        "hubs_saw_every_event": dispatched == sent * hubs,
        "events_rows_fetched_per_s": round(fetched / elapsed, 1),
        "db_cpu_visible": seen,
        "hub_db_cpu_core": cpu(hub_cpu / elapsed),
        "hub_db_cpu_per_read_us": cpu(hub_cpu / max(1, reads) * 1e6),
        "hub_db_cpu_per_event_per_hub_us": cpu(hub_cpu / (sent * hubs) * 1e6),
        "write_db_cpu_per_send_us": cpu(write_cpu / sent * 1e6),
        "server_cpu_core": cpu(server_used / elapsed),
        "simulator_cpu_core": round(sim_cpu / elapsed, 3),
        "lag_p50_ms": round(lags[len(lags) // 2] * 1000, 2) if lags else None,
        "lag_p99_ms": round(lags[int(0.99 * len(lags))] * 1000, 2) if lags else None,
    }


def fit(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Hub database CPU ~ a * reads + b * rows (rows = events * hubs), least squares through zero
    over the runs: a is the fixed cost of one read, b the cost of each event row it returns. None
    with fewer than three runs, or when the runs cannot tell the two apart (a negative cost)."""
    points = [
        (r["reads"], r["events"] * r["hubs"], r["hub_db_cpu_core"] * r["seconds"])
        for r in runs
        if r["db_cpu_visible"]
    ]
    sxx = sum(x * x for x, _, _ in points)
    syy = sum(y * y for _, y, _ in points)
    sxy = sum(x * y for x, y, _ in points)
    sxz = sum(x * z for x, _, z in points)
    syz = sum(y * z for _, y, z in points)
    det = sxx * syy - sxy * sxy
    if len(points) < 3 or det <= 0:
        return None
    a = (sxz * syy - syz * sxy) / det
    b = (syz * sxx - sxz * sxy) / det
    if a < 0 or b < 0:  # too few or too noisy runs to tell the two apart
        return None
    return {"per_read_us": round(a * 1e6, 2), "per_row_us": round(b * 1e6, 3), "runs": len(points)}


async def simulate(
    database_url: str, database: str, hubs: tuple[int, ...], rates: tuple[float, ...], seconds: float
) -> dict[str, Any]:
    monitor = await asyncpg.connect(database_url)
    try:
        version = await monitor.fetchval("SHOW server_version")
        runs = []
        for rate in rates:
            for n in hubs:
                run = await one_run(database_url, database, monitor, n, rate, seconds)
                print(row(run), flush=True)
                runs.append(run)
    finally:
        await monitor.close()
    return {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "postgresql": version},
        "seconds_per_run": seconds,
        "writers": WRITERS,
        "runs": runs,
        "model": fit(runs),
    }


async def preload(database_url: str, events: int) -> None:
    """`events` message events in the log (bulk-inserted: the hubs start after them), analysed."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            f"""
            INSERT INTO events (room_id, seq, kind, subject, payload)
            SELECT ('00000000-0000-0000-0000-'
                    || lpad((1 + n % {harness.SPREAD_ROOMS})::text, 12, '0'))::uuid,
                   1000000 + n, 'message.created', NULL,
                   json_build_object('seq', 1000000 + n, 'body', '{harness.BODY}')
            FROM generate_series(1, {int(events)}) AS n
            """
        )
        await conn.execute("VACUUM ANALYZE events")
    finally:
        await conn.close()


def run(
    admin_url: str,
    hubs: tuple[int, ...],
    rates: tuple[float, ...],
    seconds: float,
    log_events: int = FULL_LOG_EVENTS,
) -> dict[str, Any]:
    """A fresh migrated database with the bench's rooms and a retained log of `log_events`, then
    every (N, R) run against it."""
    with harness.migrated_database(admin_url) as (name, database_url):
        asyncio.run(harness.seed(database_url, 0))
        asyncio.run(preload(database_url, log_events))
        document = uvloop.run(simulate(database_url, name, hubs, rates, seconds))
    return {**document, "log_events": log_events}


# -- the report -----------------------------------------------------------------------------------

HEADER = (
    "| hubs | target events/s | events/s | reads/s (per hub) | reads per event per hub "
    "| rows to hubs/s | hub DB CPU (% core) | DB µs per read | DB µs per event per hub "
    "| DB µs per send | server CPU (% core) "
    "| simulator CPU (% core) | lag p50 / p99 ms |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _num(value: float | None, scale: float = 1, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value * scale:,.{digits}f}"


def row(r: dict[str, Any]) -> str:
    return (
        f"| {r['hubs']} | {_num(r['rate_target'])} | {_num(r['events_per_s'])} | {_num(r['reads_per_s'])} "
        f"({_num(r['reads_per_hub_per_s'])}) | {_num(r['reads_per_event_per_hub'], digits=2)} "
        f"| {_num(r['rows_to_hubs_per_s'])} | {_num(r['hub_db_cpu_core'], 100, 1)} "
        f"| {_num(r['hub_db_cpu_per_read_us'])} | {_num(r['hub_db_cpu_per_event_per_hub_us'])} "
        f"| {_num(r['write_db_cpu_per_send_us'])} | {_num(r['server_cpu_core'], 100, 1)} "
        f"| {_num(r['simulator_cpu_core'], 100, 1)} | {_num(r['lag_p50_ms'], digits=1)} / "
        f"{_num(r['lag_p99_ms'], digits=1)} |"
    )


def table(document: dict[str, Any]) -> str:
    lines = [HEADER, *(row(r) for r in document["runs"])]
    model = document["model"]
    if model:
        lines.append(
            f"\nfit over {model['runs']} runs: hub DB CPU ≈ {model['per_read_us']} µs per read "
            f"+ {model['per_row_us']} µs per event row read"
        )
    return "\n".join(lines)


def problems(document: dict[str, Any]) -> list[str]:
    """What is missing from a result: every run has every figure (CPU ones may be null only where
    the database's processes are not visible here), and every hub saw every event."""
    found = []
    if not document.get("runs"):
        return ["no runs"]
    for r in document["runs"]:
        name = f"hubs={r.get('hubs')} rate={r.get('rate_target')}"
        for key in RUN_FIGURES:
            if key not in r:
                found.append(f"{name}: {key} missing")
            elif r[key] is None and not (key in CPU_FIGURES and r.get("db_cpu_visible") is False):
                found.append(f"{name}: {key} is null")
        if not r.get("hubs_saw_every_event"):
            found.append(f"{name}: a hub missed events")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hubs", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="hubs 1,2 at 50 events/s, 2 s runs")
    parser.add_argument("--hubs", help="comma-separated hub counts (default 1,2,4,8,16)")
    parser.add_argument("--rates", help="comma-separated send rates, events/s (default 100,500)")
    parser.add_argument("--duration", type=float, help="seconds of writing per run (default 8)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    hubs = QUICK_HUBS if args.quick else FULL_HUBS
    rates = QUICK_RATES if args.quick else FULL_RATES
    seconds = args.duration or (QUICK_DURATION if args.quick else FULL_DURATION)
    if args.hubs:
        hubs = tuple(int(n) for n in args.hubs.split(","))
    if args.rates:
        rates = tuple(float(r) for r in args.rates.split(","))
    log_events = QUICK_LOG_EVENTS if args.quick else FULL_LOG_EVENTS
    print(HEADER, flush=True)
    with harness.postgres() as (admin_url, _):
        document = run(admin_url, hubs, rates, seconds, log_events)
    model = document["model"]
    if model:
        print(
            f"\nfit: hub DB CPU ≈ {model['per_read_us']} µs per read + {model['per_row_us']} µs per event row"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    found = problems(document)
    for problem in found:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
