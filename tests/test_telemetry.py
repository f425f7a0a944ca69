"""OpenTelemetry: traces, logs and metrics reach a real OTLP receiver, with the platform's resource
attributes and no secrets; without an endpoint nothing is sent, and a dead collector costs nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import Request

import chat_api
from chat_api.app import create_app
from chat_api.core.telemetry import Telemetry
from tests.support.otlp import GrpcReceiver, HttpReceiver, LogView, SpanView, Store, otel_environment
from tests.support.ports import free_port
from tests.support.servers import RunningServer, ServerFactory, serve
from tests.support.settings import make_settings
from tests.support.sse import open_stream
from tests.support.users import UserFactory

MESSAGES_ROUTE = "/v1/rooms/{room_id}/messages"
STATEMENT_KEYS = ("db.statement", "db.query.text")
Configure = Callable[..., None]
RESOURCE_ATTRIBUTES = "deployment.environment=test,k8s.pod.name=chat-api-abc,k8s.namespace.name=product-team"


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """Clears ambient OTEL_* settings and offers `configure(endpoint)`, to be called before
    start_server (the app reads the environment when it is built). INFO logs are on, so access
    log records exist."""

    def configure(endpoint: str | None, **extra: str) -> None:
        if endpoint is not None:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        monkeypatch.setenv("OTEL_BLRP_SCHEDULE_DELAY", "100")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", RESOURCE_ATTRIBUTES)
        for name, value in extra.items():
            monkeypatch.setenv(name, value)

    with otel_environment(monkeypatch):
        yield configure


@pytest.fixture
def receiver() -> Iterator[GrpcReceiver]:
    with GrpcReceiver() as running:
        yield running


def app_telemetry(running: RunningServer) -> Telemetry:
    app: Any = running.server.config.app
    telemetry: Telemetry = app.state.telemetry
    return telemetry


def statement(span: SpanView) -> str | None:
    for key in STATEMENT_KEYS:
        if key in span.attributes:
            return str(span.attributes[key])
    return None


def server_spans(store: Store, name: str) -> list[SpanView]:
    return [s for s in store.spans() if s.kind == "SERVER" and s.name == name]


def assert_secret_nowhere(store: Store, secret: str) -> None:
    assert store.requests(), "nothing was received: the check would prove nothing"
    assert not store.contains(secret), f"{secret[:20]}... was exported: " + "\n".join(store.where(secret))


async def test_a_request_makes_a_server_span_with_database_children_and_no_values(
    otel_env: Configure, receiver: GrpcReceiver, start_server: ServerFactory, make_user: UserFactory
) -> None:
    otel_env(receiver.endpoint)
    running = await start_server()
    assert app_telemetry(running).enabled
    alice = make_user("alice", running.url)
    room = await alice.create_room("traced")
    marker = f"marker-{secrets.token_hex(8)}"
    r = await alice.send(room["id"], marker)
    assert r.status_code == 201, r.text
    await running.stop()

    (span,) = server_spans(receiver, f"POST {MESSAGES_ROUTE}")
    assert span.attributes["http.route"] == MESSAGES_ROUTE
    assert span.attributes["http.response.status_code"] == 201
    assert span.attributes["http.request.method"] == "POST"
    assert span.scope == "fastapi" and span.parent_span_id == ""
    children = [s for s in receiver.spans() if s.parent_span_id == span.span_id]
    db = [s for s in children if s.kind == "CLIENT" and statement(s)]
    assert db, f"no database spans under the request: {children}"
    assert all(s.trace_id == span.trace_id for s in db)
    texts = [str(statement(s)) for s in db]
    assert any("chat_send($1" in t for t in texts), texts  # the send statement, with placeholders
    assert all(s.attributes.get("db.system", s.attributes.get("db.system.name")) == "postgresql" for s in db)
    # Statement text only: the body, the token and any bound parameter never leave the process.
    assert all("db.statement.parameters" not in s.attributes for s in receiver.spans())
    assert_secret_nowhere(receiver, marker)
    assert_secret_nowhere(receiver, alice.token)
    assert_secret_nowhere(receiver, alice.token.rsplit(".", 1)[1])  # the signature alone


async def test_a_database_error_exports_no_parameter_values(
    otel_env: Configure, receiver: GrpcReceiver, database_url: str
) -> None:
    """An unexpected database error is logged (and exported) with its traceback: the statement's
    bound values (a message body, say) must not be in it (SQLAlchemy puts them in the exception's
    text unless the engine is made with hide_parameters=True)."""
    otel_env(receiver.endpoint)
    marker = f"marker-{secrets.token_hex(8)}"
    settings = make_settings(database_url)
    app = create_app(settings)

    @app.get("/v1/boom")
    async def boom(request: Request) -> None:
        async with request.state.database.connection() as conn:
            await conn.execute("SELECT length(CAST($1 AS text)) / 0", marker)

    async with serve(settings, app) as running, httpx.AsyncClient(base_url=running.url) as client:
        assert (await client.get("/v1/boom")).status_code == 500
        await running.stop()
    errors = [rec for rec in receiver.log_records() if rec.scope == "chat_api.errors"]
    assert errors and "division by zero" in str(errors[0].attributes), errors
    assert_secret_nowhere(receiver, marker)


async def test_an_incoming_traceparent_is_honoured(
    otel_env: Configure, receiver: GrpcReceiver, start_server: ServerFactory, make_user: UserFactory
) -> None:
    otel_env(receiver.endpoint)
    running = await start_server()
    alice = make_user("alice", running.url)
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    r = await alice.http.get("/v1/rooms", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert r.status_code == 200, r.text

    def span() -> list[SpanView]:
        return server_spans(receiver, "GET /v1/rooms")

    (got,) = await receiver.wait_until(span)
    assert got.trace_id == trace_id and got.parent_span_id == parent_id
    assert got.attributes["http.route"] == "/v1/rooms" and got.attributes["http.response.status_code"] == 200
    await running.stop()
    db = [s for s in receiver.spans() if s.parent_span_id == got.span_id and s.kind == "CLIENT"]
    assert db and all(s.trace_id == trace_id for s in db)


async def test_probes_and_docs_make_no_spans(
    otel_env: Configure, receiver: GrpcReceiver, start_server: ServerFactory, make_user: UserFactory
) -> None:
    otel_env(receiver.endpoint)
    running = await start_server(docs=True)
    alice = make_user("alice", running.url)
    await alice.http.get("/v1/rooms")  # the pool's first connection is made (and traced) here
    await receiver.wait_until(lambda: server_spans(receiver, "GET /v1/rooms"))
    before = {s.span_id for s in receiver.spans()}
    async with httpx.AsyncClient(base_url=running.url) as client:
        for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc", "/healthz", "/readyz"):
            r = await client.get(path)
            assert r.status_code == 200, (path, r.text)
    sentinel = await alice.http.get("/v1/rooms", headers={"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
    assert sentinel.status_code == 200
    await running.stop()
    new = [s for s in receiver.spans() if s.span_id not in before]
    assert new, "the sentinel request made no spans"
    stray = [
        (s.name, s.kind, s.attributes.get("url.path"), statement(s)) for s in new if s.trace_id != "ab" * 16
    ]
    assert not stray, f"spans outside the sentinel request's trace (probes/docs): {stray}"


async def test_log_records_arrive_with_the_request_trace_and_access_attributes(
    otel_env: Configure, receiver: GrpcReceiver, start_server: ServerFactory, make_user: UserFactory
) -> None:
    otel_env(receiver.endpoint)
    running = await start_server()
    alice = make_user("alice", running.url)
    room = await alice.create_room("logged")
    r = await alice.send(room["id"], "hello")
    assert r.status_code == 201
    await running.stop()

    (span,) = server_spans(receiver, f"POST {MESSAGES_ROUTE}")

    def access() -> list[LogView]:
        return [
            rec
            for rec in receiver.log_records()
            if rec.scope == "chat_api.access" and rec.attributes.get("http.route") == MESSAGES_ROUTE
        ]

    (record,) = await receiver.wait_until(access)
    assert record.trace_id == span.trace_id and record.span_id == span.span_id
    assert record.attributes["http.response.status_code"] == 201
    assert record.attributes["http.request.method"] == "POST"
    assert record.attributes["user.id"] == alice.name
    assert record.severity_text == "INFO" and "POST " + MESSAGES_ROUTE in str(record.body)
    # Records outside any request (startup, shutdown) come too, without a trace.
    assert any(rec.scope == "chat_api" and rec.trace_id == "" for rec in receiver.log_records())
    assert_secret_nowhere(receiver, alice.token)


@pytest.mark.parametrize("service_name", [None, "chat-api-canary"])
async def test_every_signal_carries_the_resource_attributes(
    otel_env: Configure,
    receiver: GrpcReceiver,
    start_server: ServerFactory,
    make_user: UserFactory,
    service_name: str | None,
) -> None:
    extra = {"OTEL_SERVICE_NAME": service_name} if service_name else {}
    otel_env(receiver.endpoint, **extra)
    running = await start_server()
    alice = make_user("alice", running.url)
    assert (await alice.http.get("/v1/rooms")).status_code == 200
    await running.stop()
    expected = {
        "service.name": service_name or "chat-api",
        "service.version": chat_api.__version__,
        "deployment.environment": "test",
        "k8s.pod.name": "chat-api-abc",
        "k8s.namespace.name": "product-team",
    }
    resources = {
        "spans": [s.resource for s in receiver.spans()],
        "logs": [rec.resource for rec in receiver.log_records()],
        "metrics": [p.resource for points in receiver.points().values() for p in points],
    }
    for signal, found in resources.items():
        assert found, f"no {signal} received"
        for resource in found:
            assert {k: resource.get(k) for k in expected} == expected, (signal, resource)


async def test_metrics_and_the_fan_out_span(
    otel_env: Configure, receiver: GrpcReceiver, start_server: ServerFactory, make_user: UserFactory
) -> None:
    otel_env(receiver.endpoint)
    running = await start_server()
    alice, bob = make_user("alice", running.url), make_user("bob", running.url)
    async with open_stream(running.url, bob.token) as stream:
        assert stream.status == 200
        started = time.time_ns()

        def streams_open() -> bool:
            points = receiver.metric_points("chat.streams.open")
            return any(p.value and p.value >= 1 and p.time_unix_nano >= started for p in points)

        await receiver.wait_until(streams_open)
        room = await alice.create_room("metered", members=[bob])
        key = uuid.uuid4().hex
        assert (await alice.send(room["id"], "one", key=key)).status_code == 201
        assert (await alice.send(room["id"], "one", key=key)).status_code == 200  # a replay
        assert (await alice.send(room["id"], "two")).status_code == 201
        assert (await alice.send(room["id"], "three")).status_code == 201
        await stream.wait_for(4, "room.created", "message.created")

        def delivered() -> bool:
            return any(p.value and p.value >= 4 for p in receiver.metric_points("chat.events.delivered"))

        await receiver.wait_until(delivered)
    await running.stop()

    sent = receiver.metric_points("chat.messages.sent")
    assert sent and sent[-1].kind == "sum", sent
    assert max(p.value or 0 for p in sent) == 3, "three messages created; the replay is not counted"
    assert all(p.resource.get("service.name") == "chat-api" for p in sent)

    durations = receiver.metric_points("http.server.request.duration")
    assert durations and all(p.kind == "histogram" for p in durations)
    by_route = {
        (p.attributes.get("http.route"), p.attributes.get("http.response.status_code")) for p in durations
    }
    assert (MESSAGES_ROUTE, 201) in by_route and (MESSAGES_ROUTE, 200) in by_route, by_route
    assert ("/v1/rooms", 201) in by_route, by_route
    posted = max(
        (p.count or 0)
        for p in durations
        if p.attributes.get("http.route") == MESSAGES_ROUTE
        and p.attributes.get("http.response.status_code") == 201
    )
    assert posted == 3

    connections = receiver.metric_points("db.client.connection.count")
    states = {p.attributes.get("db.client.connection.state") for p in connections}
    assert states == {"used", "idle"}, connections
    assert any((p.value or 0) >= 1 for p in connections)

    fan_outs = [s for s in receiver.spans() if s.name == "chat.events.fan_out"]
    assert fan_outs, "no fan-out span"
    assert sum(int(s.attributes.get("chat.deliveries", 0)) for s in fan_outs) >= 4
    assert all(s.kind == "INTERNAL" and s.scope == "chat_api" for s in fan_outs)


async def test_http_protobuf_is_spoken_when_asked_for(
    otel_env: Configure, start_server: ServerFactory, make_user: UserFactory
) -> None:
    with HttpReceiver() as receiver:
        otel_env(receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
        running = await start_server()
        alice = make_user("alice", running.url)
        assert (await alice.http.get("/v1/rooms")).status_code == 200
        await running.stop()
    (span,) = server_spans(receiver, "GET /v1/rooms")
    assert span.attributes["http.route"] == "/v1/rooms"
    assert span.resource["service.name"] == "chat-api"
    assert receiver.log_records() and receiver.metric_points("http.server.request.duration")


@pytest.mark.parametrize("how", ["traces endpoint only", "logs and metrics exporters none"])
async def test_signals_can_be_chosen_one_by_one(
    otel_env: Configure,
    monkeypatch: pytest.MonkeyPatch,
    receiver: GrpcReceiver,
    start_server: ServerFactory,
    make_user: UserFactory,
    how: str,
) -> None:
    if how == "traces endpoint only":
        otel_env(
            None, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.endpoint, OTEL_EXPORTER_OTLP_INSECURE="true"
        )
    else:
        otel_env(receiver.endpoint, OTEL_LOGS_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
    running = await start_server()
    assert app_telemetry(running).enabled
    alice = make_user("alice", running.url)
    assert (await alice.http.get("/v1/rooms")).status_code == 200
    await asyncio.sleep(0.4)  # more than a metric export interval
    await running.stop()
    assert server_spans(receiver, "GET /v1/rooms")
    assert receiver.logs == [] and receiver.metrics == []


@pytest.mark.parametrize("switched_off", [True, False], ids=["traces and metrics none", "all on (control)"])
async def test_a_logs_only_collector_gets_the_logs_and_no_exporter_complains(
    otel_env: Configure,
    start_server: ServerFactory,
    make_user: UserFactory,
    caplog: pytest.LogCaptureFixture,
    switched_off: bool,
) -> None:
    """The platform's collector has a logs pipeline only (docs/observability.md): with the other two
    signals switched off, the logs arrive and nothing in the server's log says an export failed. The
    control, every signal on against the same collector, shows the check would see the failures."""
    switches = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"} if switched_off else {}
    with GrpcReceiver(signals=("logs",)) as logs_only:
        otel_env(logs_only.endpoint, **switches)
        running = await start_server()
        alice = make_user("alice", running.url)
        room = await alice.create_room("logs only")
        assert (await alice.send(room["id"], "hello")).status_code == 201
        await asyncio.sleep(0.6)  # more than a log batch and a metric export interval
        await running.stop()
        routes = {record.attributes.get("http.route") for record in logs_only.log_records()}
    assert MESSAGES_ROUTE in routes, routes
    complaints = [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.name.startswith("opentelemetry") and record.levelno >= logging.WARNING
    ]
    if switched_off:
        assert complaints == []
    else:
        assert any("UNIMPLEMENTED" in line or "export" in line.lower() for line in complaints), complaints


@pytest.mark.parametrize("how", ["no endpoint", "OTEL_SDK_DISABLED"])
async def test_without_an_endpoint_or_when_disabled_nothing_is_sent(
    otel_env: Configure,
    monkeypatch: pytest.MonkeyPatch,
    receiver: GrpcReceiver,
    start_server: ServerFactory,
    make_user: UserFactory,
    how: str,
) -> None:
    if how == "no endpoint":
        otel_env(None)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "chat-api")
    else:
        otel_env(receiver.endpoint, OTEL_SDK_DISABLED="true")
    running = await start_server()
    telemetry = app_telemetry(running)
    assert telemetry.enabled is False
    alice = make_user("alice", running.url)
    room = await alice.create_room("dark")
    assert (await alice.send(room["id"], "hello")).status_code == 201
    assert (await alice.http.get("/v1/rooms")).status_code == 200
    await asyncio.sleep(0.5)  # several export intervals
    await running.stop()
    assert receiver.requests() == []
    assert telemetry._sdk is None


# -- a dead or slow collector --------------------------------------------------------------------


class SilentCollector:
    """Accepts TCP connections and never answers (a hung collector)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def __enter__(self) -> SilentCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.sock.close()
        for conn in self.accepted:
            conn.close()


