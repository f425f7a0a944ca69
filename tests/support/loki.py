"""What Loki 3 stores for an OTLP log record (native OTLP ingestion, its default `otlp_config`), so a
test can check a LogQL query against the service's real records without running Loki.

The mapping, as Loki's distributor does it (pkg/loghttp/push/otlp.go):
- resource attributes on Loki's default list become index labels (stream labels); every other
  resource attribute becomes structured metadata;
- the scope name becomes structured metadata `scope_name` (the Python logger here), its version
  `scope_version`;
- every log-record attribute becomes structured metadata; so do `severity_text`, `trace_id` and
  `span_id` (lower-case hex) when the record has them (and `severity_number`, `observed_timestamp`,
  `flags`, which LogView does not carry and no query here uses);
- attribute names are normalised like Prometheus label names: every character other than a letter,
  a digit or `_` becomes `_` (`http.route` → `http_route`), a leading digit gets `key_` in front and a
  single leading `_` gets `key`; nested maps are flattened with `_` between the keys;
- every value is stored as a string (pdata's AsString: `true`, `201`, `12.5`, JSON for lists);
- the line is the record's body, as a string.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tests.support.otlp import LogView

# Loki 3's default `otlp_config.resource_attributes` promoted to index labels ("blessed" attributes;
# deployment.environment.name was added beside deployment.environment in later 3.x releases).
INDEX_LABEL_ATTRIBUTES = frozenset(
    {
        "service.name",
        "service.namespace",
        "service.instance.id",
        "deployment.environment",
        "deployment.environment.name",
        "cloud.region",
        "cloud.availability_zone",
        "k8s.cluster.name",
        "k8s.namespace.name",
        "k8s.pod.name",
        "k8s.container.name",
        "container.name",
        "k8s.replicaset.name",
        "k8s.deployment.name",
        "k8s.statefulset.name",
        "k8s.daemonset.name",
        "k8s.cronjob.name",
        "k8s.job.name",
    }
)
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def label_name(attribute: str) -> str:
    """An OTLP attribute name as Loki stores it (otlptranslator.NormalizeLabel)."""
    if not attribute:
        return attribute
    name = _INVALID.sub("_", attribute)
    if name[0].isdigit():
        return "key_" + name
    if name.startswith("_") and not name.startswith("__"):
        return "key" + name
    return name


def label_value(value: Any) -> str:
    """An attribute value as Loki stores it (pdata Value.AsString)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        # Go's strconv.FormatFloat(v, 'f', -1, 64): the shortest digits, no exponent, 12.0 is "12".
        return str(int(value)) if value.is_integer() else format(Decimal(repr(value)), "f")
    return "" if value is None else str(value)


def _flatten(name: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in _flatten(f"{name}_{key}", item)]
    return [(label_name(name), label_value(value))]


@dataclass(frozen=True)
class LokiEntry:
    """One log entry as Loki holds it: its stream's index labels, its structured metadata, its line."""

    labels: dict[str, str]
    structured_metadata: dict[str, str]
    line: str

    def get(self, name: str) -> str | None:
        """A label as a LogQL label filter sees it, structured metadata or index label."""
        if name in self.structured_metadata:
            return self.structured_metadata[name]
        return self.labels.get(name)


def loki_entry(record: LogView) -> LokiEntry:
    """The entry Loki's OTLP endpoint makes of one received log record (see the module docstring)."""
    labels: dict[str, str] = {}
    metadata: dict[str, str] = {}
    for key, value in record.resource.items():
        target = labels if key in INDEX_LABEL_ATTRIBUTES else metadata
        target.update(_flatten(key, value))
    for key, value in record.attributes.items():
        metadata.update(_flatten(key, value))
    if record.severity_text:
        metadata["severity_text"] = record.severity_text
    if record.trace_id and record.trace_id != "0" * 32:
        metadata["trace_id"] = record.trace_id
    if record.span_id and record.span_id != "0" * 16:
        metadata["span_id"] = record.span_id
    if record.scope:
        metadata["scope_name"] = record.scope
    return LokiEntry(labels=labels, structured_metadata=metadata, line=label_value(record.body))
