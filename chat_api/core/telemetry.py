"""OpenTelemetry: traces, logs and metrics by OTLP to the platform's collector, set up from the
standard OTEL_* variables. No endpoint (or OTEL_SDK_DISABLED=true): nothing is exported.

Export never sits on a request's path: spans and log records go to bounded in-memory queues that
background threads send in batches; a collector that is down or slow only drops telemetry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.metrics import Meter, MeterProvider, NoOpMeterProvider, Observation
from opentelemetry.trace import NoOpTracerProvider, Tracer

import chat_api
from chat_api.core.otel_env import SIGNALS, enabled, protocol, signal_enabled

if TYPE_CHECKING:
    from chat_api.core.telemetry_sdk import TelemetrySdk

log = logging.getLogger("chat_api.telemetry")

SHUTDOWN_SECONDS = 5.0  # flush what is queued on shutdown, but never wait longer than this


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
        self._sdk: TelemetrySdk | None = None

    @property
    def tracer(self) -> Tracer:
        return self.tracer_provider.get_tracer("chat_api", chat_api.__version__)

    @property
    def meter(self) -> Meter:
        return self.meter_provider.get_meter("chat_api", chat_api.__version__)

    def start(self) -> None:
        """Builds providers and exporters; never waits for the collector. The SDK is imported only
        here, when telemetry is on (it costs a good part of start-up otherwise)."""
        if not self.enabled or self._sdk is not None:
            return
        from chat_api.core import telemetry_sdk

        sdk = telemetry_sdk.start()
        self._sdk = sdk
        self.tracer_provider.target = sdk.tracer_provider
        self.meter_provider.target = sdk.meter_provider
        on = [signal.lower() for signal in SIGNALS if signal_enabled(signal)]
        off = [signal.lower() for signal in SIGNALS if not signal_enabled(signal)]
        log.info(
            "telemetry goes by OTLP: %s%s",
            ", ".join(f"{signal} ({protocol(signal.upper())})" for signal in on),
            f"; not {', '.join(off)}" if off else "",
        )

    def shutdown(self) -> None:
        """Flushes what is queued, bounded: a dead collector cannot hold up the exit."""
        sdk, self._sdk = self._sdk, None
        if sdk is None:
            return
        self.tracer_provider.target = NoOpTracerProvider()
        self.meter_provider.target = NoOpMeterProvider()
        if not sdk.shutdown(SHUTDOWN_SECONDS):
            log.warning(
                "telemetry export did not finish within %.0f s; the rest is dropped", SHUTDOWN_SECONDS
            )


class Metrics:
    """The service's own instruments (request durations come from FastAPI's telemetry)."""

    def __init__(
        self,
        meter: Meter,
        open_streams: Callable[[], int],
        delivered: Callable[[], int],
        connections: Callable[[], tuple[int, int]],
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
                    Observation(count, {"db.client.connection.state": state})
                    for count, state in zip(connections(), ("used", "idle"), strict=True)
                ]
            ],
            unit="{connection}",
            description="Connections of the database pool.",
        )