async def _median_latency(running: RunningServer, make_user: UserFactory, name: str) -> float:
    user = make_user(name, running.url)
    await user.create_room("latency")  # something to list, and queued telemetry
    for _ in range(10):
        assert (await user.http.get("/v1/rooms")).status_code == 200
    samples = []
    for _ in range(60):
        started = time.perf_counter()
        r = await user.http.get("/v1/rooms")
        samples.append(time.perf_counter() - started)
        assert r.status_code == 200
    return statistics.median(samples)


async def test_a_dead_or_hung_collector_slows_nothing_and_shutdown_is_bounded(
    otel_env: Configure, start_server: ServerFactory, make_user: UserFactory
) -> None:
    medians: dict[str, float] = {}
    stops: dict[str, float] = {}
    otel_env(None)
    running = await start_server()
    assert not app_telemetry(running).enabled
    medians["disabled"] = await _median_latency(running, make_user, "off")
    await running.stop()

    dead_port = free_port()  # nothing listens there
    with SilentCollector() as silent, GrpcReceiver() as live:
        collectors = (
            ("live", live.endpoint),  # for comparison: what tracing itself costs
            ("dead", f"http://127.0.0.1:{dead_port}"),
            ("hung", silent.endpoint),
        )
        for label, endpoint in collectors:
            otel_env(endpoint)
            running = await start_server()
            assert app_telemetry(running).enabled
            medians[label] = await _median_latency(running, make_user, label)
            started = time.perf_counter()
            await running.stop()
            stops[label] = time.perf_counter() - started
        assert silent.accepted, "the exporters never reached the hung collector"
        assert server_spans(live, "GET /v1/rooms"), "the live collector got no spans"

    report = ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in medians.items())
    print(f"\nmedian GET /v1/rooms: {report}; stop: " + ", ".join(f"{k} {v:.2f} s" for k, v in stops.items()))
    for label in ("dead", "hung"):
        assert medians[label] / medians["disabled"] < 3, (label, medians)
        assert stops[label] < 8, (label, stops)


