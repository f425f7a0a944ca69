"""CI's check of a benchmark run: every scenario ran and produced its figures (never a speed).
`python -m bench.check bench/results/latest.json`; what it requires is bench.report's."""

from __future__ import annotations

import json
import sys

from bench.report import problems


def main(path: str) -> int:
    with open(path) as f:
        rows = json.load(f)["rows"]
    found = problems(rows)
    for problem in found:
        print(f"bench check: {problem}", file=sys.stderr)
    print(f"bench check: {len(rows)} scenarios, {'ok' if not found else 'FAILED'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json"))
