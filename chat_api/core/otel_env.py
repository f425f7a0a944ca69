"""What the standard OTEL_* variables ask for: which signals are exported, by which protocol. Read by
core/telemetry.py (the app's side) and core/telemetry_sdk.py (the SDK's set-up), neither of which
imports the other's decisions."""

from __future__ import annotations

import os

DEFAULT_SERVICE_NAME = "chat-api"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def protocol(signal: str) -> str:
    protocol = _env(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not grpc or http/protobuf")
    return protocol


SIGNALS = ("TRACES", "LOGS", "METRICS")
EXPORTERS = ("otlp", "none")


def exporter(signal: str) -> str:
    """OTEL_<SIGNAL>_EXPORTER: `otlp` (the default) or `none`, which switches that signal off alone
    (a collector with no pipeline for it would refuse every batch)."""
    value = (_env(f"OTEL_{signal}_EXPORTER") or "otlp").lower()
    if value not in EXPORTERS:
        raise ValueError(f"OTEL_{signal}_EXPORTER: {value!r} is not otlp or none")
    return value


def check() -> None:
    """Raises ValueError naming the variable when an OTEL_* choice is not one this service can make."""
    for signal in SIGNALS:
        exporter(signal)
        protocol(signal)


def signal_enabled(signal: str) -> bool:
    """A signal is exported when an endpoint is set for it (or for all) and its
    OTEL_<SIGNAL>_EXPORTER is not `none`."""
    if (_env("OTEL_SDK_DISABLED") or "false").lower() == "true":
        return False
    if exporter(signal) == "none":
        return False
    return bool(_env(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT") or _env("OTEL_EXPORTER_OTLP_ENDPOINT"))


def enabled() -> bool:
    return any(signal_enabled(signal) for signal in SIGNALS)
