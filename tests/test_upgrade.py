"""Releases without downtime: migrations are expand/contract, and readiness accepts a schema ahead of
the code (docs/deploy.md, "Upgrades").

1. A running server of this release keeps serving — /readyz 200, sends, history, a resumed stream —
   while the next release's migration (a synthetic expand-only revision on top of the head) is
   applied by `chat-api migrate` from a copy of the project: ArgoCD's wave-4 Job of the next release.
2. The code of the commit before the newest migration (from git history, in a worktree with its own
   venv) serves sends, history and a resumed stream against the head schema: the expand/contract
   rule, checked on the real migrations.
Both are slow (2 costs a venv install, ~30 s here); .ci/run runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from chat_api.core.migrations import head_revision, migrate
from tests.support.databases import throwaway_database
from tests.support.missing import missing
from tests.support.ports import free_port
from tests.support.processes import stop_process
from tests.support.servers import serve
from tests.support.settings import RUNTIME_PASSWORD, TEST_SECRET, make_settings, with_user
from tests.support.sse import open_stream
from tests.support.users import User

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
NEXT_REVISION = "9001"

# The next release's migration: expand only. A new nullable column and a new table; nothing the running
# release reads is renamed, dropped or made stricter. The pause keeps the migration in flight while the
# running server is being exercised (before the ALTER, so no lock is held during it).
NEXT_MIGRATION = '''"""The next release (synthetic, written by tests/test_upgrade.py): expand only.

Revision ID: {revision}
Revises: {down}
"""

from alembic import op

revision = "{revision}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("SELECT pg_sleep(1.5)")
    op.execute("ALTER TABLE messages ADD COLUMN next_release_note text")
    op.execute("CREATE TABLE next_release_things (id bigint PRIMARY KEY, note text)")


def downgrade() -> None:
    op.execute("DROP TABLE next_release_things")
    op.execute("ALTER TABLE messages DROP COLUMN next_release_note")
'''


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHAT_API_", "DATABASE_URL", "OTEL_", "PG", "PYTHON"))
    }
    env.update(CHAT_API_LOG_FORMAT="console", **extra)
    return env


@contextlib.asynccontextmanager
async def migrated_database(admin_url: str, runtime_role: str) -> AsyncIterator[str]:
    async with throwaway_database(admin_url, "chat_upgrade") as url:
        await migrate(make_settings(url, db_runtime_role=runtime_role))
        yield url


class Traffic:
    """What users and the kubelet do during the migration: sends, history pages and readiness
    probes, in a loop, every answer kept."""

    def __init__(self, base_url: str, user: User, room_id: str) -> None:
        self.base_url = base_url
        self.user = user
        self.room_id = room_id
        self.answers: list[tuple[str, int, float]] = []  # (what, status, when)
        self.sent: list[int] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as probe:
            n = 0
            while not self._stop.is_set():
                n += 1
                sent = await self.user.send(self.room_id, f"during {n}")
                self.answers.append(("send", sent.status_code, time.monotonic()))
                if sent.status_code == 201:
                    self.sent.append(sent.json()["seq"])
                page = await self.user.http.get(f"/v1/rooms/{self.room_id}/messages", params={"limit": 5})
                self.answers.append(("history", page.status_code, time.monotonic()))
                ready = await probe.get("/readyz")
                self.answers.append(("readyz", ready.status_code, time.monotonic()))
                await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()

    def failures(self) -> list[tuple[str, int, float]]:
        ok = {"send": 201, "history": 200, "readyz": 200}
        return [a for a in self.answers if a[1] != ok[a[0]]]


async def all_bodies(user: User, room: str) -> list[str]:
    """The room's whole history, oldest first, paged forward."""
    bodies: list[str] = []
    after = 0
    while True:
        page = (
            await user.http.get(f"/v1/rooms/{room}/messages", params={"after": after, "limit": 100})
        ).json()
        bodies += [m["body"] for m in page["items"]]
        if not page["has_more"]:
            return bodies
        after = page["items"][-1]["seq"]


