"""The tenant's AppProject rules (the service's project and the dashboards' project) and the ArgoCD
names they check (the entry points', the dashboards' and pgo's tests)."""

from __future__ import annotations

import yaml

from tests.deploy.manifests import Obj, group_of, one

REPO_URL = "https://github.com/product-team/chat-api.git"
NAMESPACES = {"dev": "product-team-dev", "prd": "product-team"}
# The cluster names the Applications and the AppProjects point at (ArgoCD's cluster secrets).
CLUSTERS = {"dev": "dev", "prd": "prd"}
PROJECT = "product-team-chat"
# The Grafana dashboards (deploy/observability) go to the platform's monitoring namespace, by an
# Application and a project of their own that allow ConfigMaps there and nothing else.
DASHBOARDS_PROJECT = "product-team-chat-dashboards"
DASHBOARDS_NAMESPACE = "monitoring"
DASHBOARDS_SOURCE = "deploy/observability"

# The namespaced kinds the tenant's AppProject may whitelist, and nothing broader: what the overlays
# render, the HPA (an opt-in component), the SealedSecret of the JWT key and a pgo PostgresCluster
# (the database alternative), and HTTPRoute (gateway component) only where an overlay renders one.
PERMITTED_KINDS = {
    ("apps", "Deployment"),
    ("", "Service"),
    ("", "ServiceAccount"),
    ("", "ConfigMap"),
    ("batch", "Job"),
    ("networking.k8s.io", "NetworkPolicy"),
    ("policy", "PodDisruptionBudget"),
    ("networking.k8s.io", "Ingress"),
    ("autoscaling", "HorizontalPodAutoscaler"),
    ("postgresql.cnpg.io", "Cluster"),
    ("bitnami.com", "SealedSecret"),
    ("postgres-operator.crunchydata.com", "PostgresCluster"),
    ("gateway.networking.k8s.io", "HTTPRoute"),
}
ONLY_WHEN_RENDERED = {("gateway.networking.k8s.io", "HTTPRoute")}


def application(argocd_objects: list[Obj], env: str) -> Obj:
    return one(argocd_objects, "Application", f"chat-api-{env}")


def dashboards_application(argocd_objects: list[Obj], env: str) -> Obj:
    return one(argocd_objects, "Application", f"chat-api-dashboards-{env}")


def is_dashboards_object(obj: Obj) -> bool:
    name = str(obj["metadata"]["name"])
    return name == DASHBOARDS_PROJECT or name.startswith("chat-api-dashboards-")


def service_objects(argocd_objects: list[Obj]) -> list[Obj]:
    """The service's AppProject, Application and ImageUpdater, without the dashboards' two."""
    return [o for o in argocd_objects if not is_dashboards_object(o)]


def group_kinds(objs: list[Obj]) -> set[tuple[str, str]]:
    return {(group_of(o), str(o["kind"])) for o in objs}


