"""CI's check of a benchmark run: every scenario ran and produced its figures (never a speed).
`python -m bench.check bench/results/latest.json`"""

from __future__ import annotations

import json
import sys

REQUIRED = {
    "1.": ("throughput", "p50_ms", "p99_ms", "errors", "floor_throughput", "ratio"),
    "2.": ("throughput", "p50_ms", "p99_ms", "errors", "floor_throughput", "ratio"),
    "3.": ("throughput", "p50_ms", "p99_ms", "errors", "floor_throughput", "ratio"),
    "4.": ("throughput", "p50_ms", "p99_ms", "errors", "floor_throughput", "ratio"),
    "5.": ("throughput", "p50_ms", "p99_ms"),
    "6.": (),
    "7.": ("p50_ms",),
}


def main(path: str) -> int:
    with open(path) as f:
        rows = json.load(f)["rows"]
    problems = []
    for prefix, fields in REQUIRED.items():
        row = next((r for r in rows if r["scenario"].startswith(prefix)), None)
        if row is None:
            problems.append(f"scenario {prefix} is missing")
            continue
        problems += [f"{row['scenario']}: no {name}" for name in fields if row.get(name) is None]
        if row.get("errors"):
            problems.append(f"{row['scenario']}: {row['errors']} failed requests")
    for prefix in ("1.", "2."):
        row = next((r for r in rows if r["scenario"].startswith(prefix)), {})
        if row and not row.get("extra", {}).get("floor_p99_ms"):
            problems.append(f"{prefix}: no floor p99")
    six = next((r for r in rows if r["scenario"].startswith("6.")), {})
    if not six.get("extra", {}).get("kib_per_stream"):
        problems.append("6.: no memory per idle stream")
    seven = next((r for r in rows if r["scenario"].startswith("7.")), {})
    if not seven.get("extra", {}).get("idle_rss_mib"):
        problems.append("7.: no idle RSS")
    if len(seven.get("extra", {}).get("starts_ms", [])) != 3:
        problems.append("7.: not three timed starts")
    for problem in problems:
        print(f"bench check: {problem}", file=sys.stderr)
    print(f"bench check: {len(rows)} scenarios, {'ok' if not problems else 'FAILED'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest.json"))