def copy_with_next_release(destination: Path) -> Path:
    """This project's code and migrations, plus the next release's migration on top of the head."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "chat_api", destination / "chat_api", ignore=ignore)
    shutil.copytree(REPO / "migrations", destination / "migrations", ignore=ignore)
    head = head_revision()
    assert head is not None
    revision = destination / "migrations" / "versions" / f"{NEXT_REVISION}_next_release.py"
    revision.write_text(NEXT_MIGRATION.format(revision=NEXT_REVISION, down=head))
    return destination


async def test_a_running_server_keeps_serving_while_the_next_release_migrates(
    admin_url: str, runtime_role: str, tmp_path: Path
) -> None:
    async with migrated_database(admin_url, runtime_role) as url:
        settings = make_settings(with_user(url, runtime_role, RUNTIME_PASSWORD))
        async with serve(settings) as server:
            alice = User(f"alice-{uuid.uuid4().hex[:6]}", server.url)
            bob = User(f"bob-{uuid.uuid4().hex[:6]}", server.url)
            room = (await alice.create_room("upgrade", [bob]))["id"]
            cursor = (await bob.http.get("/v1/rooms")).json()["stream_cursor"]
            assert (await alice.send(room, "before")).status_code == 201

            next_release = copy_with_next_release(tmp_path / "next")
            traffic = Traffic(server.url, alice, room)
            running = asyncio.create_task(traffic.run())
            await asyncio.sleep(0.3)  # traffic flows before the Job starts
            job = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "chat_api",
                "migrate",
                cwd=next_release,
                env=clean_env(DATABASE_URL=url, PYTHONPATH=str(next_release)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(job.communicate(), 60)
            migrated_at = time.monotonic()
            await asyncio.sleep(1.0)  # and after it committed: the moment the old rule turned NotReady
            traffic.stop()
            await running
            log = output.decode()
            assert job.returncode == 0, log
            assert f"Running upgrade {head_revision()} -> {NEXT_REVISION}" in log, log

            db = await asyncpg.connect(url)
            try:
                assert await db.fetchval("SELECT version_num FROM alembic_version") == NEXT_REVISION
            finally:
                await db.close()
            assert traffic.failures() == [], traffic.failures()
            probes_after = [a for a in traffic.answers if a[0] == "readyz" and a[2] > migrated_at]
            sends_during = [a for a in traffic.answers if a[0] == "send" and a[2] < migrated_at]
            assert len(probes_after) >= 5 and len(sends_during) >= 5, traffic.answers

            async with httpx.AsyncClient(base_url=server.url) as probe:
                assert (await probe.get("/readyz")).json() == {"status": "ready"}
            assert (await alice.send(room, "after")).status_code == 201
            bodies = await all_bodies(bob, room)
            assert bodies[0] == "before" and bodies[-1] == "after" and len(bodies) == len(traffic.sent) + 2

            # The stream resumed from before the migration: every message since, once, in order.
            expected = len(traffic.sent) + 2
            async with open_stream(server.url, bob.token, last_event_id=cursor) as resumed:
                frames = await resumed.wait_for(expected, "message.created")
                await asyncio.sleep(0.2)
                frames = resumed.of("message.created")
            assert [f.data["message"]["body"] for f in frames] == bodies
            for user in (alice, bob):
                await user.http.aclose()


# ---- 2. the previous release against the head schema ------------------------------------------------


def git(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def newest_migration() -> Path:
    head = head_revision()
    found = [p for p in (REPO / "migrations" / "versions").glob("*.py") if p.name.startswith(f"{head}_")]
    assert len(found) == 1, found
    return found[0]


def commit_before_newest_migration() -> str:
    """The commit before the one that added the newest migration: the release it must keep working."""
    if not (REPO / ".git").exists():
        missing("not a git checkout: the previous release comes from git history")
    if git("rev-parse", "--is-shallow-repository") == "true":
        pytest.fail("a shallow clone has no history to take the previous release from (fetch-depth: 0)")
    path = newest_migration().relative_to(REPO)
    added = git("log", "--diff-filter=A", "--format=%H", "--", str(path)).splitlines()
    assert added, f"{path} is not committed yet"
    return git("rev-parse", f"{added[-1]}^")


@contextlib.contextmanager
def previous_release(tmp_path: Path) -> Iterator[Path]:
    """A worktree of the commit before the newest migration, installed into a venv of its own;
    yields the venv's `chat-api`."""
    commit = commit_before_newest_migration()
    tree = tmp_path / "previous"
    git("worktree", "add", "--detach", str(tree), commit)
    try:
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        done = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-c",
                str(tree / "requirements-lock.txt"),
                str(tree),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        yield venv / "bin" / "chat-api"
    finally:
        git("worktree", "remove", "--force", str(tree))


