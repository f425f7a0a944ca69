"""The Grafana dashboards (deploy/observability): valid JSON whose panels use only the dashboard's own
data source variables (Loki alone for the Loki dashboard), LogQL that Grafana's own grammar parses
(the docs' too), and how they deploy: two sidecar ConfigMaps in namespace monitoring, synced by an
Application per cluster under a project that allows ConfigMaps there and nothing else.

Which fields the LogQL reads, and that the service writes them, is tests/test_loki_dashboard.py."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.argocd_rules import (
    CLUSTERS,
    DASHBOARDS_NAMESPACE,
    DASHBOARDS_PROJECT,
    DASHBOARDS_SOURCE,
    REPO_URL,
    dashboards_application,
    dashboards_project_problems,
)
from tests.deploy.manifests import (
    DEPLOY,
    OVERLAYS,
    REPO,
    WAVE,
    CrdSchemas,
    Obj,
    annotations_of,
    kustomize,
    one,
)
from tests.support.logql import (
    DASHBOARDS,
    Parsed,
    Query,
    UnknownVariable,
    dashboard,
    docs_queries,
    interpolate,
    loki_queries,
    panels,
    parse,
    require_logql_parser,
    syntax_problems,
)

Board = dict[str, Any]
KUBERNETES_VERSION = "1.34.0"  # as in test_schemas.py
# The data source types each dashboard may use: this platform has Loki and no Prometheus.
ALLOWED_TYPES = {"loki": {"loki"}, "prometheus": {"prometheus", "loki"}}
CONFIGMAPS = {"loki": "chat-api-grafana-dashboard-loki", "prometheus": "chat-api-grafana-dashboard"}
# A ConfigMap holds at most 1 MiB; `kubectl apply` (client-side) keeps a copy in an annotation of at
# most 256 KiB. Far below both, the dashboards need no server-side apply.
MAX_DASHBOARD_BYTES = 200_000


# ---- the dashboards themselves ------------------------------------------------------------------------


def datasource_variables(board: Board) -> dict[str, str]:
    """The dashboard's data source variables: name -> plugin type."""
    return {
        v["name"]: str(v["query"])
        for v in board.get("templating", {}).get("list", [])
        if v["type"] == "datasource"
    }


def datasource_problems(board: Board, allowed: set[str]) -> list[str]:
    """Every panel, target and query variable names its data source as {type, uid: "${variable}"},
    the variable being one of the dashboard's own data source variables of that type; every such type
    is allowed here. Annotations may use only Grafana's built-in source."""
    problems = []
    variables = datasource_variables(board)
    if bad := {name: kind for name, kind in variables.items() if kind not in allowed}:
        problems.append(f"data source variables of types not on this platform: {bad}")

    def check(where: str, source: Any) -> None:
        if not isinstance(source, dict):
            problems.append(f"{where}: no data source (or a bare name: {source!r})")
            return
        uid, kind = str(source.get("uid", "")), source.get("type")
        name = uid[2:-1] if uid.startswith("${") and uid.endswith("}") else None
        if name not in variables:
            problems.append(f"{where}: data source uid {uid!r} is not one of ${{{'}, ${'.join(variables)}}}")
        elif variables[name] != kind:
            problems.append(f"{where}: type {kind!r} but ${{{name}}} is a {variables[name]} variable")
        if kind not in allowed:
            problems.append(f"{where}: data source type {kind!r} (allowed: {sorted(allowed)})")

    for variable in board.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            check(f"variable {variable['name']}", variable.get("datasource"))
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        check(f"panel {panel['title']!r}", panel.get("datasource"))
        for target in panel.get("targets", []):
            check(f"panel {panel['title']!r} target {target.get('refId')}", target.get("datasource"))
    for annotation in board.get("annotations", {}).get("list", []):
        if annotation.get("datasource") != {"type": "grafana", "uid": "-- Grafana --"}:
            problems.append(f"annotation {annotation.get('name')!r}: not Grafana's built-in source")
    return problems


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_each_dashboard_is_valid_json_with_unique_ids(name: str) -> None:
    board = json.loads(DASHBOARDS[name].read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), ids
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
    assert len(DASHBOARDS[name].read_bytes()) < MAX_DASHBOARD_BYTES


