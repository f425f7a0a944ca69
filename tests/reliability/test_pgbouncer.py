"""chat-api behind a real PgBouncer in transaction mode (what a CloudNativePG `Pooler` runs).

The app's queries go through PgBouncer (`DATABASE_URL`), the stream hub's LISTEN goes straight to
PostgreSQL (`CHAT_API_DB_LISTEN_URL`), and `CHAT_API_DB_STATEMENT_CACHE=0`. Every query path is
exercised through the pooler, PgBouncer's admin console and pg_stat_activity prove that the traffic
really went through it, and the statement cache left on shows why the setting is needed.

Needs Debian's `pgbouncer` (the test fails under CI when it is missing, and skips elsewhere) and
`psql` for the admin console (it speaks only the simple query protocol). The backend is whatever
server the tests got (tests/support/pg.py): over TCP, or over the unix socket the embedded server
listens on only (its socket directory, like libpq's `?host=/dir`); then PgBouncer runs as the
directory's owner, the one user that may reach the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.support.missing import missing
from tests.support.ports import free_port
from tests.support.problems import assert_problem
from tests.support.servers import RunningServer, ServerFactory
from tests.support.sse import open_stream
from tests.support.users import UserFactory

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
PSQL = shutil.which("psql") or "psql"
# Fewer server connections than the app's pool (5 + 10 overflow): client connections must share them,
# which is what breaks session state such as named prepared statements.
SERVER_POOL_SIZE = 3
HUB_APP_NAME = "chat-api-hub-direct"
POOLED_APP_NAME = "chat-api-via-pgbouncer"


def _require_pgbouncer() -> None:
    if not (os.path.exists(PGBOUNCER) and shutil.which(PSQL)):
        missing("needs Debian's pgbouncer and psql (apt-get install -y pgbouncer postgresql-client)")


def pgbouncer_version() -> tuple[int, ...]:
    out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)(?:\.(\d+))?", out)
    assert match, out
    return tuple(int(part or 0) for part in match.groups())


@dataclass
class Bouncer:
    port: int
    user: str
    dbname: str
    directory: Path
    process: asyncio.subprocess.Process

    def url(self, application_name: str = POOLED_APP_NAME) -> str:
        """The test database through PgBouncer."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}?application_name={application_name}"

    async def show(self, what: str) -> list[dict[str, str]]:
        """`SHOW <what>` on the admin console, as rows of column -> text."""
        proc = await asyncio.create_subprocess_exec(
            PSQL,
            "--csv",
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.user,
            "-d",
            "pgbouncer",
            "-c",
            f"SHOW {what}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return list(csv.DictReader(io.StringIO(out.decode())))

    def log(self) -> str:
        return (self.directory / "pgbouncer.log").read_text(errors="replace")


BouncerFactory = Callable[..., Awaitable[Bouncer]]


def backend_address(database_url: str) -> tuple[str, int]:
    """Host (a name, an address, or a unix-socket directory) and port of a libpq-style URL: from the
    authority, else from `?host=`/`?port=` (how the embedded server's URL names its socket directory)."""
    parts = urllib.parse.urlsplit(database_url)
    query = urllib.parse.parse_qs(parts.query)
    host = parts.hostname or query.get("host", ["127.0.0.1"])[0]
    port = parts.port or int(query.get("port", ["5432"])[0])
    return host, port


def _run_as(backend_host: str) -> str | None:
    """PgBouncer refuses to run as root: run it as the owner of the backend's socket directory (the
    embedded server's data directory is private to its user), else as postgres (or nobody)."""
    if os.geteuid() != 0:
        return None
    if backend_host.startswith("/"):
        owner = os.stat(backend_host).st_uid
        if owner != 0:
            return pwd.getpwuid(owner).pw_name
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    pytest.fail("running as root and there is no postgres or nobody user to run PgBouncer as")


def _workdir() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="chat-api-pgbouncer-"))
    directory.chmod(0o755)  # readable by the user PgBouncer runs as
    return directory


