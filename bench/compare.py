"""Before/after in one run: the same scenarios against servers built from several revisions.

    python -m bench.compare REV [REV ...]      e.g.  python -m bench.compare bbb1d4f a556a38 HEAD

Each revision is checked out into a temporary worktree; its own `chat-api migrate` and `chat-api
serve` run on a fresh database with the same seed. Scenarios: send into 100 rooms, newest page.
Prints throughput and p50 per revision and the ratio to the first one."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.__main__ import (
    QUICK,
    ROOT,
    SECRET,
    SPREAD_ROOMS,
    USER,
    migrated_database,
    postgres,
    room_uuid,
    start_server,
    stop,
    wrk,
)
from chat_api.auth.tokens import mint_token


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="chat-api-rev-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), revision],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def measure(revision: str, duration: int) -> dict[str, float]:
    token = mint_token(SECRET, USER, 3600)
    work = Path(tempfile.mkdtemp(prefix="chat-api-compare-"))
    with (
        worktree(revision) as src,
        postgres() as (admin_url, _),
        migrated_database(admin_url, QUICK, src) as (_, database_url, ids),
    ):
        server = start_server(database_url, work / "serve.log", src=src)
        try:
            (work / "spread.txt").write_text("\n".join(room_uuid(n) for n in range(1, SPREAD_ROOMS + 1)))
            (work / "page.txt").write_text(f"/v1/rooms/{ids['page_room']}/messages?limit=50\n")
            wrk(server.url, "get.lua", work / "page.txt", 2, token)  # warm up
            send = wrk(server.url, "send.lua", work / "spread.txt", duration, token)
            page = wrk(server.url, "get.lua", work / "page.txt", duration, token)
        finally:
            stop(server.process)
    return {
        "send/s": send["throughput"],
        "send p50": send["p50_ms"],
        "page/s": page["throughput"],
        "page p50": page["p50_ms"],
        "errors": send["errors"] + page["errors"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+")
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    results = {rev: measure(rev, args.duration) for rev in args.revisions}
    first = results[args.revisions[0]]
    print(
        f"{'revision':12} {'send/s':>8} {'p50 ms':>8} {'x first':>8} "
        f"{'page/s':>8} {'p50 ms':>8} {'x first':>8}"
    )
    for rev, r in results.items():
        print(
            f"{rev:12} {r['send/s']:8.0f} {r['send p50']:8.1f} {r['send/s'] / first['send/s']:8.2f} "
            f"{r['page/s']:8.0f} {r['page p50']:8.1f} {r['page/s'] / first['page/s']:8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