def project_problems(project: Obj, app: Obj, rendered: list[Obj], env: str) -> list[str]:
    """The AppProject admits this repository, this cluster and namespace, the Namespace that
    CreateNamespace creates, and exactly the namespaced kinds the overlay needs: no wildcard."""
    problems = []
    spec = project["spec"]
    if app["spec"]["project"] != project["metadata"]["name"] or project["metadata"]["name"] != PROJECT:
        problems.append(
            f"Application project {app['spec']['project']!r}, AppProject {project['metadata']['name']!r}"
        )
    if (
        spec.get("sourceRepos") != [app["spec"]["source"]["repoURL"]]
        or app["spec"]["source"]["repoURL"] != REPO_URL
    ):
        problems.append(f"sourceRepos {spec.get('sourceRepos')}, want [{REPO_URL}]")
    want_destination = [{"name": CLUSTERS[env], "namespace": NAMESPACES[env]}]
    if spec.get("destinations") != want_destination:
        problems.append(f"destinations {spec.get('destinations')}, want {want_destination}")
    # CreateNamespace=true and managedNamespaceMetadata create and label the Namespace: ArgoCD
    # refuses it ("resource :Namespace is not permitted in project") unless whitelisted.
    want_cluster = [{"group": "", "kind": "Namespace", "name": NAMESPACES[env]}]
    if spec.get("clusterResourceWhitelist") != want_cluster:
        problems.append(
            f"clusterResourceWhitelist {spec.get('clusterResourceWhitelist')}, want {want_cluster}"
        )
    entries = spec.get("namespaceResourceWhitelist") or []
    listed = [(e.get("group"), e.get("kind")) for e in entries]
    if any(set(e) != {"group", "kind"} for e in entries):
        problems.append("namespaceResourceWhitelist entries need exactly group and kind")
    if any("*" in str(part) for entry in listed for part in entry):
        problems.append("namespaceResourceWhitelist has a wildcard")
    if len(listed) != len(set(listed)):
        problems.append("namespaceResourceWhitelist lists a kind twice")
    needed = group_kinds(rendered)
    allowed = set(listed)
    if missing := needed - allowed:
        problems.append(f"the overlay renders kinds the project does not allow: {sorted(missing)}")
    if broader := allowed - PERMITTED_KINDS:
        problems.append(f"the project allows kinds beyond the permitted set: {sorted(broader)}")
    if unused := (allowed & ONLY_WHEN_RENDERED) - needed:
        problems.append(f"the project allows kinds the overlay does not render: {sorted(unused)}")
    for key in ("sourceNamespaces", "clusterResourceBlacklist", "namespaceResourceBlacklist"):
        if key in spec:
            problems.append(f"unexpected {key}")
    for field in ("sourceRepos", "destinations"):
        if "*" in yaml.safe_dump(spec.get(field)):
            problems.append(f"{field} has a wildcard")
    return problems


def dashboards_project_problems(project: Obj, app: Obj, rendered: list[Obj], env: str) -> list[str]:
    """The dashboards' project admits this repository, only namespace monitoring of this cluster, only
    ConfigMaps and no cluster-scoped kind; what deploy/observability renders fits in it."""
    problems = []
    spec = project["spec"]
    if project["metadata"]["name"] != DASHBOARDS_PROJECT or app["spec"]["project"] != DASHBOARDS_PROJECT:
        problems.append(
            f"Application project {app['spec']['project']!r}, AppProject {project['metadata']['name']!r}"
        )
    if spec.get("sourceRepos") != [REPO_URL] or app["spec"]["source"]["repoURL"] != REPO_URL:
        problems.append(f"sourceRepos {spec.get('sourceRepos')}, want [{REPO_URL}]")
    want_destination = {"name": CLUSTERS[env], "namespace": DASHBOARDS_NAMESPACE}
    if spec.get("destinations") != [want_destination]:
        problems.append(f"destinations {spec.get('destinations')}, want [{want_destination}]")
    if app["spec"]["destination"] != want_destination:
        problems.append(f"Application destination {app['spec']['destination']}, want {want_destination}")
    if spec.get("clusterResourceWhitelist"):
        problems.append(
            f"clusterResourceWhitelist {spec['clusterResourceWhitelist']}: no cluster-scoped kind"
        )
    if spec.get("namespaceResourceWhitelist") != [{"group": "", "kind": "ConfigMap"}]:
        problems.append(
            f"namespaceResourceWhitelist {spec.get('namespaceResourceWhitelist')}, want ConfigMap alone"
        )
    for key in ("sourceNamespaces", "clusterResourceBlacklist", "namespaceResourceBlacklist"):
        if key in spec:
            problems.append(f"unexpected {key}")
    if kinds := group_kinds(rendered) - {("", "ConfigMap")}:
        problems.append(f"{DASHBOARDS_SOURCE} renders kinds the project does not allow: {sorted(kinds)}")
    if namespaces := {o["metadata"].get("namespace") for o in rendered} - {DASHBOARDS_NAMESPACE}:
        problems.append(f"{DASHBOARDS_SOURCE} renders objects outside {DASHBOARDS_NAMESPACE}: {namespaces}")
    return problems
