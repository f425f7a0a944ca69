"""The report: rows and their ratios to the floors, the table, the JSON results, what bench.check needs."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    scenario: str
    throughput: float | None = None  # per second
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int | None = None
    cpu_ms: float | None = None  # the server's CPU (user + system) per request, or per delivery
    floor: str = ""
    floor_throughput: float | None = None
    ratio: float | None = None  # throughput / floor throughput (or as the scenario says)
    extra: dict[str, Any] = field(default_factory=dict)


# -- ratios to the floor --------------------------------------------------------------------------

Figures = dict[str, Any]  # a load run's throughput, p50_ms, p99_ms (and errors, cpu_ms)


def throughput_ratio(got: Figures, floor: Figures) -> float:
    return float(got["throughput"] / floor["throughput"])


def p50_ratio(got: Figures, floor: Figures) -> float:
    return float(got["p50_ms"] / floor["p50_ms"])


def floor_latency(floor: Figures) -> dict[str, float]:
    """The floor's own p50/p99, shown next to the scenario's."""
    return {"floor_p50_ms": round(floor["p50_ms"], 2), "floor_p99_ms": round(floor["p99_ms"], 2)}


def against(
    scenario: str,
    got: Figures,
    floor: str,
    floor_figures: Figures,
    ratio: Callable[[Figures, Figures], float] = throughput_ratio,
    extra: dict[str, Any] | None = None,
) -> Row:
    """The row of a load run compared with its floor's run."""
    return Row(
        scenario,
        **got,
        floor=floor,
        floor_throughput=floor_figures["throughput"],
        ratio=ratio(got, floor_figures),
        extra=extra if extra is not None else {},
    )


# -- the table ------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(rows: list[Row]) -> str:
    header = (
        f"{'scenario':36} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'cpu ms':>6}  {'floor':24} "
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
            f"{fmt(r.errors, 0) if r.errors is not None else '—':>6} {fmt(r.cpu_ms, 3):>6}  {r.floor:24} "
            f"{fmt(r.floor_throughput, 0):>9} {fmt(r.extra.get('floor_p99_ms'), 2):>9} {ratio:>6}"
        )
    eight = next((r for r in rows if r.scenario.startswith("8.")), None)
    if eight is not None:
        tps, ratio = eight.extra["in_transaction_tps"], eight.extra["in_transaction_ratio"]
        lines.append(f"8. doorbell inside the transaction (migration 0004): {tps:,} tps, ratio {ratio:.3f}")
    ten = next((r for r in rows if r.scenario.startswith("10.")), None)
    if ten is not None:
        e, send_cpu = ten.extra, ten.cpu_ms or 0.0
        lines.append(
            f"10. newest page, 2 workers vs 1: {e['page_tps_2_workers']:,}/s "
            f"vs {e['page_tps_1_worker']:,}/s, "
            f"ratio {e['page_ratio']:.3f}; server cpu ms per request {e['page_cpu_ms_2_workers']:.3f} "
            f"vs {e['page_cpu_ms_1_worker']:.3f} (send {send_cpu:.3f} vs {e['send_cpu_ms_1_worker']:.3f})"
        )
    five = next((r for r in rows if r.scenario.startswith("5.")), None)
    if five is not None:
        fast = five.extra["at_50"]
        lines.append(
            f"5. the same at 50 messages/s: p50 {fast['p50_ms']:.1f} ms, p99 {fast['p99_ms']:.1f} ms, "
            f"{fast['cpu_ms']:.4f} ms CPU per delivery"
        )
    eleven = next((r for r in rows if r.scenario.startswith("11.")), None)
    if eleven is not None:
        e = eleven.extra
        lines.append(
            f"11. rare word ({e['rare_in_member_rooms']:,} in the user's rooms): "
            f"{fmt(e.get('rare_throughput'), 0)}/s, p50 {fmt(e.get('rare_p50_ms'), 2)} ms, "
            f"p99 {fmt(e.get('rare_p99_ms'), 2)} ms, {fmt(e.get('rare_cpu_ms'), 3)} ms CPU; "
            f"common word page 2: p50 {fmt(e.get('common_page_2_p50_ms'), 2)} ms, "
            f"{fmt(e.get('common_page_2_cpu_ms'), 3)} ms CPU"
        )
        lines.append(
            f"11. one client alone, p50/p99: common {fmt(e.get('common_alone_p50_ms'), 2)}/"
            f"{fmt(e.get('common_alone_p99_ms'), 2)} ms, rare {fmt(e.get('rare_alone_p50_ms'), 2)}/"
            f"{fmt(e.get('rare_alone_p99_ms'), 2)} ms; {e['rooms']} rooms, the user in "
            f"{e['member_rooms']}; loaded in {e['load_s']:.0f} s"
            + (f"; WRONG: {'; '.join(e['wrong'])}" if e.get("wrong") else "")
        )
    one = next((r for r in rows if r.scenario.startswith("1.")), None)
    if one is not None:
        raw, ratio = one.extra["raw_insert_tps"], one.extra["raw_insert_ratio"]
        lines.append(f"1. against the raw insert (room counter + INSERT): {raw:,} tps, ratio {ratio:.3f}")
    return "\n".join(lines)


