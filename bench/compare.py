"""Before/after in one run: the same scenarios against servers built from several revisions.

    python -m bench.compare REV [REV ...] [--rounds 3] [--duration 5] [--subscribers 200]
    e.g.  python -m bench.compare d625780 HEAD

Each revision is checked out into a temporary worktree; its own `chat-api migrate` and `chat-api
serve` run on a fresh database with the same seed, all servers at once (one at a time under load).
Scenarios: send into 100 rooms, send into one hot room, newest page, delivery at low load (one
stream, 10 messages a second: send request to stream frame) and fan-out (`--subscribers` streams of
one room, 50 messages a second). The revisions take turns in every round, so drift of a noisy
machine hits them alike; each figure is the median over rounds. Prints throughput, p50, p99 and the
server's CPU per request per revision and the throughput ratio to the first one, then the delivery
p50 and p99, then the fan-out's p50, p99 and server CPU per delivery."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import uvloop

from bench import scenarios, streams
from bench.harness import (
    ROOT,
    SECRET,
    Server,
    migrated_database,
    postgres,
    seed,
    start_server,
    stop,
    user_token,
    wrk,
)

SCENARIOS = ("send 100 rooms", "send hot room", "newest page")
DELIVERY_MESSAGES = 50
FAN_OUT_MESSAGES = 100


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


@contextlib.contextmanager
def revision_server(revision: str, admin_url: str) -> Iterator[tuple[Server, dict[str, Path]]]:
    """The revision's server on its own fresh database, and the wrk data file of each scenario."""
    work = Path(tempfile.mkdtemp(prefix="chat-api-compare-"))
    with worktree(revision) as src, migrated_database(admin_url, src) as (_, database_url):
        ids = asyncio.run(seed(database_url, scenarios.QUICK.depth_messages))
        files = {name: work / f"{n}.txt" for n, name in enumerate(SCENARIOS)}
        files["send 100 rooms"].write_text(scenarios.spread_rooms())
        files["send hot room"].write_text(scenarios.hot_room())
        files["newest page"].write_text(scenarios.newest_page_path(ids))
        server = start_server(database_url, work / "serve.log", src=src)
        try:
            yield server, files
        finally:
            stop(server.process)


def load(server: Server, scenario: str, data: Path, duration: int, token: str) -> dict[str, float]:
    script = "get.lua" if scenario == "newest page" else "send.lua"
    return wrk(server.url, script, data, duration, token, server.process.pid)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per scenario and round")
    parser.add_argument(
        "--subscribers", type=int, default=200, help="streams of the fan-out run in each round (0: none)"
    )
    args = parser.parse_args()
    token = user_token()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        rev: {s: [] for s in SCENARIOS} for rev in args.revisions
    }
    delivered: dict[str, list[dict[str, float]]] = {rev: [] for rev in args.revisions}
    fanned: dict[str, list[dict[str, float]]] = {rev: [] for rev in args.revisions}
    with postgres() as (admin_url, _), contextlib.ExitStack() as stack:
        servers = {rev: stack.enter_context(revision_server(rev, admin_url)) for rev in args.revisions}
        for server, files in servers.values():  # warm up
            load(server, "newest page", files["newest page"], 1, token)
        for _ in range(args.rounds):
            for scenario in SCENARIOS:
                for rev, (server, files) in servers.items():
                    runs[rev][scenario].append(load(server, scenario, files[scenario], args.duration, token))
            for rev, (server, _) in servers.items():
                delivered[rev].append(
                    uvloop.run(
                        streams.fan_out(server.url, SECRET, 1, DELIVERY_MESSAGES, scenarios.DELIVERY_RATE)
                    )
                )
                if args.subscribers:
                    fanned[rev].append(
                        uvloop.run(
                            streams.fan_out(
                                server.url,
                                SECRET,
                                args.subscribers,
                                FAN_OUT_MESSAGES,
                                scenarios.FAN_OUT_RATE,
                                server.process.pid,
                            )
                        )
                    )
    first = args.revisions[0]

    def median(rev: str, scenario: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[rev][scenario])

    header = f"{'revision':12}" + "".join(
        f" {s + ' /s':>18} {'p50 ms':>7} {'p99 ms':>7} {'cpu ms':>6} {'x first':>7}" for s in SCENARIOS
    )
    print(header)
    for rev in args.revisions:
        line = f"{rev:12}"
        for s in SCENARIOS:
            throughput = median(rev, s, "throughput")
            line += f" {throughput:18.0f} {median(rev, s, 'p50_ms'):7.1f} {median(rev, s, 'p99_ms'):7.1f} "
            line += f"{median(rev, s, 'cpu_ms'):6.3f} "
            line += f"{throughput / median(first, s, 'throughput'):7.2f}"
        print(line)
    rate = scenarios.DELIVERY_RATE
    print(f"\n{'revision':12} {'delivery p50 ms':>16} {'p99 ms':>7}  ({rate} messages/s, one stream)")
    for rev in args.revisions:
        p50 = statistics.median(r["p50_ms"] for r in delivered[rev])
        p99 = statistics.median(r["p99_ms"] for r in delivered[rev])
        print(f"{rev:12} {p50:16.2f} {p99:7.2f}")
    if args.subscribers:
        rate = scenarios.FAN_OUT_RATE
        print(f"\n{'revision':12} {'fan-out p50 ms':>15} {'p99 ms':>7} {'cpu ms/delivery':>16}", end="")
        print(f"  ({args.subscribers} streams, {rate} messages/s)")
        for rev in args.revisions:
            p50 = statistics.median(r["p50_ms"] for r in fanned[rev])
            p99 = statistics.median(r["p99_ms"] for r in fanned[rev])
            cpu = statistics.median(1000 * r["server_cpu_s"] / r["deliveries"] for r in fanned[rev])
            print(f"{rev:12} {p50:15.2f} {p99:7.2f} {cpu:16.4f}")
    errors = sum(r["errors"] for rev in runs.values() for rs in rev.values() for r in rs)
    if errors:
        print(f"warning: {errors} failed requests", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
