"""The collector configuration docs/observability.md gives the platform team: it parses, every
component a pipeline names is defined, logs go to Loki's OTLP endpoint through `otlphttp`, and the
traces and metrics pipelines are there only as comments, matching the service's defaults (traces and
metrics off, deploy/base/config.env)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "observability.md"
LOKI_OTLP = "http://loki.monitoring:3100/otlp"


def platform_config() -> tuple[str, dict[str, Any]]:
    """The first YAML block after "Here is the config for this platform": its text and its parse."""
    text = DOC.read_text()
    after = text[text.index("Here is the config for this platform") :]
    block = re.search(r"```yaml\n(.*?)```", after, re.DOTALL)
    assert block is not None, "no yaml block after the platform config's introduction"
    parsed = yaml.safe_load(block.group(1))
    assert isinstance(parsed, dict)
    return block.group(1), parsed


def test_the_platform_collector_config_sends_logs_to_lokis_otlp_endpoint() -> None:
    _, config = platform_config()
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"logs"}, "only the logs pipeline is live on this platform"
    logs = pipelines["logs"]
    assert logs["receivers"] == ["otlp"]
    assert {"grpc", "http"} <= set(config["receivers"]["otlp"]["protocols"])
    (exporter,) = logs["exporters"]
    assert exporter.split("/")[0] == "otlphttp"
    assert config["exporters"][exporter]["endpoint"] == LOKI_OTLP
    for kind in ("receivers", "processors", "exporters"):
        for name in logs.get(kind, []):
            assert name in config[kind], f"the logs pipeline names {kind[:-1]} {name!r}, which is not defined"
    for name in config["service"].get("extensions", []):
        assert name in config["extensions"]


def test_the_traces_and_metrics_pipelines_are_shown_commented_out() -> None:
    text, _ = platform_config()
    commented = [line.strip() for line in text.splitlines() if line.strip().startswith("# ")]
    for pipeline in ("traces", "metrics"):
        assert any(line.startswith(f"# {pipeline}:") for line in commented), pipeline
    assert any("otlp/tempo" in line for line in commented)
    assert any("prometheusremotewrite" in line for line in commented)