@contextlib.asynccontextmanager
async def run_pgbouncer(database_url: str, **extra: str) -> AsyncIterator[Bouncer]:
    """A PgBouncer in transaction mode in front of the test database; `extra` adds ini settings."""
    backend = urllib.parse.urlsplit(database_url)
    user = urllib.parse.unquote(backend.username or "postgres")
    password = urllib.parse.unquote(backend.password or "")
    dbname = backend.path.lstrip("/")
    directory = _workdir()
    port = free_port()
    settings = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_type": "trust",  # like the local server's pg_hba; the backend login uses auth_file
        "auth_file": str(directory / "users.txt"),
        "admin_users": user,
        "stats_users": user,
        "pool_mode": "transaction",
        "default_pool_size": str(SERVER_POOL_SIZE),
        "max_client_conn": "200",
        "logfile": "",
        "pidfile": "",
        "log_connections": "0",
        "log_disconnections": "0",
    }
    if pgbouncer_version() >= (1, 21):
        # Protocol-level prepared statements exist from 1.21 on: keep them off, as in a pooler
        # without that support (1.18, Debian 12's, has none at all and refuses the setting).
        settings["max_prepared_statements"] = "0"
    settings.update(extra)
    host, backend_port = backend_address(database_url)
    target = f"host={host} port={backend_port} dbname={dbname}"
    ini = "\n".join(
        ["[databases]", f"{dbname} = {target}", "[pgbouncer]", *(f"{k} = {v}" for k, v in settings.items())]
    )
    (directory / "pgbouncer.ini").write_text(ini + "\n")
    (directory / "users.txt").write_text(f'"{user}" "{password}"\n')
    for name in ("pgbouncer.ini", "users.txt"):
        (directory / name).chmod(0o644)
    log = (directory / "pgbouncer.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        PGBOUNCER,
        str(directory / "pgbouncer.ini"),
        stdout=log,
        stderr=log,
        user=_run_as(host),
    )
    bouncer = Bouncer(port, user, dbname, directory, process)
    try:
        async with asyncio.timeout(10):
            while True:
                if process.returncode is not None:
                    pytest.fail(f"pgbouncer exited with {process.returncode}:\n{bouncer.log()}")
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                await asyncio.sleep(0.05)
        yield bouncer
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def start_pgbouncer(database_url: str) -> AsyncIterator[BouncerFactory]:
    _require_pgbouncer()
    async with contextlib.AsyncExitStack() as stack:

        async def start(**extra: str) -> Bouncer:
            return await stack.enter_async_context(run_pgbouncer(database_url, **extra))

        yield start


