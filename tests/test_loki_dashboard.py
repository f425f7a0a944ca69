"""The Loki dashboard reads what the service really writes: a running server's OTLP log records, mapped
the way Loki's OTLP ingestion stores them (tests/support/loki.py), have every index label, structured
metadata field and unwrap value the dashboards' LogQL uses; and the record that marks a stream
opened is written once per accepted stream."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import httpx
import pytest

from chat_api.app import create_app
from chat_api.events.router import STREAM_OPENED
from tests.support.logql import (
    SAMPLE_TRACE_ID,
    Query,
    dashboard,
    docs_queries,
    field_problems,
    loki_queries,
    matching,
    parse,
    require_logql_parser,
)
from tests.support.loki import LokiEntry, label_name, label_value, loki_entry
from tests.support.otlp import GrpcReceiver, LogView, otel_environment
from tests.support.servers import ServerFactory, serve
from tests.support.settings import make_settings
from tests.support.sse import open_stream
from tests.support.users import UserFactory

# As the platform's Deployment sets them (deploy/base): the namespace becomes an index label.
RESOURCE_ATTRIBUTES = "deployment.environment=test,k8s.pod.name=chat-api-abc,k8s.namespace.name=product-team"


@pytest.fixture
def otlp_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[GrpcReceiver]:
    """An OTLP receiver, and the environment that sends the app's telemetry to it as the platform
    does (logs only: no trace or metric store; the switches are honoured where the app reads them),
    with INFO records on. Set before the app is built: it reads the environment then."""
    with (
        GrpcReceiver() as receiver,
        otel_environment(
            monkeypatch,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_INSECURE="true",
            OTEL_TRACES_EXPORTER="none",
            OTEL_METRICS_EXPORTER="none",
            OTEL_BLRP_SCHEDULE_DELAY="100",
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_RESOURCE_ATTRIBUTES=RESOURCE_ATTRIBUTES,
        ),
    ):
        yield receiver


def dashboard_queries() -> list[Query]:
    return [*loki_queries(dashboard("loki")), *loki_queries(dashboard("prometheus"))]


async def test_every_field_the_loki_queries_read_is_one_the_service_writes(
    otlp_logs: GrpcReceiver, runtime_url: str, make_user: UserFactory
) -> None:
    require_logql_parser()
    app = create_app(make_settings(runtime_url))

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("boom")  # an unexpected error: an ERROR record and a 500

    async with serve(make_settings(runtime_url), app) as running:
        alice, bob = make_user("alice", running.url), make_user("bob", running.url)
        async with open_stream(running.url, bob.token) as stream:  # opened, then closed below
            await stream.opened.wait()
            assert stream.status == 200
            room = await alice.create_room("dashboards", members=[bob])
            assert (await alice.send(room["id"], "hello")).status_code == 201  # a send
            await stream.wait_for(1, "message.created")
        page = await alice.http.get(f"/v1/rooms/{room['id']}/messages")  # a history page
        assert page.status_code == 200, page.text
        assert (await alice.http.get(f"/v1/rooms/{uuid.uuid4()}")).status_code == 404
        async with httpx.AsyncClient(base_url=running.url) as client:
            assert (await client.get("/v1/boom")).status_code == 500
        await running.stop()  # flushes the log records

    entries = [loki_entry(r) for r in otlp_logs.log_records()]
    # A trace-id cell of the errors table holds the trace id of an error: that of the 500's ERROR record.
    (error,) = [e for e in entries if e.get("scope_name") == "chat_api.errors"]
    trace_id = error.get("trace_id")
    assert trace_id and len(trace_id) == 32, "the ERROR record has no trace id: the link would open nothing"
    queries = dashboard_queries()
    sent = {"__value.raw": trace_id, "namespace": "product-team"}
    parsed = dict(zip(queries, parse(q.sent(sent) for q in queries), strict=True))

    problems = {q.where: field_problems(parsed[q], entries) for q in queries}
    assert {where: p for where, p in problems.items() if p} == {}

    # The trace link opens every line of that request: its ERROR record and its access line.
    (link,) = [q for q in queries if q.kind == "link"]
    lines = matching(parsed[link], entries)
    assert {e.get("scope_name") for e in lines} == {"chat_api.errors", "chat_api.access"}, lines
    assert all(e.get("trace_id") == trace_id for e in lines)

    # The docs' trace-id queries for OTLP logs (the lines that select service_name and filter on
    # trace_id) find the same lines.
    docs = [
        q.template.replace(SAMPLE_TRACE_ID, trace_id)
        for q in docs_queries()
        if q.template.startswith("{service_name=")
        and "| trace_id=" in q.template
        and " or " not in q.template
    ]
    assert docs, "the docs show no LogQL that finds a request's lines by trace id"
    for text, result in zip(docs, parse(docs), strict=True):
        if not result.line_filters:
            assert matching(result, entries) == lines, text

    # The check is not blind: a field the service does not write, a value it never has, a
    # non-numeric unwrap, and a label filtered as an index label are each caught.
    catches = {
        "a field it does not write": (
            'sum by (http_route) (count_over_time({service_name="chat-api"} | http_status_code >= 500 [1m]))',
            "no record has the label http_status_code",
        ),
        "an attribute name as written, not as Loki stores it": (
            '{service_name="chat-api"} | scope_name="chat_api.access" | http.route="/v1/rooms"',
            "",  # not even LogQL: caught by the parse
        ),
        "a route template it never logs": (
            'sum(rate({service_name="chat-api"} | http_route="/v1/rooms/{roomId}/messages" [1m]))',
            "matches none of",
        ),
        "an unwrap of a text field": (
            'quantile_over_time(0.5, {service_name="chat-api"} | unwrap http_route [1m]) by (service_name)',
            "unwrap http_route: not a number",
        ),
        "a structured-metadata field in the stream selector": (
            'sum(rate({service_name="chat-api", scope_name="chat_api.access"} [1m]))',
            "no record has the index label scope_name",
        ),
        "a scope that does not exist": (
            'sum(rate({service_name="chat-api"} | scope_name="chat_api.stream" [1m]))',
            "matches none of",
        ),
        "a line the service never writes": (
            'sum(count_over_time({service_name="chat-api"} |= "database connection lost" [1m]))',
            "in no line",
        ),
    }
    results = parse(text for text, _ in catches.values())
    for (what, (text, expected)), result in zip(catches.items(), results, strict=True):
        if not expected:
            assert result.errors, f"{what}: {text} parsed"
            continue
        found = field_problems(result, entries)
        assert any(expected in p for p in found), (what, found)


async def test_an_accepted_stream_logs_that_it_opened(
    start_server: ServerFactory, make_user: UserFactory, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_server()
    alice, bob = make_user("alice", running.url), make_user("bob", running.url)
    room = await alice.create_room("private")
    caplog.set_level(logging.INFO, logger="chat_api.events")
    async with open_stream(running.url, bob.token, room_id=room["id"]) as refused:
        await refused.ended.wait()
    assert refused.status == 404  # not a member: refused, so not opened
    async with open_stream(running.url, bob.token) as accepted:
        await accepted.opened.wait()
        assert accepted.status == 200
    opened = [
        r for r in caplog.records if r.name == "chat_api.events" and r.getMessage() == "event stream opened"
    ]
    assert len(opened) == 1, opened
    (record,) = opened
    assert record.levelno == logging.INFO
    assert getattr(record, STREAM_OPENED) is True
    assert getattr(record, "user.id") == bob.name
    # In Loki: structured metadata chat_stream_opened="true", what the dashboard's streams panel reads.
    assert (label_name(STREAM_OPENED), label_value(True)) == ("chat_stream_opened", "true")


def test_loki_stores_attribute_names_and_values_as_the_dashboards_expect() -> None:
    record = LogView(
        body="POST /v1/rooms 201 28.9ms",
        severity_text="INFO",
        attributes={
            "http.route": "/v1/rooms",
            "http.response.status_code": 201,
            "duration_ms": 28.9,
            "chat.stream.opened": True,
            "1st": "a",
            "_x": "b",
            "nested": {"a.b": 1},
        },
        resource={"service.name": "chat-api", "k8s.namespace.name": "product-team", "service.version": "0.1"},
        scope="chat_api.access",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
    )
    entry = loki_entry(record)
    assert entry == LokiEntry(
        labels={"service_name": "chat-api", "k8s_namespace_name": "product-team"},
        structured_metadata={
            "http_route": "/v1/rooms",
            "http_response_status_code": "201",
            "duration_ms": "28.9",
            "chat_stream_opened": "true",
            "key_1st": "a",
            "key_x": "b",
            "nested_a_b": "1",
            "severity_text": "INFO",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": "00f067aa0ba902b7",
            "scope_name": "chat_api.access",
            "service_version": "0.1",
        },
        line="POST /v1/rooms 201 28.9ms",
    )
    assert label_value(12.0) == "12" and label_value(1e-05) == "0.00001"
