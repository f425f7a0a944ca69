"""Schemathesis against the running app's own OpenAPI document, over real HTTP.

One fuzzing run per module (a real server on a real port, authenticated as a test user who owns a
seeded room) generates positive and negative cases for every operation; part of them are aimed at
the seeded room and its messages so that the calls reach real data, not only 404s. Every response is
checked, every failure is recorded (none is filtered out), and the tests below judge them:

- no response is a 5xx (`not_a_server_error`);
- every response is documented: status code, content type and body schema
  (`status_code_conformance`, `content_type_conformance`, `response_schema_conformance`), and
  invalid input is refused (`negative_data_rejection`).

Not checked, deliberately: `positive_data_acceptance` (valid data for a room id that names no room of
yours is rightly 404, not 2xx), the stateful/security checks that need links or a second identity
(covered by tests/test_authorization_matrix.py), and `max_response_time` (timing is for bench/).
GET /v1/events is not fuzzed: its 200 is an endless SSE body that a request/response fuzzer cannot
finish reading (tests/test_events.py and test_hostile_input.py cover its parameters).

The run is deterministic (`derandomize=True`, no example database): the same cases every time.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup

from tests.support.servers import serve
from tests.support.settings import make_settings
from tests.support.users import User

EXAMPLES_PER_MODE = {GenerationMode.POSITIVE: 100, GenerationMode.NEGATIVE: 50}
NOT_FUZZED = {"GET /v1/events"}  # an endless text/event-stream body (see the module docstring)
CHECKS_BY_MODE = {
    GenerationMode.POSITIVE: [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ],
    GenerationMode.NEGATIVE: [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ],
}
SERVER_ERROR_CHECKS = {"not_a_server_error"}


@dataclass
class Finding:
    operation: str
    check: str
    status: int
    title: str
    detail: str
    reproduce: str
    count: int = 1

    def line(self) -> str:
        first = self.detail.strip().splitlines()[0] if self.detail.strip() else ""
        reproduce = self.reproduce if len(self.reproduce) <= 300 else self.reproduce[:300] + "..."
        where = f"{self.operation}: {self.check} -> {self.status}"
        return f"{where} ({self.title}; {first}) x{self.count}\n    {reproduce}"


@dataclass
class Report:
    operations: list[str] = field(default_factory=list)
    examples: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: dict[str, collections.Counter[int]] = field(default_factory=dict)
    findings: dict[tuple[str, str, int, str], Finding] = field(default_factory=dict)
    without_input: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def record(self, finding: Finding) -> None:
        key = (finding.operation, finding.check, finding.status, finding.title)
        if key in self.findings:
            self.findings[key].count += 1
        else:
            self.findings[key] = finding

    def summary(self) -> str:
        lines = [
            f"{len(self.operations)} operations, {sum(self.examples.values())} cases in {self.seconds:.1f} s"
        ]
        for op in self.operations:
            codes = ", ".join(f"{code}x{n}" for code, n in sorted(self.statuses.get(op, {}).items()))
            lines.append(f"  {op}: {self.examples[op]} cases; statuses {codes}")
        return "\n".join(lines)


def _strategies(op: Any, mode: GenerationMode, room_id: str, seqs: list[int], user_id: str) -> Any:
    """Generated cases, plus cases aimed at the seeded room (and its messages, and its owner)."""
    variants = [op.as_strategy(generation_mode=mode)]
    names = {p.name for p in op.path_parameters}
    if "room_id" in names:
        seeded: dict[str, Any] = {"room_id": room_id}
        variants.append(op.as_strategy(generation_mode=mode, path_parameters=seeded))
        if "seq" in names:
            variants += [
                op.as_strategy(generation_mode=mode, path_parameters={**seeded, "seq": seq}) for seq in seqs
            ]
        # The owner as user_id only for PUT: removing itself would end the seeded room for the run.
        if "user_id" in names and op.method.upper() == "PUT":
            variants.append(
                op.as_strategy(generation_mode=mode, path_parameters={**seeded, "user_id": user_id})
            )
    return st.one_of(variants)


def run_fuzz(base_url: str, token: str, room_id: str, seqs: list[int], user_id: str) -> Report:
    """Runs in a worker thread: the server under test runs on the test's event loop meanwhile."""
    report = Report()
    # The token is given as the value of the schema's own security scheme (HTTPBearer), not as an
    # extra header: schemathesis then knows when a case leaves it out on purpose (a security
    # negation, expected to be 401) and never puts it back into such a case.
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": token}}}})
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config, timeout=10)
    session = requests.Session()
    started = time.monotonic()
    for result in schema.get_all_operations():
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        if label in NOT_FUZZED:
            continue
        report.operations.append(label)
        if not list(op.iter_parameters()) and not op.body:
            report.without_input.add(label)  # one request is all there is to send
        for mode, examples in EXAMPLES_PER_MODE.items():
            run = settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(
                given(case=_strategies(op, mode, room_id, seqs, user_id))(
                    _exercise(report, label, mode, session, base_url)
                )
            )
            try:
                run()
            except Unsatisfiable:
                # Nothing to make invalid: an operation without parameters or body (the probes).
                assert mode is GenerationMode.NEGATIVE and label in report.without_input, label
    report.seconds = time.monotonic() - started
    session.close()
    return report