def with_app_name(url: str, application_name: str) -> str:
    """The URL with application_name added to its query (which may already hold `host=`)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.urlencode([("application_name", application_name)])
    return urllib.parse.urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query))


async def start_app_behind(
    start_server: ServerFactory, bouncer: Bouncer, database_url: str, *, statement_cache: bool
) -> RunningServer:
    return await start_server(
        database_url=bouncer.url(),
        db_listen_url=with_app_name(database_url, HUB_APP_NAME),
        db_statement_cache=statement_cache,
    )


def stats_of(rows: list[dict[str, str]], dbname: str) -> dict[str, str]:
    found = [r for r in rows if r["database"] == dbname]
    return found[0] if found else {"total_xact_count": "0", "total_query_count": "0"}  # not used yet


# --- every query path through PgBouncer -------------------------------------------------------------


async def test_every_query_path_works_through_pgbouncer_in_transaction_mode(
    start_pgbouncer: BouncerFactory,
    start_server: ServerFactory,
    make_user: UserFactory,
    database_url: str,
    admin_url: str,
) -> None:
    bouncer = await start_pgbouncer()
    stats_before = stats_of(await bouncer.show("STATS"), bouncer.dbname)
    app = await start_app_behind(start_server, bouncer, database_url, statement_cache=False)
    alice, bob = make_user("alice", app.url), make_user("bob", app.url)
    carol = make_user("carol", app.url)

    ready = await alice.http.get("/readyz")
    assert ready.status_code == 200, ready.text

    # rooms: create with members, list with a cursor, show; members: add, add again, remove
    room = await alice.create_room("through the pooler", members=[bob])
    rid = room["id"]
    other = await alice.create_room("second")
    page1 = (await alice.http.get("/v1/rooms", params={"limit": 1})).json()
    assert page1["next_cursor"] and len(page1["items"]) == 1
    page2 = (await alice.http.get("/v1/rooms", params={"limit": 1, "cursor": page1["next_cursor"]})).json()
    assert [page1["items"][0]["id"], page2["items"][0]["id"]] == [other["id"], rid]
    stream_cursor = (await bob.http.get("/v1/rooms")).json()["stream_cursor"]
    detail = (await alice.http.get(f"/v1/rooms/{rid}")).json()
    assert {m["user_id"] for m in detail["members"]} == {alice.name, bob.name}
    assert (await alice.http.put(f"/v1/rooms/{rid}/members/{carol.name}")).status_code == 201
    assert (await alice.http.put(f"/v1/rooms/{rid}/members/{carol.name}")).status_code == 200
    assert (await carol.http.get(f"/v1/rooms/{rid}")).status_code == 200
    assert (await alice.http.delete(f"/v1/rooms/{rid}/members/{carol.name}")).status_code == 204
    assert_problem(await carol.http.get(f"/v1/rooms/{rid}"), 404)

    # messages: plain send, keyed send, replay, key reuse, reply_to (good and bad)
    first = await alice.send(rid, "plain")
    assert first.status_code == 201, first.text
    keyed = await alice.send(rid, "keyed", "key-1")
    assert keyed.status_code == 201, keyed.text
    replay = await alice.send(rid, "keyed", "key-1")
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == keyed.json()
    assert_problem(await alice.send(rid, "different", "key-1"), 422)
    reply = await bob.send(rid, "answer", reply_to=first.json()["seq"])
    assert reply.status_code == 201 and reply.json()["reply_to"] == first.json()["seq"]
    assert_problem(await bob.send(rid, "to nothing", reply_to=10**6), 422)

    # history: newest, before, after; one message; edit; delete; edit after delete
    newest = (await bob.http.get(f"/v1/rooms/{rid}/messages", params={"limit": 2})).json()
    assert [m["body"] for m in newest["items"]] == ["keyed", "answer"] and newest["has_more"]
    before = (
        await bob.http.get(f"/v1/rooms/{rid}/messages", params={"before": newest["items"][0]["seq"]})
    ).json()
    assert [m["body"] for m in before["items"]] == ["plain"] and not before["has_more"]
    after = (await bob.http.get(f"/v1/rooms/{rid}/messages", params={"after": 0, "limit": 2})).json()
    assert [m["body"] for m in after["items"]] == ["plain", "keyed"] and after["has_more"]
    seq = first.json()["seq"]
    replied = {**first.json(), "reply_count": 1, "last_reply_seq": reply.json()["seq"]}  # a thread's root
    assert (await bob.http.get(f"/v1/rooms/{rid}/messages/{seq}")).json() == replied
    assert_problem(await bob.http.get(f"/v1/rooms/{rid}/messages/{10**6}"), 404)
    edited = await alice.http.patch(f"/v1/rooms/{rid}/messages/{seq}", json={"body": "plain, edited"})
    assert edited.status_code == 200 and edited.json()["edited_at"]
    assert (await alice.http.delete(f"/v1/rooms/{rid}/messages/{seq}")).status_code == 204
    assert (await bob.http.get(f"/v1/rooms/{rid}/messages/{seq}")).json()["deleted"] is True
    assert_problem(await alice.http.patch(f"/v1/rooms/{rid}/messages/{seq}", json={"body": "x"}), 409)

    # SPEC §8: reactions, a thread's page, search, room name and topic, a direct room, typing
    answer = f"/v1/rooms/{rid}/messages/{reply.json()['seq']}/reactions/tada"
    assert (await alice.http.put(answer)).json()["reactions"][0]["users"] == [alice.name]
    assert (await alice.http.delete(answer)).status_code == 204
    thread = (await bob.http.get(f"/v1/rooms/{rid}/messages", params={"thread": seq})).json()
    assert [m["body"] for m in thread["items"]] == ["answer"]
    found = (await bob.http.get("/v1/search", params={"q": "answer", "room_id": rid})).json()
    assert [m["seq"] for m in found["items"]] == [reply.json()["seq"]]
    changed = await alice.http.patch(f"/v1/rooms/{rid}", json={"topic": "pooled"})
    assert changed.status_code == 200 and changed.json()["topic"] == "pooled"
    assert (await alice.http.put(f"/v1/dms/{bob.name}")).status_code == 201
    assert (await alice.http.post(f"/v1/rooms/{rid}/typing")).status_code == 204

    # read marker
    last = reply.json()["seq"]
    assert (await bob.http.post(f"/v1/rooms/{rid}/read", json={"seq": last})).status_code == 204
    markers = {
        m["user_id"]: m["last_read_seq"] for m in (await bob.http.get(f"/v1/rooms/{rid}")).json()["members"]
    }
    assert markers[bob.name] == last

    # the stream: replay from a cursor (through the pooler), then live (via the direct LISTEN)
    async with open_stream(app.url, bob.token, room_id=rid, cursor=stream_cursor) as stream:
        assert stream.status == 200
        replayed = await stream.wait_for(1, "message.created")
        assert replayed[0].data["message"]["body"] == "plain"
        count = len(stream.frames)
        live = await alice.send(rid, "live through the hub")
        assert live.status_code == 201
        frames = await stream.wait_for(count + 1)
        assert frames[-1].event == "message.created" and frames[-1].data["message"] == live.json()

    # many at once: client connections outnumber PgBouncer's server connections
    sends = await asyncio.gather(*(bob.send(rid, f"burst {i}", f"burst-{i}") for i in range(30)))
    assert [r.status_code for r in sends] == [201] * 30, [r.text for r in sends if r.status_code != 201]
    seqs = sorted(r.json()["seq"] for r in sends)
    assert seqs == list(range(seqs[0], seqs[0] + 30)), "one seq each, none lost or repeated"
    assert (await alice.http.get("/readyz")).status_code == 200

    # The traffic really went through PgBouncer: its counters moved, its pool is in transaction
    # mode, and every backend of the app's pool is one of PgBouncer's server connections, while the
    # hub's LISTEN connection is direct. Backends are matched by process id (PgBouncer's remote_pid),
    # which holds over TCP and over a unix socket alike (where client_port is -1).
    after_stats = stats_of(await bouncer.show("STATS"), bouncer.dbname)
    transactions = int(after_stats["total_xact_count"]) - int(stats_before["total_xact_count"])
    assert transactions >= 60, after_stats
    (pool,) = [p for p in await bouncer.show("POOLS") if p["database"] == bouncer.dbname]
    assert pool["pool_mode"] == "transaction"
    clients = [c for c in await bouncer.show("CLIENTS") if c["database"] == bouncer.dbname]
    assert len(clients) >= 2, clients  # the app's pooled connections are PgBouncer's clients
    servers = await bouncer.show("SERVERS")
    bouncer_pids = {int(s["remote_pid"]) for s in servers if s["database"] == bouncer.dbname}
    assert 0 < len(bouncer_pids) <= SERVER_POOL_SIZE
    admin = await asyncpg.connect(admin_url)
    try:
        backends = await admin.fetch(
            "SELECT application_name, pid FROM pg_stat_activity WHERE datname = $1",
            bouncer.dbname,
        )
    finally:
        await admin.close()
    pooled = {b["pid"] for b in backends if b["application_name"] == POOLED_APP_NAME}
    hub = {b["pid"] for b in backends if b["application_name"] == HUB_APP_NAME}
    assert pooled and pooled <= bouncer_pids, (pooled, bouncer_pids)
    assert len(hub) == 1 and not hub & bouncer_pids, (hub, bouncer_pids)


# --- why CHAT_API_DB_STATEMENT_CACHE=0 is needed -----------------------------------------------------


async def test_statement_cache_on_breaks_behind_pgbouncer(
    start_pgbouncer: BouncerFactory,
    start_server: ServerFactory,
    make_user: UserFactory,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same pooler with asyncpg's named, cached prepared statements: a statement prepared on one
    server connection is later executed on another, which does not have it."""
    bouncer = await start_pgbouncer()
    app = await start_app_behind(start_server, bouncer, database_url, statement_cache=True)
    alice = make_user("alice", app.url)
    statuses: list[int] = []
    with caplog.at_level(logging.ERROR, logger="chat_api.errors"):
        for _ in range(20):  # usually the first round already fails
            rooms = await asyncio.gather(
                *(alice.http.post("/v1/rooms", json={"name": f"r{i}"}) for i in range(15)),
                *(alice.http.get("/v1/rooms") for _ in range(15)),
            )
            statuses += [r.status_code for r in rooms]
            if 500 in statuses:
                break
    errors = [str(record.exc_info[1]) for record in caplog.records if record.exc_info and record.exc_info[1]]
    print(f"\nstatement cache on behind PgBouncer: {statuses.count(500)} of {len(statuses)} requests failed")
    print("\n".join(sorted(set(errors))))
    assert 500 in statuses, f"no failure with the statement cache on; statuses {sorted(set(statuses))}"
    assert any(re.search(r'prepared statement "__asyncpg_stmt_\w+__" does not exist', e) for e in errors), (
        errors
    )


