"""OpenTelemetry: traces, logs and metrics by OTLP to the platform's collector, set up from the
standard OTEL_* variables. No endpoint (or OTEL_SDK_DISABLED=true): nothing is exported.

Export never sits on a request's path: spans and log records go to bounded in-memory queues that
background threads send in batches; a collector that is down or slow only drops telemetry.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.metrics import Meter, MeterProvider, NoOpMeterProvider, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NoOpTracerProvider, Tracer

import chat_api

log = logging.getLogger("chat_api.telemetry")

SHUTDOWN_SECONDS = 5.0  # flush what is queued on shutdown, but never wait longer than this
DEFAULT_SERVICE_NAME = "chat-api"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _protocol(signal: str) -> str:
    protocol = _env(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not grpc or http/protobuf")
    return protocol


SIGNALS = ("TRACES", "LOGS", "METRICS")


def signal_enabled(signal: str) -> bool:
    """A signal is exported when an endpoint is set for it (or for all) and its
    OTEL_<SIGNAL>_EXPORTER is not `none`."""
    if (_env("OTEL_SDK_DISABLED") or "false").lower() == "true":
        return False
    if (_env(f"OTEL_{signal}_EXPORTER") or "otlp").lower() == "none":
        return False
    return bool(_env(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or _env("OTEL_EXPORTER_OTLP_ENDPOINT"))


def enabled() -> bool:
    return any(signal_enabled(signal) for signal in SIGNALS)


def resource() -> Resource:
    """service.name (OTEL_SERVICE_NAME, default chat-api), service.version, and whatever
    OTEL_RESOURCE_ATTRIBUTES adds (deployment.environment, k8s.* from the downward API)."""
    attributes: dict[str, Any] = {"service.version": chat_api.__version__}
    merged = Resource.create(attributes)
    if str(merged.attributes.get("service.name", "")).startswith("unknown_service"):
        merged = merged.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    return merged


def _exporter(signal: str) -> Any:
    # The exporters read endpoint, headers, timeout, TLS and compression from the OTEL_* variables.
    grpc = _protocol(signal) == "grpc"
    if signal == "TRACES":
        if grpc:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
        return OTLPSpanExporter()
    if signal == "LOGS":
        if grpc:
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        else:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter  # type: ignore[assignment]
        return OTLPLogExporter()
    if grpc:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # type: ignore[assignment]
    return OTLPMetricExporter()


class _DeferredTracerProvider(trace.TracerProvider):
    """Handed to FastAPI when the app is built; points at the real provider once the lifespan
    has started telemetry (nothing with threads or sockets exists before that)."""

    def __init__(self) -> None:
        self.target: trace.TracerProvider = NoOpTracerProvider()

    def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
        return self.target.get_tracer(*args, **kwargs)


class _DeferredMeterProvider(MeterProvider):
    def __init__(self) -> None:
        self.target: MeterProvider = NoOpMeterProvider()

    def get_meter(self, *args: Any, **kwargs: Any) -> Meter:
        return self.target.get_meter(*args, **kwargs)


class Telemetry:
    """The app's telemetry: decided from the environment when the app is built, started and shut
    down by the lifespan."""

    def __init__(self) -> None:
        self.enabled = enabled()
        self.tracer_provider = _DeferredTracerProvider()
        self.meter_provider = _DeferredMeterProvider()
        self._sdk: tuple[TracerProvider, SdkMeterProvider, LoggerProvider] | None = None
        self._log_handler: logging.Handler | None = None
        self._instrumented_asyncpg = False

    @property
    def tracer(self) -> Tracer:
        return self.tracer_provider.get_tracer("chat_api", chat_api.__version__)

    @property
    def meter(self) -> Meter:
        return self.meter_provider.get_meter("chat_api", chat_api.__version__)

    def start(self) -> None:
        """Builds providers and exporters; never waits for the collector."""
        if not self.enabled or self._sdk is not None:
            return
        res = resource()
        # Queue sizes and delays come from OTEL_BSP_* / OTEL_BLRP_* / OTEL_METRIC_EXPORT_*; the
        # queues are bounded, so a dead collector costs dropped telemetry, never memory or latency.
        tracer_provider = TracerProvider(resource=res, shutdown_on_exit=False)
        if signal_enabled("TRACES"):
            tracer_provider.add_span_processor(BatchSpanProcessor(_exporter("TRACES")))
        logger_provider = LoggerProvider(resource=res, shutdown_on_exit=False)
        if signal_enabled("LOGS"):
            logger_provider.add_log_record_processor(BatchLogRecordProcessor(_exporter("LOGS")))
        readers = [PeriodicExportingMetricReader(_exporter("METRICS"))] if signal_enabled("METRICS") else []
        meter_provider = SdkMeterProvider(resource=res, metric_readers=readers, shutdown_on_exit=False)
        self._sdk = (tracer_provider, meter_provider, logger_provider)
        self.tracer_provider.target = tracer_provider
        self.meter_provider.target = meter_provider
        # The records that go to stdout go by OTLP too, with the active span's trace and span ids.
        self._log_handler = LoggingHandler(level=logging.NOTSET, logger_provider=logger_provider)
        logging.getLogger().addHandler(self._log_handler)
        # Client spans for every statement: the text only, parameters are never captured.
        instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # type: ignore[no-untyped-call]
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=tracer_provider)
            self._instrumented_asyncpg = True
        log.info("telemetry goes by OTLP (%s)", _protocol("TRACES"))

    def shutdown(self) -> None:
        """Flushes what is queued, bounded: a dead collector cannot hold up the exit."""
        if self._sdk is None:
            return
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
        if self._instrumented_asyncpg:
            AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        providers, self._sdk = self._sdk, None
        self.tracer_provider.target = NoOpTracerProvider()
        self.meter_provider.target = NoOpMeterProvider()
        # Daemon threads joined against one deadline: an exporter stuck on a dead collector is
        # abandoned at the deadline and cannot keep the process alive after it.
        threads = [
            threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
            for provider in providers
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            log.warning(
                "telemetry export did not finish within %.0f s; the rest is dropped", SHUTDOWN_SECONDS
            )


class Metrics:
    """The service's own instruments (request durations come from FastAPI's telemetry)."""

    def __init__(
        self, meter: Meter, open_streams: Callable[[], int], delivered: Callable[[], int], pool: Any
    ) -> None:
        self.messages_sent = meter.create_counter(
            "chat.messages.sent", unit="{message}", description="Messages created (replays not counted)."
        )
        meter.create_observable_up_down_counter(
            "chat.streams.open",
            callbacks=[lambda _: [Observation(open_streams())]],
            unit="{stream}",
            description="Open /v1/events streams in this process.",
        )
        meter.create_observable_counter(
            "chat.events.delivered",
            callbacks=[lambda _: [Observation(delivered())]],
            unit="{event}",
            description="Event frames handed to streams by this process's hub.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[
                lambda _: [
                    Observation(pool.checkedout(), {"db.client.connection.state": "used"}),
                    Observation(pool.checkedin(), {"db.client.connection.state": "idle"}),
                ]
            ],
            unit="{connection}",
            description="Connections of the database pool.",
        )