def _exercise(
    report: Report, label: str, mode: GenerationMode, session: requests.Session, base_url: str
) -> Callable[[schemathesis.Case], None]:
    """Calls the API with one case and records what every check of `mode` says about the answer."""
    checks = [getattr(schemathesis.checks, name) for name in CHECKS_BY_MODE[mode]]
    statuses = report.statuses.setdefault(label, collections.Counter())

    def exercise(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, session=session, timeout=10)
        report.examples[label] += 1
        statuses[response.status_code] += 1
        for check in checks:
            try:
                case.validate_response(response, checks=[check])
            except FailureGroup as group:
                curl = case.as_curl_command()
                for failure in group.exceptions:
                    finding = Finding(
                        label, check.__name__, response.status_code, failure.title, failure.message, curl
                    )
                    report.record(finding)

    return exercise


@pytest.fixture(scope="module")
async def fuzz_report(database_url: str) -> AsyncIterator[Report]:
    async with serve(make_settings(database_url, docs=True)) as app:
        owner = User(f"fuzz-{uuid.uuid4().hex[:8]}", app.url)
        try:
            created = await owner.http.post("/v1/rooms", json={"name": "fuzzed", "members": ["fuzz-peer"]})
            assert created.status_code == 201, created.text
            room = created.json()
            seqs = []
            for body in ("first", "second", "third"):
                r = await owner.send(room["id"], body)
                assert r.status_code == 201, r.text
                seqs.append(r.json()["seq"])
            report = await asyncio.to_thread(run_fuzz, app.url, owner.token, room["id"], seqs, owner.name)
            # The seeded room was really reached: its messages were read and written.
            history = (await owner.http.get(f"/v1/rooms/{room['id']}/messages", params={"limit": 100})).json()
            report.statuses.setdefault("(seeded room messages after the run)", collections.Counter())[
                len(history["items"])
            ] += 1
        finally:
            await owner.http.aclose()
        print("\nschemathesis:", report.summary())
        yield report


def _findings(report: Report, keep: Callable[[Finding], bool]) -> list[Finding]:
    return [f for f in report.findings.values() if keep(f)]


def test_every_operation_was_fuzzed_with_enough_cases(fuzz_report: Report) -> None:
    assert len(fuzz_report.operations) >= 13, fuzz_report.summary()
    least = sum(EXAMPLES_PER_MODE.values()) // 2
    thin = {
        op: n for op, n in fuzz_report.examples.items() if n < least and op not in fuzz_report.without_input
    }
    assert not thin, f"operations with fewer than {least} cases: {thin}\n{fuzz_report.summary()}"
    # Some calls reached real data (2xx on the seeded room), not only 404s and 422s.
    for op in (
        "GET /v1/rooms/{room_id}/messages",
        "POST /v1/rooms/{room_id}/messages",
        "GET /v1/rooms/{room_id}",
    ):
        assert any(200 <= code < 300 for code in fuzz_report.statuses[op]), fuzz_report.summary()


def test_no_request_makes_a_server_error(fuzz_report: Report) -> None:
    found = _findings(fuzz_report, lambda f: f.check in SERVER_ERROR_CHECKS or f.status >= 500)
    assert not found, "server errors:\n" + "\n".join(f.line() for f in found) + "\n" + fuzz_report.summary()


def test_every_response_is_documented_in_the_openapi_schema(fuzz_report: Report) -> None:
    found = _findings(fuzz_report, lambda f: f.check not in SERVER_ERROR_CHECKS and f.status < 500)
    by_check = collections.defaultdict(list)
    for f in found:
        by_check[f.check].append(f)
    message = "\n".join(
        f"== {check} ({len(items)})\n"
        + "\n".join(f.line() for f in sorted(items, key=lambda f: (f.operation, f.status)))
        for check, items in sorted(by_check.items())
    )
    assert not found, f"responses the schema does not document:\n{message}\n{fuzz_report.summary()}"
