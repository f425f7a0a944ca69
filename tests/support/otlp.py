"""OTLP receivers for tests, in this process: gRPC (the app's default) and http/protobuf.

Both keep every Export*ServiceRequest they receive (thread-safe) and flatten them for assertions:
spans and log records with their resource attributes, metric data points by metric name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import http.server
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

T = TypeVar("T")


@contextlib.contextmanager
def otel_environment(monkeypatch: Any, **values: str) -> Iterator[None]:
    """The app's OTEL_* environment for a test: every ambient OTEL_* variable cleared, `values` set,
    and INFO records on (so access-log records exist) until the block ends. Enter it before the app
    is built: the app reads the environment then. `monkeypatch` is pytest's fixture."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(level)


SPAN_KINDS = {
    PbSpan.SPAN_KIND_INTERNAL: "INTERNAL",
    PbSpan.SPAN_KIND_SERVER: "SERVER",
    PbSpan.SPAN_KIND_CLIENT: "CLIENT",
    PbSpan.SPAN_KIND_PRODUCER: "PRODUCER",
    PbSpan.SPAN_KIND_CONSUMER: "CONSUMER",
}


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


@dataclass(frozen=True)
class SpanView:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    status_code: int  # 0 unset, 1 ok, 2 error


@dataclass(frozen=True)
class LogView:
    body: Any
    severity_text: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str  # the logger's name
    trace_id: str  # "" when emitted outside a span
    span_id: str


@dataclass(frozen=True)
class PointView:
    metric: str
    kind: str  # sum, gauge, histogram, exponential_histogram, summary
    attributes: dict[str, Any]
    resource: dict[str, Any]
    value: float | None  # sums and gauges
    count: int | None = None  # histograms
    sum: float | None = None
    time_unix_nano: int = 0