# --- the app logs in through a stock PgBouncer (no ignore_startup_parameters) ---------------------


async def test_the_app_logs_in_through_a_stock_pgbouncer(
    start_pgbouncer: BouncerFactory, start_server: ServerFactory, make_user: UserFactory, database_url: str
) -> None:
    bouncer = await start_pgbouncer()  # no ignore_startup_parameters
    app = await start_app_behind(start_server, bouncer, database_url, statement_cache=False)
    alice = make_user("alice", app.url)
    ready = await alice.http.get("/readyz")
    assert ready.status_code == 200, (ready.text, bouncer.log()[-2000:])
    created = await alice.http.post("/v1/rooms", json={"name": "stock pooler"})
    assert created.status_code == 201, created.text


# --- the event pruner behind the pooler: transaction-level locks only -----------------------------------


async def test_pruning_through_pgbouncer_leaves_no_lock_behind(
    start_pgbouncer: BouncerFactory, database_url: str, admin_url: str
) -> None:
    # The pruner takes pg_try_advisory_xact_lock inside each batch transaction: it ends with the
    # transaction, so it cannot stay behind on a pooled server connection (a session lock would).
    from chat_api.core.db import Database
    from chat_api.events.reader import PRUNE_LOCK_KEY, prune
    from tests.support.settings import make_settings

    bouncer = await start_pgbouncer()
    # A retention of ten years: the lock is taken and released, and no event of other tests is pruned.
    settings = make_settings(
        bouncer.url(), db_statement_cache=False, event_retention_seconds=10 * 365 * 86400
    )
    engine, other_replica = Database(settings), Database(settings)
    await engine.open()
    await other_replica.open()
    admin = await asyncpg.connect(admin_url)
    try:
        results = await asyncio.gather(
            *(prune(e, settings.event_retention_seconds) for e in (engine, other_replica) for _ in range(3))
        )
        assert results == [0] * 6
        held = await admin.fetch(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND d.datname = $1 AND l.objid = $2",
            bouncer.dbname,
            PRUNE_LOCK_KEY & 0xFFFFFFFF,
        )
        assert held == [], "the prune lock is still held by a pooled server connection"
    finally:
        await admin.close()
        await engine.close()
        await other_replica.close()
