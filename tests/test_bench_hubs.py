"""The hub simulation (bench/hubs.py, docs/capacity.md) runs and reports every figure: two tiny runs
(1 and 2 hubs, 20 events/s, 1 s each) against a fresh database. Structure only, never speed."""

from __future__ import annotations

import shutil

import pytest

from bench import hubs
from tests.support.missing import missing

pytestmark = pytest.mark.bench


def test_the_hub_simulation_reports_every_figure(admin_url: str) -> None:
    if shutil.which("psql") is None:  # bench.harness creates the database with it
        missing("psql is missing: apt-get install postgresql-client")

    document = hubs.run(admin_url, hubs=(1, 2), rates=(20,), seconds=1.0, log_events=500)

    assert hubs.problems(document) == []
    assert [(r["hubs"], r["rate_target"]) for r in document["runs"]] == [(1, 20), (2, 20)]
    for run in document["runs"]:
        assert run["events"] == 20
        assert run["hubs_saw_every_event"]
        assert run["reads"] >= run["hubs"]  # at least one read per hub to see anything
        assert run["rows_to_hubs_per_s"] > 0
        if run["db_cpu_visible"]:  # the server is on this machine (not in a container)
            assert all(isinstance(run[key], float) for key in hubs.CPU_FIGURES)
    assert {"when", "machine", "seconds_per_run", "writers", "runs", "model", "log_events"} <= set(document)
    columns = hubs.HEADER.splitlines()[0].count("|")
    assert [hubs.row(r).count("|") for r in document["runs"]] == [columns, columns]