def test_the_dashboards_are_two_different_dashboards() -> None:
    loki, prometheus = dashboard("loki"), dashboard("prometheus")
    assert loki["uid"] != prometheus["uid"] and loki["title"] != prometheus["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_uses_a_datasource_variable_of_the_dashboard(name: str) -> None:
    assert datasource_problems(dashboard(name), ALLOWED_TYPES[name]) == []


def test_the_loki_dashboard_uses_loki_alone() -> None:
    board = dashboard("loki")
    assert set(datasource_variables(board).values()) == {"loki"}


def _set_panel_source(index: int, source: Any) -> Callable[[Board], None]:
    def mutate(board: Board) -> None:
        panel = board["panels"][index]
        panel["datasource"] = source
        for target in panel.get("targets", []):
            target["datasource"] = source

    return mutate


@pytest.mark.parametrize(
    ("name", "mutate", "expected"),
    [
        ("loki", _set_panel_source(0, {"type": "prometheus", "uid": "${datasource}"}), "allowed"),
        ("loki", _set_panel_source(1, {"type": "loki", "uid": "loki"}), "is not one of"),
        ("loki", _set_panel_source(2, "Loki"), "bare name"),
        ("loki", lambda b: b["panels"][3].pop("datasource"), "no data source"),
        (
            "loki",
            lambda b: b["templating"]["list"].append(
                {"name": "prom", "type": "datasource", "query": "prometheus"}
            ),
            "not on this platform",
        ),
        ("prometheus", _set_panel_source(0, {"type": "loki", "uid": "${datasource}"}), "is a prometheus"),
        ("prometheus", _set_panel_source(0, {"type": "tempo", "uid": "${datasource}"}), "allowed"),
    ],
    ids=["prometheus-panel", "fixed-uid", "bare-name", "none", "prometheus-variable", "wrong-type", "tempo"],
)
def test_the_datasource_check_catches(name: str, mutate: Callable[[Board], None], expected: str) -> None:
    board = copy.deepcopy(dashboard(name))
    mutate(board)
    problems = datasource_problems(board, ALLOWED_TYPES[name])
    assert any(expected in p for p in problems), problems


# ---- LogQL: Grafana's grammar --------------------------------------------------------------------------


def all_queries() -> list[Query]:
    return [*loki_queries(dashboard("loki")), *loki_queries(dashboard("prometheus")), *docs_queries()]


@pytest.fixture(scope="module")
def parsed() -> dict[Query, Parsed]:
    require_logql_parser()
    queries = all_queries()
    return dict(zip(queries, parse(q.sent() for q in queries), strict=True))


def test_the_queries_are_found() -> None:
    loki = loki_queries(dashboard("loki"))
    # Twelve panel queries, the namespace variable's selector and the trace-id link.
    assert len(loki) == 14, [q.where for q in loki]
    assert [q.kind for q in loki].count("link") == 1
    assert [q.where for q in loki_queries(dashboard("prometheus"))] == ["panel 'chat-api errors' A"]
    docs = [q.template for q in docs_queries()]
    assert any("| trace_id=" in q and "service_name=" in q for q in docs), docs


def test_every_logql_query_parses(parsed: dict[Query, Parsed]) -> None:
    problems = {f"{q.where}: {q.sent()}": syntax_problems(p) for q, p in parsed.items()}
    assert {k: v for k, v in problems.items() if v} == {}


def test_every_metric_query_of_the_loki_dashboard_is_grouped(parsed: dict[Query, Parsed]) -> None:
    """Every structured-metadata label (trace_id, user_id, ...) would otherwise make a series of its
    own: a range aggregation needs a vector aggregation around it or a `by (...)`."""
    for query in loki_queries(dashboard("loki")):
        result = parsed[query]
        if "RangeAggregationExpr" in result.tree:
            assert result.groupings or result.tree.startswith(
                "LogQL(Expr(MetricExpr(VectorAggregationExpr"
            ), query.where


def test_latency_leaves_out_the_event_stream(parsed: dict[Query, Parsed]) -> None:
    latency = [q for q in loki_queries(dashboard("loki")) if "duration_ms" in parsed[q].unwraps]
    assert len(latency) == 3
    for query in latency:
        assert {"name": "http_route", "op": "!=", "value": "/v1/events", "numeric": False} in parsed[
            query
        ].filters, query.where


def test_the_trace_link_opens_the_request_lines_in_explore(parsed: dict[Query, Parsed]) -> None:
    (link,) = [q for q in loki_queries(dashboard("loki")) if q.kind == "link"]
    assert link.sent() == '{service_name="chat-api"} | trace_id="4bf92f3577b34da6a3ce929d0e0e4736"'
    assert parsed[link].errors == []


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ('sum by (http_route) (rate({service_name="$service"} | scope_name="x" [$__auto])', "syntax error"),
        ('{service_name="$service" | severity_text="ERROR"', "syntax error"),
        ('quantile_over_time(0.5, {service_name="$service"} | unwrap [$__auto]) by (service_name)', "syntax"),
        ('sum(rate({service_name="$service"} | http_route="/v1/rooms" [$__auto))', "syntax error"),
        ('sum by http_route (rate({service_name="$service"} [$__auto]))', "syntax error"),
        ('{service_name="$service"} | http_response_status_code >= "500"', "syntax error"),
        ('scope_name="chat_api.access"', "syntax error"),
    ],
    ids=[
        "unbalanced",
        "unclosed-selector",
        "unwrap-nothing",
        "unclosed-range",
        "by-without-parens",
        "quoted-number",
        "no-selector",
    ],
)
def test_the_parse_check_catches_a_broken_query(broken: str, expected: str) -> None:
    require_logql_parser()
    (result,) = parse([interpolate(broken)])
    problems = syntax_problems(result)
    assert any(expected in p for p in problems), (problems, result.tree)


