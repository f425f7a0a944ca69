"""The invariants of the rendered overlays, one test each: the order ArgoCD applies them in, how the
database URL and the JWT key reach the pods, telemetry, probes, security, termination, networking and
the per-environment differences."""

from __future__ import annotations

import urllib.parse

import pytest

from chat_api.core.config import Settings, load_settings
from chat_api.core.telemetry import SHUTDOWN_SECONDS as TELEMETRY_SHUTDOWN_SECONDS
from chat_api.server import GRACEFUL_SHUTDOWN_SECONDS
from tests.deploy.manifests import (
    DEPLOY,
    HOOK,
    HOOK_DELETE_POLICY,
    IMAGE,
    WAVE,
    Obj,
    annotations_of,
    containers,
    env_list,
    env_value,
    main_container,
    objects,
    one,
    overlay_images,
    pod_labels,
    pod_spec,
    references,
    selects,
    wave,
)

NAMESPACES = {"dev": "product-team-dev", "prd": "product-team"}
HOSTS = {"dev": "chat.dev.example.com", "prd": "chat.example.com"}
REPLICAS = {"dev": 1, "prd": 3}
UID = 10001
DB_SECRET = "chat-db-cnpg-app"
DB_URL_FILE = "/etc/chat-api/db/uri"
COLLECTOR = "http://otel-collector.opentelemetry.svc.cluster.local:4317"


def workloads(objs: list[Obj]) -> list[Obj]:
    """The pods chat-api runs: the server Deployment and the migration Job."""
    return [one(objs, "Deployment", "chat-api"), one(objs, "Job", "chat-api-migrate")]


def config_data(objs: list[Obj]) -> dict[str, str]:
    return dict(one(objs, "ConfigMap")["data"])


# ---- ArgoCD order ---------------------------------------------------------------------------------


def test_sync_waves_run_secrets_then_database_then_migration_then_server(
    overlay: tuple[str, list[Obj]],
) -> None:
    _, objs = overlay
    cluster, job, deployment = one(objs, "Cluster"), one(objs, "Job"), one(objs, "Deployment")
    assert (wave(cluster), wave(job), wave(deployment)) == (3, 4, 5)
    sealed = objects(objs, "SealedSecret")
    assert len(sealed) == 2 and {wave(s) for s in sealed} == {2}
    for kind in ("Service", "PodDisruptionBudget", "Ingress", "HorizontalPodAutoscaler"):
        for obj in objects(objs, kind):
            assert wave(obj) == 5, kind