def test_json_log_lines_carry_what_the_generic_formatter_wrote() -> None:
    """JsonLines builds its lines itself (cheaper on the access log's path): the same fields, in
    the same order, as python-json-logger's generic path, with and without a trace."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
    from pythonjsonlogger.orjson import OrjsonFormatter

    from chat_api.core.logging import JsonLines

    fast = JsonLines()

    def generic(record: logging.LogRecord) -> str:
        return OrjsonFormatter.format(fast, record)

    logger = logging.getLogger("chat_api.test")

    def record(msg: object, *args: object, exc_info: Any = None, **kwargs: Any) -> logging.LogRecord:
        made = logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args, exc_info, **kwargs)
        made.created = 1_764_837_000.25  # a fixed instant, with a fraction of a second
        return made

    try:
        raise ValueError("boom")
    except ValueError:
        failure = sys.exc_info()
    extra = {"http.route": "/v1/rooms/{room_id}", "http.response.status_code": 201, "user.id": None}
    records = [
        record("%s %s %d %.1fms", "GET", "/v1/rooms", 200, 1.25, extra=extra),
        record("plain"),
        record("failed", exc_info=failure),
        record("with a stack", sinfo="Stack (most recent call last):\n  here"),
        record("a uuid %s", uuid.UUID(int=1), extra={"id": uuid.UUID(int=2), "raw": b"bytes"}),
    ]
    span = NonRecordingSpan(SpanContext(0x1234, 0x56, is_remote=False, trace_flags=TraceFlags(1)))
    for made in records:
        assert fast.format(made) == generic(made)
        with trace.use_span(span):
            line = fast.format(made)
            assert line == generic(made)
            assert '"trace_id":"00000000000000000000000000001234","span_id":"0000000000000056"' in line