def test_an_unknown_grafana_variable_is_caught() -> None:
    with pytest.raises(UnknownVariable, match="servce"):
        interpolate('{service_name="$servce"}')
    assert interpolate('{a="${service}"} [$__auto]') == '{a="chat-api"} [1m]'


# ---- deployment: ConfigMaps for the sidecar, an Application per cluster -------------------------------


@pytest.fixture(scope="module")
def dashboard_objects() -> list[Obj]:
    return kustomize(DEPLOY / "observability")


def test_both_dashboards_render_as_sidecar_configmaps(dashboard_objects: list[Obj]) -> None:
    assert sorted((o["kind"], o["metadata"]["name"]) for o in dashboard_objects) == sorted(
        ("ConfigMap", name) for name in CONFIGMAPS.values()
    )
    for name, configmap_name in CONFIGMAPS.items():
        configmap = one(dashboard_objects, "ConfigMap", configmap_name)
        assert configmap["metadata"]["namespace"] == DASHBOARDS_NAMESPACE
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert annotations_of(configmap)["grafana_folder"] == "chat-api"
        (content,) = configmap["data"].values()
        assert json.loads(content) == dashboard(name)  # the file, unchanged
        kubernetes_validate.validate(copy.deepcopy(configmap), KUBERNETES_VERSION, strict=True)


def test_no_overlay_renders_the_dashboards(rendered: dict[str, list[Obj]]) -> None:
    """They go to monitoring by their own Application: the overlays' Applications own the service's
    namespace, and their project allows nothing in monitoring."""
    for objs in rendered.values():
        assert not [o for o in objs if "grafana_dashboard" in (o["metadata"].get("labels") or {})]