def test_what_the_migration_job_uses_exists_before_it(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    job_wave = wave(one(objs, "Job"))
    for kind in ("ServiceAccount", "ConfigMap", "NetworkPolicy"):
        assert wave(one(objs, kind)) < job_wave, kind


def test_every_object_has_a_sync_wave(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    for obj in objs:
        assert annotations_of(obj).get(WAVE, "").isdigit(), f"{obj['kind']} has no sync-wave"


def test_migration_job_is_a_sync_hook_with_a_fixed_name(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    job = one(objs, "Job")
    assert job["metadata"]["name"] == "chat-api-migrate"
    assert "generateName" not in job["metadata"]
    assert annotations_of(job)[HOOK] == "Sync"
    assert annotations_of(job)[HOOK_DELETE_POLICY] == "BeforeHookCreation,HookSucceeded"
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert 1 <= job["spec"]["backoffLimit"] <= 6
    assert 60 <= job["spec"]["activeDeadlineSeconds"] <= 3600
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert main_container(job)["command"] == ["chat-api", "migrate"]


# ---- image ----------------------------------------------------------------------------------------


def test_deployment_and_migration_job_run_the_same_image(overlay: tuple[str, list[Obj]]) -> None:
    name, objs = overlay
    (entry,) = overlay_images(DEPLOY / "overlays" / name / "kustomization.yaml")
    assert entry["name"] == IMAGE and entry.get("newName", IMAGE) == IMAGE
    images = {c["image"] for w in workloads(objs) for c in containers(w)}
    assert images == {f"{IMAGE}:{entry['newTag']}"}


def test_base_leaves_the_tag_to_the_overlays(base_objects: list[Obj]) -> None:
    base = base_objects
    assert {c["image"] for w in workloads(base) for c in containers(w)} == {IMAGE}


def test_server_runs_the_image_cmd(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    server = main_container(one(objs, "Deployment"))
    assert "command" not in server and "args" not in server


# ---- database URL and secrets ---------------------------------------------------------------------


def test_migration_url_comes_from_the_mounted_cnpg_secret_without_subpath(
    overlay: tuple[str, list[Obj]],
) -> None:
    """The migration Job connects as the owner from CNPG's secret. (The server connects as the runtime
    role with a password file: tests/deploy/test_secrets_and_roles.py.)"""
    _, objs = overlay
    for workload in [one(objs, "Job", "chat-api-migrate")]:
        spec = pod_spec(workload)
        (volume,) = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == DB_SECRET]
        assert volume["secret"]["items"] == [{"key": "uri", "path": "uri"}]
        container = main_container(workload)
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        # subPath mounts are never updated: a rotated password would need a restart.
        assert "subPath" not in mount and "subPathExpr" not in mount
        assert mount.get("readOnly") is True
        assert (
            env_value(container, "DATABASE_URL_FILE")["value"] == f"{mount['mountPath']}/uri" == DB_URL_FILE
        )
        names = {e["name"] for e in env_list(container)}
        assert "DATABASE_URL" not in names and "DATABASE_URL" not in config_data(objs)
    for workload in workloads(objs):
        for entry in env_list(main_container(workload)):
            ref = entry.get("valueFrom", {}).get("secretKeyRef", {})
            assert ref.get("name") != DB_SECRET, "env from the CNPG secret never sees a rotation"


def test_no_secret_reaches_a_pod_as_an_environment_variable(overlay: tuple[str, list[Obj]]) -> None:
    """Secrets are mounted files (re-read after a rotation); the JWT key is one of them."""
    _, objs = overlay
    server = main_container(one(objs, "Deployment"))
    assert env_value(server, "CHAT_API_JWT_SECRET_FILE")["value"] == "/etc/chat-api/jwt/secret"
    for workload in workloads(objs):
        for container in containers(workload):
            names = {e["name"] for e in env_list(container)}
            assert "CHAT_API_JWT_SECRET" not in names
            for entry in env_list(container):
                assert "secretKeyRef" not in entry.get("valueFrom", {}), entry["name"]
            assert all("secretRef" not in source for source in container.get("envFrom", []))
    assert objects(objs, "Secret") == []
    assert sorted(o["metadata"]["name"] for o in objects(objs, "SealedSecret")) == [
        "chat-api-jwt",
        "chat-db-runtime",
    ]


def test_no_secret_values_in_the_deploy_tree() -> None:
    paths = [
        p for part in ("base", "overlays", "argocd", "components") for p in (DEPLOY / part).rglob("*.yaml")
    ]
    assert paths
    for path in paths:
        text = path.read_text()
        assert "kind: Secret" not in text and "stringData:" not in text, path


# ---- settings and telemetry -----------------------------------------------------------------------


def test_configmap_holds_valid_non_secret_settings(
    overlay: tuple[str, list[Obj]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, objs = overlay
    data = config_data(objs)
    assert data["CHAT_API_LOG_FORMAT"] == "json" and data["CHAT_API_LOG_LEVEL"] == "INFO"
    assert data["CHAT_API_PORT"] == "8080" and data["OTEL_SERVICE_NAME"] == "chat-api"
    known = {alias for f in Settings.model_fields.values() for alias in f.validation_alias.choices}  # type: ignore[union-attr]
    for key in data:
        assert key.startswith("OTEL_") or key in known, f"{key} is not a chat-api setting"
        assert not any(word in key for word in ("SECRET", "PASSWORD", "DATABASE_URL")), key
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DATABASE_URL", "postgresql://chatapi:x@chat-db-cnpg-rw:5432/chat")
    settings = load_settings()  # every value parses
    assert settings.port == 8080 and settings.log_format == "json"
    server = main_container(one(objs, "Deployment"))
    job = main_container(one(objs, "Job"))
    config_name = one(objs, "ConfigMap")["metadata"]["name"]
    for container in (server, job):
        assert container["envFrom"] == [{"configMapRef": {"name": config_name}}]


def test_otel_exporter_points_at_the_platform_collector(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    data = config_data(objs)
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"] == COLLECTOR
    assert data["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert data["OTEL_EXPORTER_OTLP_INSECURE"] == "true"
    # The platform's collector takes logs only (to Loki): traces and metrics are switched off, and
    # the values are ones the service accepts.
    assert (data["OTEL_LOGS_EXPORTER"], data["OTEL_TRACES_EXPORTER"], data["OTEL_METRICS_EXPORTER"]) == (
        "otlp",
        "none",
        "none",
    )
    # ... and the NetworkPolicy lets the pods reach it.
    endpoint = urllib.parse.urlsplit(COLLECTOR)
    namespace = str(endpoint.hostname).split(".")[1]
    rule = egress_rule(one(objs, "NetworkPolicy"), {"kubernetes.io/metadata.name": namespace})
    assert {"protocol": "TCP", "port": endpoint.port} in rule["ports"]


def test_downward_api_variables_are_defined_before_otel_resource_attributes(
    overlay: tuple[str, list[Obj]],
) -> None:
    name, objs = overlay
    server = main_container(one(objs, "Deployment"))
    entries = env_list(server)
    order = [e["name"] for e in entries]
    fields = {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "NODE_NAME": "spec.nodeName",
    }
    for variable, field_path in fields.items():
        assert env_value(server, variable)["valueFrom"]["fieldRef"]["fieldPath"] == field_path
        assert order.index(variable) < order.index("OTEL_RESOURCE_ATTRIBUTES")
    # $(VAR) expands only variables defined earlier: every reference must point backwards.
    for index, entry in enumerate(entries):
        for ref in references(entry.get("value", "")):
            assert ref in order[:index], f"{entry['name']} uses $({ref}) before it is defined"
    attributes = env_value(server, "OTEL_RESOURCE_ATTRIBUTES")["value"]
    assert attributes.startswith(
        "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),k8s.node.name=$(NODE_NAME),"
    )
    assert "deployment.environment=$(DEPLOYMENT_ENVIRONMENT)" in attributes
    assert env_value(server, "DEPLOYMENT_ENVIRONMENT")["value"] == name


# ---- probes, resources, termination, rollout ------------------------------------------------------


def test_probes_use_healthz_and_readyz_on_the_http_port(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    server = main_container(one(objs, "Deployment"))
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    paths = {
        probe: (server[probe]["httpGet"]["path"], server[probe]["httpGet"]["port"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert paths == {
        "startupProbe": ("/healthz", "http"),
        "livenessProbe": ("/healthz", "http"),
        "readinessProbe": ("/readyz", "http"),
    }


def test_every_container_has_requests_and_limits(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    for workload in workloads(objs):
        for container in containers(workload):
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, (container["name"], bound)


def test_overlays_size_the_server_differently(rendered: dict[str, list[Obj]]) -> None:
    sizes = {name: main_container(one(objs, "Deployment"))["resources"] for name, objs in rendered.items()}
    assert sizes["dev"] != sizes["prd"]


def test_termination_covers_prestop_and_the_servers_drain(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    spec = pod_spec(one(objs, "Deployment"))
    pre_stop = main_container(one(objs, "Deployment"))["lifecycle"]["preStop"]
    assert pre_stop == {"sleep": {"seconds": 5}}
    grace = spec["terminationGracePeriodSeconds"]
    assert grace == 30
    # SIGTERM comes after preStop; then the server drains, then telemetry flushes (both bounded).
    assert grace >= 5 + GRACEFUL_SHUTDOWN_SECONDS + TELEMETRY_SHUTDOWN_SECONDS


def test_rolling_update_never_drops_capacity(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    strategy = one(objs, "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def test_replicas_per_overlay(overlay: tuple[str, list[Obj]]) -> None:
    name, objs = overlay
    assert one(objs, "Deployment")["spec"]["replicas"] == REPLICAS[name]


def test_no_hpa_unless_the_component_is_enabled(overlay: tuple[str, list[Obj]]) -> None:
    """prd runs a fixed 3 by default; tests/deploy/test_hpa_component.py enables components/hpa."""
    _, objs = overlay
    assert objects(objs, "HorizontalPodAutoscaler") == []


# ---- security -------------------------------------------------------------------------------------


def test_pods_run_restricted(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    for workload in workloads(objs):
        spec = pod_spec(workload)
        assert spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert "privileged" not in context and "runAsUser" not in context


def test_tmp_is_an_emptydir(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    for workload in workloads(objs):
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        (mount,) = [m for m in main_container(workload)["volumeMounts"] if m["mountPath"] == "/tmp"]  # noqa: S108
        assert "emptyDir" in volumes[mount["name"]]


def test_no_service_account_token_and_no_service_links(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    account = one(objs, "ServiceAccount", "chat-api")
    assert account["automountServiceAccountToken"] is False
    for workload in workloads(objs):
        spec = pod_spec(workload)
        assert spec["serviceAccountName"] == "chat-api"
        assert spec["automountServiceAccountToken"] is False
        # A Service named chat-api would inject CHAT_API_PORT=tcp://...: the service's own setting.
        assert spec["enableServiceLinks"] is False


# ---- networking -----------------------------------------------------------------------------------


def egress_rule(policy: Obj, namespace_labels: dict[str, str]) -> Obj:
    for rule in policy["spec"]["egress"]:
        for peer in rule["to"]:
            if peer.get("namespaceSelector", {}).get("matchLabels") == namespace_labels:
                return dict(rule)
    raise AssertionError(f"no egress rule to namespace {namespace_labels}")


def test_network_policy_admits_ingress_nginx_and_reaches_dns_database_collector(
    overlay: tuple[str, list[Obj]],
) -> None:
    _, objs = overlay
    policy = one(objs, "NetworkPolicy", "chat-api")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for workload in workloads(objs):
        assert selects(selector, pod_labels(workload)), workload["kind"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
            ],
            "ports": [{"protocol": "TCP", "port": 8080}],
        }
    ]
    assert policy["spec"]["egress"] == [
        {
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
        {
            "to": [{"podSelector": {"matchLabels": {"cnpg.io/cluster": "chat-db-cnpg"}}}],
            "ports": [{"protocol": "TCP", "port": 5432}],
        },
        {
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "opentelemetry"}}}],
            "ports": [{"protocol": "TCP", "port": 4317}, {"protocol": "TCP", "port": 4318}],
        },
    ]
    # The database peer is the Cluster this overlay creates.
    assert one(objs, "Cluster")["metadata"]["name"] == "chat-db-cnpg"


def test_service_sends_port_80_to_the_server_pods_only(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    service = one(objs, "Service", "chat-api")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    selector = service["spec"]["selector"]
    assert selects(selector, pod_labels(one(objs, "Deployment")))
    assert not selects(selector, pod_labels(one(objs, "Job")))


def test_pod_disruption_budget_allows_one_pod_down(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    pdb = one(objs, "PodDisruptionBudget", "chat-api")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert (
        pdb["spec"]["selector"]["matchLabels"] == one(objs, "Deployment")["spec"]["selector"]["matchLabels"]
    )


def test_ingress_is_sse_safe_with_tls_for_the_overlays_host(overlay: tuple[str, list[Obj]]) -> None:
    name, objs = overlay
    ingress = one(objs, "Ingress", "chat-api")
    notes = annotations_of(ingress)
    assert notes["cert-manager.io/cluster-issuer"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert notes["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert notes["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "64k"  # the service's 64 KiB
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"hosts": [HOSTS[name]], "secretName": "chat-api-tls"}]
    (rule,) = spec["rules"]
    assert rule["host"] == HOSTS[name]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    assert path["backend"]["service"] == {"name": "chat-api", "port": {"name": "http"}}


# ---- per environment ------------------------------------------------------------------------------


def test_namespace_per_overlay_and_no_namespace_object(overlay: tuple[str, list[Obj]]) -> None:
    name, objs = overlay
    assert {o["metadata"]["namespace"] for o in objs} == {NAMESPACES[name]}
    assert objects(objs, "Namespace") == []


def test_no_placeholder_left_in_a_rendered_overlay(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    text = repr(objs)
    assert ".invalid" not in text and "set-by-overlay" not in text


def test_cnpg_cluster_per_overlay(overlay: tuple[str, list[Obj]]) -> None:
    name, objs = overlay
    cluster = one(objs, "Cluster", "chat-db-cnpg")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["bootstrap"] == {"initdb": {"database": "chat", "owner": "chatapi"}}
    assert spec["storage"]["storageClass"] == "longhorn"
    if name == "dev":
        assert spec["instances"] == 1 and spec["storage"]["size"] == "5Gi"
    else:
        assert spec["instances"] == 3 and spec["storage"]["size"] != "5Gi"
        # The data outlives the Application.
        assert annotations_of(cluster)["argocd.argoproj.io/sync-options"] == "Delete=false,Prune=false"
    assert objects(objs, "Pooler") == []


def test_common_labels(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    for obj in objs:
        labels = obj["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/part-of") == "chat", obj["kind"]
        if obj["kind"] != "Cluster":
            assert labels.get("app.kubernetes.io/name") == "chat-api", obj["kind"]