@contextlib.contextmanager
def old_server(chat_api: Path, database_url: str, log: Path) -> Iterator[str]:
    port = free_port()
    env = clean_env(
        DATABASE_URL=database_url,
        CHAT_API_JWT_SECRET=TEST_SECRET,
        CHAT_API_HOST="127.0.0.1",
        CHAT_API_PORT=str(port),
        CHAT_API_SEND_RATE_PER_SECOND="0",
    )
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(chat_api), "serve"], env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


async def wait_alive(base_url: str, log: Path) -> None:
    # Alive, not ready: the previous release may have the old readiness rule (exactly the head).
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
        for _ in range(150):
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the previous release did not start (its log: {log})")


async def test_the_previous_release_serves_against_the_head_schema(
    admin_url: str, runtime_role: str, tmp_path: Path
) -> None:
    async with migrated_database(admin_url, runtime_role) as url:
        with previous_release(tmp_path) as chat_api:
            log = tmp_path / "previous-serve.log"
            with old_server(chat_api, with_user(url, runtime_role, RUNTIME_PASSWORD), log) as base:
                await wait_alive(base, log)
                await exercise(base)
            text = log.read_text()
            assert '"level":"ERROR"' not in text and "Traceback" not in text, text


async def exercise(base_url: str) -> None:
    """Sends (plain and idempotent), an edit, a delete, history and a stream resumed by cursor."""
    alice = User(f"alice-{uuid.uuid4().hex[:6]}", base_url)
    bob = User(f"bob-{uuid.uuid4().hex[:6]}", base_url)
    try:
        room = (await alice.create_room("previous release", [bob]))["id"]
        first = await alice.send(room, "one", key="k1")
        assert first.status_code == 201, first.text
        assert (await alice.send(room, "one", key="k1")).status_code == 200
        async with open_stream(base_url, bob.token) as live:
            assert (await bob.send(room, "two", reply_to=first.json()["seq"])).status_code == 201
            await live.wait_for(1, "message.created")
            cursor = live.last_id
        for body in ("three", "four"):
            assert (await alice.send(room, body)).status_code == 201
        seq = first.json()["seq"]
        edited = await alice.http.patch(f"/v1/rooms/{room}/messages/{seq}", json={"body": "one!"})
        assert edited.status_code == 200, edited.text
        assert (await alice.http.delete(f"/v1/rooms/{room}/messages/{seq}")).status_code == 204
        page: dict[str, Any] = (await bob.http.get(f"/v1/rooms/{room}/messages")).json()
        assert [m["body"] for m in page["items"]] == [None, "two", "three", "four"]
        async with open_stream(base_url, bob.token, last_event_id=cursor) as resumed:
            frames = await resumed.wait_for(4)
            await asyncio.sleep(0.2)
            kinds = [(f.event, f.data["seq"]) for f in resumed.frames]
        assert [k for k, _ in kinds] == [
            "message.created",
            "message.created",
            "message.updated",
            "message.deleted",
        ], frames
        assert [s for _, s in kinds] == sorted(s for _, s in kinds)
    finally:
        for user in (alice, bob):
            await user.http.aclose()