@dataclass
class Store:
    """What a receiver got; shared by its handler threads."""

    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    logs: list[logs_service_pb2.ExportLogsServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: Message) -> None:
        with self._lock:
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                self.traces.append(request)
            elif isinstance(request, logs_service_pb2.ExportLogsServiceRequest):
                self.logs.append(request)
            elif isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
                self.metrics.append(request)
            else:  # pragma: no cover
                raise TypeError(type(request))

    def requests(self) -> list[Message]:
        with self._lock:
            return [*self.traces, *self.logs, *self.metrics]

    def clear(self) -> None:
        with self._lock:
            self.traces.clear()
            self.logs.clear()
            self.metrics.clear()

    # -- flattened views -------------------------------------------------------------------------

    def spans(self) -> list[SpanView]:
        with self._lock:
            requests = list(self.traces)
        return [
            SpanView(
                name=span.name,
                kind=SPAN_KINDS.get(span.kind, str(span.kind)),
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                attributes=attributes(span.attributes),
                resource=attributes(rs.resource.attributes),
                scope=ss.scope.name,
                status_code=span.status.code,
            )
            for request in requests
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def log_records(self) -> list[LogView]:
        with self._lock:
            requests = list(self.logs)
        return [
            LogView(
                body=any_value(record.body),
                severity_text=record.severity_text,
                attributes=attributes(record.attributes),
                resource=attributes(rl.resource.attributes),
                scope=sl.scope.name,
                trace_id=record.trace_id.hex(),
                span_id=record.span_id.hex(),
            )
            for request in requests
            for rl in request.resource_logs
            for sl in rl.scope_logs
            for record in sl.log_records
        ]

    def points(self, name: str | None = None) -> dict[str, list[PointView]]:
        """Data points by metric name (only `name`'s if given), in the order received."""
        with self._lock:
            requests = list(self.metrics)
        found: dict[str, list[PointView]] = {}
        for request in requests:
            for rm in request.resource_metrics:
                resource = attributes(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if name is not None and metric.name != name:
                            continue
                        kind = metric.WhichOneof("data")
                        if kind is None:
                            continue
                        for point in getattr(metric, kind).data_points:
                            found.setdefault(metric.name, []).append(
                                _point(metric.name, kind, point, resource)
                            )
        return found

    def metric_points(self, name: str) -> list[PointView]:
        return self.points(name).get(name, [])

    def contains(self, text: str) -> bool:
        """True if `text` occurs anywhere in anything received (attributes, bodies, resources,
        names, events: the raw protobuf bytes are searched)."""
        needle = text.encode()
        return any(needle in request.SerializeToString() for request in self.requests())

    def where(self, text: str) -> list[str]:
        """Where `text` occurs: one line per span / log record / data point that holds it."""
        found = [f"span {s.name!r}: {s}" for s in self.spans() if text in repr(s)]
        with self._lock:
            requests = list(self.traces)
        found += [
            f"span {span.name!r} event {event.name!r}: {attributes(event.attributes)}"
            for request in requests
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
            for event in span.events
            if text in repr(attributes(event.attributes))
        ]
        found += [f"log record of {r.scope!r}: {r}" for r in self.log_records() if text in repr(r)]
        found += [
            f"point of {p.metric!r}: {p}" for ps in self.points().values() for p in ps if text in repr(p)
        ]
        if not found and self.contains(text):
            found.append("somewhere in the raw requests")
        return found

    # -- waiting ---------------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], T], timeout: float = 10.0) -> T:  # noqa: ASYNC109
        """Polls `predicate` (without blocking the event loop the app runs on) until it returns
        something truthy, and returns that; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"not received within {timeout} s: {getattr(predicate, '__name__', '')}")
            await asyncio.sleep(0.05)


def _point(name: str, kind: str, point: Any, resource: dict[str, Any]) -> PointView:
    attrs = attributes(point.attributes)
    if kind in ("sum", "gauge"):
        value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
        return PointView(name, kind, attrs, resource, value, time_unix_nano=point.time_unix_nano)
    return PointView(
        name,
        kind,
        attrs,
        resource,
        None,
        count=point.count,
        sum=point.sum if point.HasField("sum") or kind == "summary" else None,
        time_unix_nano=point.time_unix_nano,
    )


# -- gRPC ----------------------------------------------------------------------------------------


def _servicer(base: type, response: type, store: Store) -> Any:
    """An OTLP gRPC service (traces, logs or metrics) whose Export keeps the request in `store`."""

    class Servicer(base):  # type: ignore[misc]
        def Export(self, request: Any, context: Any) -> Any:
            store.add(request)
            return response()

    return Servicer()


class GrpcReceiver(Store):
    """An OTLP/gRPC collector on 127.0.0.1 and a free port: `endpoint` is what
    OTEL_EXPORTER_OTLP_ENDPOINT should say (with OTEL_EXPORTER_OTLP_INSECURE=true). It serves the
    `signals` given, like a collector with a pipeline for each; an export of any other signal is
    answered UNIMPLEMENTED, as a collector without that pipeline answers it."""

    def __init__(self, signals: tuple[str, ...] = ("traces", "logs", "metrics")) -> None:
        super().__init__()
        self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="otlp-grpc-receiver")
        self._server = grpc.server(self._pool)
        if "traces" in signals:
            traces = _servicer(
                trace_service_pb2_grpc.TraceServiceServicer,
                trace_service_pb2.ExportTraceServiceResponse,
                self,
            )
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(traces, self._server)  # type: ignore[no-untyped-call]
        if "logs" in signals:
            logs = _servicer(
                logs_service_pb2_grpc.LogsServiceServicer, logs_service_pb2.ExportLogsServiceResponse, self
            )
            logs_service_pb2_grpc.add_LogsServiceServicer_to_server(logs, self._server)  # type: ignore[no-untyped-call]
        if "metrics" in signals:
            metrics = _servicer(
                metrics_service_pb2_grpc.MetricsServiceServicer,
                metrics_service_pb2.ExportMetricsServiceResponse,
                self,
            )
            metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(metrics, self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> GrpcReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=0).wait(5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> GrpcReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- http/protobuf -------------------------------------------------------------------------------

_HTTP_PATHS: dict[str, tuple[type[Message], type[Message]]] = {
    "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse),
    "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse),
    "/v1/metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
}


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        types = _HTTP_PATHS.get(self.path.split("?", 1)[0])
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if types is None:
            self._answer(404, b"")
            return
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        request_type, response_type = types
        request = request_type()
        request.ParseFromString(body)
        self.server.store.add(request)
        self._answer(200, response_type().SerializeToString())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    store: Store


class HttpReceiver(Store):
    """An OTLP http/protobuf collector (POST /v1/traces, /v1/logs, /v1/metrics) on 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__()
        self._server = _HttpServer(("127.0.0.1", 0), _HttpHandler)
        self._server.store = self
        self.port = int(self._server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> HttpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> HttpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
