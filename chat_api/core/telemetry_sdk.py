"""The OpenTelemetry SDK side of chat_api.core.telemetry: providers, OTLP exporters, the logging
bridge and the asyncpg instrumentation. Imported only when telemetry is on."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import chat_api
from chat_api.core.otel_env import DEFAULT_SERVICE_NAME, protocol, signal_enabled


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
    grpc = protocol(signal) == "grpc"
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


@dataclass
class TelemetrySdk:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    logger_provider: LoggerProvider
    log_handler: logging.Handler
    instrumented_asyncpg: bool

    def shutdown(self, within_seconds: float) -> bool:
        """Flushes and stops everything; False if the exporters did not finish in time. Daemon
        threads joined against one deadline: an exporter stuck on a dead collector is abandoned at
        the deadline and cannot keep the process alive after it."""
        logging.getLogger().removeHandler(self.log_handler)
        if self.instrumented_asyncpg:
            AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        providers = (self.tracer_provider, self.meter_provider, self.logger_provider)
        threads = [threading.Thread(target=p.shutdown, name="otel-shutdown", daemon=True) for p in providers]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + within_seconds
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)


def start() -> TelemetrySdk:
    res = resource()
    # Queue sizes and delays come from OTEL_BSP_* / OTEL_BLRP_* / OTEL_METRIC_EXPORT_*; the queues
    # are bounded, so a dead collector costs dropped telemetry, never memory or latency.
    tracer_provider = TracerProvider(resource=res, shutdown_on_exit=False)
    if signal_enabled("TRACES"):
        tracer_provider.add_span_processor(BatchSpanProcessor(_exporter("TRACES")))
    logger_provider = LoggerProvider(resource=res, shutdown_on_exit=False)
    if signal_enabled("LOGS"):
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(_exporter("LOGS")))
    readers = [PeriodicExportingMetricReader(_exporter("METRICS"))] if signal_enabled("METRICS") else []
    meter_provider = MeterProvider(resource=res, metric_readers=readers, shutdown_on_exit=False)
    # The records that go to stdout go by OTLP too, with the active span's trace and span ids.
    handler = LoggingHandler(level=logging.NOTSET, logger_provider=logger_provider)
    logging.getLogger().addHandler(handler)
    # Client spans for every statement: the text only, parameters are never captured.
    instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # type: ignore[no-untyped-call]
    instrumented = not instrumentor.is_instrumented_by_opentelemetry
    if instrumented:
        instrumentor.instrument(tracer_provider=tracer_provider)
    return TelemetrySdk(tracer_provider, meter_provider, logger_provider, handler, instrumented)