@pytest.mark.parametrize("env", OVERLAYS)
def test_an_application_per_cluster_syncs_the_dashboards_into_monitoring(
    argocd_entry_points: dict[str, list[Obj]], dashboard_objects: list[Obj], crd_schemas: CrdSchemas, env: str
) -> None:
    objs = argocd_entry_points[env]
    app = dashboards_application(objs, env)
    project = one(objs, "AppProject", DASHBOARDS_PROJECT)
    assert crd_schemas.errors(app) == []
    assert app["metadata"]["namespace"] == project["metadata"]["namespace"] == "argocd"
    assert annotations_of(app)[WAVE] == "5" and annotations_of(project)[WAVE] == "4"
    assert "finalizers" not in app["metadata"]
    spec = app["spec"]
    assert spec["source"] == {"repoURL": REPO_URL, "targetRevision": "main", "path": DASHBOARDS_SOURCE}
    assert (REPO / DASHBOARDS_SOURCE / "kustomization.yaml").is_file()
    assert spec["destination"] == {"name": CLUSTERS[env], "namespace": DASHBOARDS_NAMESPACE}
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    # monitoring is the platform's: never created or relabelled by this Application.
    assert "CreateNamespace=true" not in spec["syncPolicy"].get("syncOptions", [])
    assert "managedNamespaceMetadata" not in spec["syncPolicy"]
    assert dashboards_project_problems(project, app, dashboard_objects, env) == []


def _project_mutation(path: tuple[Any, ...], value: Any) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            _project_mutation(
                ("spec", "namespaceResourceWhitelist"),
                [{"group": "", "kind": "ConfigMap"}, {"group": "apps", "kind": "Deployment"}],
            ),
            "ConfigMap alone",
        ),
        (_project_mutation(("spec", "namespaceResourceWhitelist"), [{"group": "*", "kind": "*"}]), "alone"),
        (
            _project_mutation(("spec", "clusterResourceWhitelist"), [{"group": "", "kind": "Namespace"}]),
            "no cluster-scoped",
        ),
        (_project_mutation(("spec", "destinations"), [{"name": "dev", "namespace": "*"}]), "destinations"),
        (
            _project_mutation(
                ("spec", "destinations"),
                [
                    {"name": "dev", "namespace": "monitoring"},
                    {"name": "dev", "namespace": "product-team-dev"},
                ],
            ),
            "destinations",
        ),
        (_project_mutation(("spec", "sourceRepos"), ["*"]), "sourceRepos"),
        (_project_mutation(("metadata", "name"), "product-team-chat"), "AppProject"),
    ],
    ids=[
        "deployments",
        "wildcard",
        "namespaces",
        "any-namespace",
        "tenant-namespace",
        "any-repo",
        "tenant-project",
    ],
)
def test_the_dashboards_project_check_catches(
    argocd_entry_points: dict[str, list[Obj]],
    dashboard_objects: list[Obj],
    mutate: Callable[[Obj], None],
    expected: str,
) -> None:
    objs = argocd_entry_points["dev"]
    project = copy.deepcopy(one(objs, "AppProject", DASHBOARDS_PROJECT))
    mutate(project)
    problems = dashboards_project_problems(
        project, dashboards_application(objs, "dev"), dashboard_objects, "dev"
    )
    assert any(expected in p for p in problems), problems


def test_the_dashboards_project_check_catches_a_render_outside_it(
    argocd_entry_points: dict[str, list[Obj]], dashboard_objects: list[Obj]
) -> None:
    objs = argocd_entry_points["prd"]
    project, app = one(objs, "AppProject", DASHBOARDS_PROJECT), dashboards_application(objs, "prd")
    elsewhere = copy.deepcopy(dashboard_objects)
    elsewhere[0]["metadata"]["namespace"] = "product-team"
    assert any("outside monitoring" in p for p in dashboards_project_problems(project, app, elsewhere, "prd"))
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "monitoring"}}
    problems = dashboards_project_problems(project, app, [*dashboard_objects, secret], "prd")
    assert any("does not allow" in p and "Secret" in p for p in problems), problems
    moved = copy.deepcopy(app)
    moved["spec"]["destination"]["namespace"] = "product-team"
    assert any(
        "Application destination" in p
        for p in dashboards_project_problems(project, moved, dashboard_objects, "prd")
    )