# -- the JSON results -----------------------------------------------------------------------------


def results(rows: list[Row], *, mode: str, duration: int, wall_s: float) -> dict[str, Any]:
    """What bench/results/latest.json holds: the run's conditions and every row."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "mode": mode,
        "duration_per_run_s": duration,
        "wall_s": round(wall_s, 1),
        "rows": [r.__dict__ for r in rows],
    }


def write(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


# -- what bench.check requires (every scenario ran and produced its figures, never a speed) ------

REQUIRED = {
    "1.": ("throughput", "p50_ms", "p99_ms", "errors", "cpu_ms", "floor_throughput", "ratio"),
    "2.": ("throughput", "p50_ms", "p99_ms", "errors", "cpu_ms", "floor_throughput", "ratio"),
    "3.": ("throughput", "p50_ms", "p99_ms", "errors", "cpu_ms", "floor_throughput", "ratio"),
    "4.": ("throughput", "p50_ms", "p99_ms", "errors", "cpu_ms", "floor_throughput", "ratio"),
    "5.": ("throughput", "p50_ms", "p99_ms", "cpu_ms"),
    "6.": (),
    "7.": ("p50_ms",),
    "8.": ("throughput", "p50_ms", "p99_ms", "floor_throughput", "ratio"),
    "9.": ("p50_ms", "p99_ms"),
    "10.": ("throughput", "p50_ms", "p99_ms", "errors", "cpu_ms", "floor_throughput", "ratio"),
    "11.": ("throughput", "p50_ms", "p99_ms", "errors", "cpu_ms", "floor_throughput", "ratio"),
}


# What each scenario must also carry in its `extra`, with how a missing one is named.
REQUIRED_EXTRA: dict[str, dict[str, str]] = {
    "1.": {
        "floor_p99_ms": "floor p99",
        "raw_insert_tps": "raw_insert_tps",
        "raw_insert_ratio": "raw_insert_ratio",
    },
    "2.": {"floor_p99_ms": "floor p99"},
    "3.": {},
    "4.": {},
    "5.": {},  # at_50 is nested: checked below
    "6.": {"kib_per_stream": "memory per idle stream"},
    "7.": {"idle_rss_mib": "idle RSS"},
    "8.": {name: name for name in ("in_transaction_tps", "in_transaction_ratio", "floor_p99_ms")},
    "9.": {"deliveries": "deliveries"},
    "10.": {
        name: name
        for name in ("page_tps_1_worker", "page_tps_2_workers", "page_ratio", "page_cpu_ms_2_workers")
    },
    "11.": {
        name: name
        for name in (
            "rare_p50_ms",
            "rare_p99_ms",
            "rare_cpu_ms",
            "common_page_2_p50_ms",
            "common_page_2_cpu_ms",
            "common_alone_p50_ms",
            "rare_alone_p50_ms",
            "floor_p99_ms",
        )
    },
}


def problems(rows: list[dict[str, Any]]) -> list[str]:
    """What is missing from the rows of a results file, or went wrong in them."""
    found = []
    for prefix, fields in REQUIRED.items():
        row = next((r for r in rows if r["scenario"].startswith(prefix)), None)
        if row is None:
            found.append(f"scenario {prefix} is missing")
            continue
        extra = row.get("extra", {})
        found += [f"{row['scenario']}: no {name}" for name in fields if row.get(name) is None]
        found += [
            f"{prefix}: no {label}" for name, label in REQUIRED_EXTRA[prefix].items() if not extra.get(name)
        ]
        if row.get("errors"):
            found.append(f"{row['scenario']}: {row['errors']} failed requests")
        if prefix == "5." and not extra.get("at_50", {}).get("p99_ms"):
            found.append("5.: no run at 50 messages/s")
        if prefix == "7." and len(extra.get("starts_ms", [])) != 3:
            found.append("7.: not three timed starts")
        if prefix == "10." and extra.get("page_errors"):
            found.append(f"10.: {extra['page_errors']} failed page requests")
        if prefix == "11.":
            found += [f"11.: {wrong}" for wrong in extra.get("wrong", ["the answers were not checked"])]
    return found
