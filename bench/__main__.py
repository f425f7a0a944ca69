"""`python -m bench [--quick] [--duration S]`: the command line; runs the scenarios and reports them.

Measures chat-api's hot paths against floors measured in the same run, prints one table and writes
bench/results/latest.json. It sets up everything itself (bench.harness): a PostgreSQL (the
machine's at 127.0.0.1:5432 when it answers, else the embedded one), a fresh database, `chat-api
serve` as one process with production settings (JSON logs, access log on at INFO — the production
default — written to a file), wrk with the Lua scripts in bench/lua, pgbench for the database
floors, and an asyncio client for streams (bench.streams).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

from bench import report, scenarios


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and 2 s runs (CI proves the harness)"
    )
    parser.add_argument("--duration", type=int, help="seconds per load run (default 10, quick 2)")
    parser.add_argument("--out", type=Path, default=report.RESULTS / "latest.json")
    args = parser.parse_args()
    for tool in ("wrk", "pgbench", "psql"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is missing (apt-get install wrk postgresql)", file=sys.stderr)
            return 2
    profile = scenarios.QUICK if args.quick else scenarios.FULL
    if args.duration:
        profile = dataclasses.replace(profile, duration=args.duration)
    started = time.time()
    rows = scenarios.run(profile)
    print(report.table(rows))
    document = report.results(
        rows, mode="quick" if args.quick else "full", duration=profile.duration, wall_s=time.time() - started
    )
    report.write(document, args.out)
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
