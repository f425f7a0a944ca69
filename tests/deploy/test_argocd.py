"""The ArgoCD entry points (deploy/argocd/<env>: an AppProject, an Application and an ImageUpdater
per cluster for the service, and an AppProject and an Application for its Grafana dashboards, which
tests/deploy/test_dashboards.py checks) and what a write-back does: the updater commits a new tag to
the overlay's kustomization (dev) or proposes it in a pull request (prd), and only the two images change.

The invariants are functions that return the problems they find; each runs against the real
entry points (no problems) and against mutated copies that must each be caught."""

from __future__ import annotations

import copy
import fnmatch
import posixpath
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.argocd_rules import (
    CLUSTERS,
    DASHBOARDS_PROJECT,
    NAMESPACES,
    PROJECT,
    REPO_URL,
    application,
    project_problems,
    service_objects,
)
from tests.deploy.manifests import (
    DEPLOY,
    IMAGE,
    OVERLAYS,
    REPO,
    WAVE,
    Obj,
    annotations_of,
    changed_leaves,
    kustomize,
    objects,
    one,
    overlay_images,
)

# How a new release tag reaches each environment.
PROMOTION = {"dev": "commit", "prd": "pull-request"}


def other(env: str) -> str:
    (name,) = set(OVERLAYS) - {env}
    return name


def updater_for(argocd_objects: list[Obj], app: Obj) -> tuple[Obj, Obj]:
    """The ImageUpdater whose applicationRefs select this Application, and that ref."""
    found = [
        (updater, ref)
        for updater in objects(argocd_objects, "ImageUpdater")
        for ref in updater["spec"]["applicationRefs"]
        if fnmatch.fnmatchcase(app["metadata"]["name"], ref["namePattern"])
    ]
    assert len(found) == 1, f"{app['metadata']['name']} is selected by {len(found)} ImageUpdaters"
    return found[0]


def kustomize_base(write_back_target: str, source_path: str) -> str:
    """Where argocd-image-updater writes (its parseKustomizeBase): a leading / is relative to the
    repository root, anything else to the Application's source path."""
    prefix = "kustomization"
    if write_back_target == prefix:
        return posixpath.normpath(source_path)
    assert write_back_target.startswith(prefix + ":"), write_back_target
    base = write_back_target[len(prefix) + 1 :]
    if base.startswith("/"):
        return posixpath.normpath(base[1:])
    return posixpath.normpath(posixpath.join(source_path, base))


def allow_tags_regex(allow_tags: str) -> re.Pattern[str]:
    assert allow_tags.startswith("regexp:"), "allowTags needs the regexp: prefix"
    return re.compile(allow_tags.removeprefix("regexp:"))


# ---- the invariants ---------------------------------------------------------------------------------


def entry_point_problems(objs: list[Obj], env: str) -> list[str]:
    """deploy/argocd/<env> renders exactly one AppProject, Application and ImageUpdater for the
    service and one AppProject and Application for its dashboards, all of this environment, in the
    argocd namespace, and nothing of the other environment."""
    problems = []
    kinds = sorted(str(o["kind"]) for o in service_objects(objs))
    if kinds != ["AppProject", "Application", "ImageUpdater"]:
        problems.append(f"renders {kinds}, not one AppProject, Application and ImageUpdater for the service")
    dashboards = sorted(
        (str(o["kind"]), o["metadata"]["name"]) for o in objs if o not in service_objects(objs)
    )
    if dashboards != [("AppProject", DASHBOARDS_PROJECT), ("Application", f"chat-api-dashboards-{env}")]:
        problems.append(f"renders {dashboards} for the dashboards, not their AppProject and Application")
    for obj in objs:
        if obj["metadata"].get("namespace") != "argocd":
            problems.append(f"{obj['kind']}/{obj['metadata']['name']} is not in namespace argocd")
    names = {
        o["metadata"]["name"] for o in service_objects(objs) if o["kind"] in ("Application", "ImageUpdater")
    }
    if names != {f"chat-api-{env}"}:
        problems.append(f"Application/ImageUpdater names {sorted(names)}, want chat-api-{env}")
    text = yaml.safe_dump_all(objs)
    foreign = [
        f"chat-api-{other(env)}",
        f"chat-api-dashboards-{other(env)}",
        f"deploy/overlays/{other(env)}",
        f"namespace: {NAMESPACES[other(env)]}\n",
    ]
    problems += [f"mentions {word.strip()!r} of {other(env)}" for word in foreign if word in text]
    return problems


def destination_problems(app: Obj, env: str) -> list[str]:
    """The Application names its cluster (not an API server URL) and its namespace."""
    want = {"name": CLUSTERS[env], "namespace": NAMESPACES[env]}
    got = app["spec"]["destination"]
    return [] if got == want else [f"destination {got}, want {want} (by name, no server)"]


def write_back_problems(updater: Obj, app: Obj, env: str) -> list[str]:
    """git write-back to the Application's overlay; dev commits to the tracked branch, prd opens a
    pull request from a branch of its own into it."""
    problems = []
    write_back = updater["spec"]["writeBackConfig"]
    if write_back.get("method") != "git":  # the default (argocd) is undone by the app-of-apps
        problems.append(f"method {write_back.get('method')!r}, want git")
    git = write_back.get("gitConfig") or {}
    base, _, head = str(git.get("branch", "")).partition(":")
    tracked = app["spec"]["source"]["targetRevision"]
    if base != tracked or tracked != "main":
        problems.append(f"base branch {base!r}, want the Application's {tracked!r} (main)")
    target = git.get("writeBackTarget", "")
    if (
        not target.startswith("kustomization")
        or kustomize_base(target, app["spec"]["source"]["path"]) != app["spec"]["source"]["path"]
    ):
        problems.append(f"writeBackTarget {target!r} is not the Application's overlay")
    pull_request = git.get("pullRequest")
    if PROMOTION[env] == "commit":
        if pull_request is not None or head:
            problems.append("dev commits straight to main: no pullRequest, no head branch")
    else:
        if not isinstance(pull_request, dict):
            problems.append("prd is promoted by pull request: gitConfig.pullRequest is missing")
        # The CRD's CEL rule (jsonschema does not evaluate it): exactly one of github or gitlab.
        elif sorted({"github", "gitlab"} & set(pull_request)) != ["github"]:
            problems.append("pullRequest needs exactly one provider, github (the repository is on GitHub)")
        if not head or head == base:
            problems.append("a pull request needs a head branch of its own (branch: main:<head>)")
    return problems


def replicas_problems(app: Obj, rendered: list[Obj]) -> list[str]:
    """No Application ignores spec.replicas: prd runs the overlay's fixed count, and where the HPA
    component is on it removes spec.replicas from the Deployment (nothing for self-heal to fight)."""
    problems = []
    spec = app["spec"]
    if any("/spec/replicas" in d.get("jsonPointers", []) for d in spec.get("ignoreDifferences", [])):
        problems.append("ignoreDifferences on /spec/replicas")
    if "RespectIgnoreDifferences=true" in spec["syncPolicy"].get("syncOptions", []):
        problems.append("RespectIgnoreDifferences=true")
    if objects(rendered, "HorizontalPodAutoscaler"):
        deployment = one(rendered, "Deployment", "chat-api")
        if "replicas" in deployment["spec"]:
            problems.append("an HPA scales the Deployment, but the Deployment still sets spec.replicas")
    return problems


# ---- the real entry points pass ---------------------------------------------------------------------


@pytest.mark.parametrize("env", OVERLAYS)
def test_each_entry_point_renders_one_environment(
    argocd_entry_points: dict[str, list[Obj]], env: str
) -> None:
    assert entry_point_problems(argocd_entry_points[env], env) == []


def test_the_old_bundle_is_gone() -> None:
    # A cluster that synced deploy/argocd would create both environments' Applications.
    assert not (DEPLOY / "argocd" / "kustomization.yaml").exists()
    assert sorted(p.name for p in (DEPLOY / "argocd").iterdir() if p.is_dir()) == sorted(OVERLAYS)


@pytest.mark.parametrize("env", OVERLAYS)
def test_application_per_overlay(argocd_entry_points: dict[str, list[Obj]], env: str) -> None:
    app = application(argocd_entry_points[env], env)
    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    assert app["metadata"]["namespace"] == "argocd"
    assert annotations_of(app)[WAVE] == "5"
    assert "finalizers" not in app["metadata"]
    spec = app["spec"]
    assert spec["project"] == PROJECT
    assert spec["source"] == {"repoURL": REPO_URL, "targetRevision": "main", "path": f"deploy/overlays/{env}"}
    assert (REPO / spec["source"]["path"] / "kustomization.yaml").is_file()
    assert destination_problems(app, env) == []
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "CreateNamespace=true" in spec["syncPolicy"]["syncOptions"]
    assert spec["syncPolicy"]["managedNamespaceMetadata"] == {
        "labels": {"pod-security.kubernetes.io/enforce": "restricted"}
    }
    assert spec["syncPolicy"]["retry"]["limit"] >= 1
    # What the Application deploys lands in the namespace it creates.
    rendered = kustomize(REPO / spec["source"]["path"])
    assert {o["metadata"]["namespace"] for o in rendered} == {spec["destination"]["namespace"]}


@pytest.mark.parametrize("env", OVERLAYS)
def test_project_restricts_repository_destination_and_kinds(
    argocd_entry_points: dict[str, list[Obj]], rendered: dict[str, list[Obj]], env: str
) -> None:
    # There is no AppProject CRD in CHAT_API_CRDS_DIR (only the Application's), so unlike the
    # Application and the ImageUpdater it is not validated against a schema: project_problems checks
    # its whole structure field by field instead.
    objs = argocd_entry_points[env]
    project = one(objs, "AppProject", PROJECT)
    assert project["apiVersion"] == "argoproj.io/v1alpha1"
    assert project["metadata"]["namespace"] == "argocd"
    assert "finalizers" not in project["metadata"]
    # Synced before the Application that names it.
    assert int(annotations_of(project)[WAVE]) < int(annotations_of(application(objs, env))[WAVE])
    assert set(project["spec"]) <= {
        "description",
        "sourceRepos",
        "destinations",
        "clusterResourceWhitelist",
        "namespaceResourceWhitelist",
    }
    assert project_problems(project, application(objs, env), rendered[env], env) == []


@pytest.mark.parametrize("env", OVERLAYS)
def test_image_updater_write_back_is_a_commit_in_dev_and_a_pull_request_in_prd(
    argocd_entry_points: dict[str, list[Obj]], env: str
) -> None:
    objs = argocd_entry_points[env]
    app = application(objs, env)
    updater, _ = updater_for(objs, app)
    assert write_back_problems(updater, app, env) == []


@pytest.mark.parametrize(
    "env",
    [
        "dev",
        "prd",
    ],
)
def test_no_application_ignores_replicas(
    argocd_entry_points: dict[str, list[Obj]], rendered: dict[str, list[Obj]], env: str
) -> None:
    assert replicas_problems(application(argocd_entry_points[env], env), rendered[env]) == []


# ---- and each invariant catches a broken copy -------------------------------------------------------


def _set(path: tuple[Any, ...], value: Any) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _append(path: tuple[Any, ...], value: Any) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        target = obj
        for key in path:
            target = target.setdefault(key, []) if isinstance(target, dict) else target[key]
        target.append(value)

    return mutate


def _remove_kind(kind: str) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        entries = obj["spec"]["namespaceResourceWhitelist"]
        obj["spec"]["namespaceResourceWhitelist"] = [e for e in entries if e["kind"] != kind]

    return mutate


def _mutated(objs: list[Obj], kind: str, mutate: Callable[[Obj], None]) -> list[Obj]:
    copies = copy.deepcopy(objs)
    mutate(next(o for o in copies if o["kind"] == kind))
    return copies


@pytest.mark.parametrize(
    ("env", "mutate", "expected"),
    [
        ("dev", lambda objs: objs.append(copy.deepcopy(objs[0])), "not one AppProject"),
        (
            "dev",
            lambda objs: objs.remove(next(o for o in objs if o["kind"] == "AppProject")),
            "not one AppProject",
        ),
        (
            "dev",
            lambda objs: _set(("spec", "source", "path"), "deploy/overlays/prd")(
                next(o for o in objs if o["kind"] == "Application")
            ),
            "deploy/overlays/prd",
        ),
        (
            "prd",
            lambda objs: _set(("spec", "applicationRefs", 0, "namePattern"), "chat-api-dev")(
                next(o for o in objs if o["kind"] == "ImageUpdater")
            ),
            "chat-api-dev",
        ),
        ("prd", lambda objs: _set(("metadata", "namespace"), "default")(objs[0]), "not in namespace argocd"),
    ],
    ids=["two-projects", "no-project", "dev-app-on-prd-overlay", "prd-updater-for-dev", "wrong-namespace"],
)
def test_entry_point_check_catches(
    argocd_entry_points: dict[str, list[Obj]], env: str, mutate: Callable[[list[Obj]], None], expected: str
) -> None:
    objs = copy.deepcopy(argocd_entry_points[env])
    mutate(objs)
    problems = entry_point_problems(objs, env)
    assert any(expected in p for p in problems), problems


def test_the_dev_entry_point_is_not_the_prd_one(argocd_entry_points: dict[str, list[Obj]]) -> None:
    assert entry_point_problems(argocd_entry_points["prd"], "dev")
    assert entry_point_problems(argocd_entry_points["dev"], "prd")


@pytest.mark.parametrize(
    ("env", "mutate"),
    [
        (
            "dev",
            _set(
                ("spec", "destination"),
                {"server": "https://kubernetes.default.svc", "namespace": "product-team-dev"},
            ),
        ),
        ("prd", _set(("spec", "destination", "server"), "https://kubernetes.default.svc")),
        ("prd", _set(("spec", "destination", "name"), "dev")),
        ("dev", _set(("spec", "destination", "namespace"), "product-team")),
    ],
    ids=["server-instead-of-name", "server-beside-name", "other-cluster", "other-namespace"],
)
def test_destination_check_catches(
    argocd_entry_points: dict[str, list[Obj]], env: str, mutate: Callable[[Obj], None]
) -> None:
    app = copy.deepcopy(application(argocd_entry_points[env], env))
    mutate(app)
    assert destination_problems(app, env)


@pytest.mark.parametrize(
    ("env", "mutate", "expected"),
    [
        ("dev", _set(("spec", "sourceRepos"), ["*"]), "sourceRepos"),
        ("prd", _append(("spec", "sourceRepos"), "https://github.com/product-team/other.git"), "sourceRepos"),
        ("dev", _set(("spec", "destinations", 0, "namespace"), "*"), "destinations"),
        ("prd", _set(("spec", "destinations", 0, "name"), "dev"), "destinations"),
        (
            "prd",
            _set(("spec", "destinations", 0), {"server": "*", "namespace": "product-team"}),
            "destinations",
        ),
        (
            "dev",
            _append(("spec", "clusterResourceWhitelist"), {"group": "*", "kind": "*"}),
            "clusterResourceWhitelist",
        ),
        (
            "prd",
            _append(
                ("spec", "clusterResourceWhitelist"),
                {"group": "rbac.authorization.k8s.io", "kind": "ClusterRole"},
            ),
            "clusterResourceWhitelist",
        ),
        ("dev", _set(("spec", "clusterResourceWhitelist"), []), "clusterResourceWhitelist"),
        ("dev", _delete(("spec", "clusterResourceWhitelist", 0, "name")), "clusterResourceWhitelist"),
        ("prd", _append(("spec", "namespaceResourceWhitelist"), {"group": "*", "kind": "*"}), "wildcard"),
        ("dev", _append(("spec", "namespaceResourceWhitelist"), {"group": "", "kind": "Secret"}), "beyond"),
        (
            "prd",
            _append(
                ("spec", "namespaceResourceWhitelist"), {"group": "rbac.authorization.k8s.io", "kind": "Role"}
            ),
            "beyond",
        ),
        (
            "dev",
            _append(
                ("spec", "namespaceResourceWhitelist"),
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
            ),
            "does not render",
        ),
        ("dev", _remove_kind("Job"), "does not allow"),
        ("prd", _remove_kind("Cluster"), "does not allow"),
        (
            "dev",
            _append(("spec", "namespaceResourceWhitelist"), {"group": "apps", "kind": "Deployment"}),
            "twice",
        ),
        ("prd", _set(("metadata", "name"), "default"), "AppProject"),
        (
            "dev",
            _append(("spec", "namespaceResourceBlacklist"), {"group": "", "kind": "Secret"}),
            "unexpected",
        ),
    ],
    ids=[
        "any-repo",
        "second-repo",
        "any-namespace",
        "other-cluster",
        "any-server",
        "all-cluster-kinds",
        "cluster-role",
        "no-namespace-for-create-namespace",
        "any-namespace-name",
        "all-namespaced-kinds",
        "secrets",
        "roles",
        "unused-httproute",
        "missing-job",
        "missing-cnpg-cluster",
        "duplicate",
        "other-project",
        "blacklist",
    ],
)
def test_project_check_catches(
    argocd_entry_points: dict[str, list[Obj]],
    rendered: dict[str, list[Obj]],
    env: str,
    mutate: Callable[[Obj], None],
    expected: str,
) -> None:
    objs = _mutated(service_objects(argocd_entry_points[env]), "AppProject", mutate)
    project = one(objs, "AppProject")
    problems = project_problems(project, application(objs, env), rendered[env], env)
    assert any(expected in p for p in problems), problems


def test_project_check_renders_the_overlay_it_guards(
    argocd_entry_points: dict[str, list[Obj]], rendered: dict[str, list[Obj]]
) -> None:
    """An overlay that starts rendering a kind (here the gateway component's HTTPRoute) fails the
    project until the project allows it."""
    gateway = [o for o in kustomize(DEPLOY / "components" / "gateway-api") if o["kind"] == "HTTPRoute"]
    objs = service_objects(argocd_entry_points["dev"])
    problems = project_problems(
        one(objs, "AppProject"), application(objs, "dev"), rendered["dev"] + gateway, "dev"
    )
    assert any("HTTPRoute" in p and "does not allow" in p for p in problems), problems


@pytest.mark.parametrize(
    ("env", "mutate", "expected"),
    [
        ("dev", _set(("spec", "writeBackConfig", "method"), "argocd"), "method"),
        ("dev", _set(("spec", "writeBackConfig", "gitConfig", "branch"), "release"), "base branch"),
        (
            "dev",
            _set(
                ("spec", "writeBackConfig", "gitConfig", "writeBackTarget"),
                "kustomization:deploy/overlays/dev",
            ),
            "writeBackTarget",
        ),
        (
            "prd",
            _set(
                ("spec", "writeBackConfig", "gitConfig", "writeBackTarget"),
                "kustomization:/deploy/overlays/dev",
            ),
            "writeBackTarget",
        ),
        ("dev", _set(("spec", "writeBackConfig", "gitConfig", "pullRequest"), {"github": {}}), "dev commits"),
        (
            "dev",
            _set(("spec", "writeBackConfig", "gitConfig", "branch"), "main:image-updater"),
            "dev commits",
        ),
        ("prd", _delete(("spec", "writeBackConfig", "gitConfig", "pullRequest")), "pullRequest is missing"),
        (
            "prd",
            _set(("spec", "writeBackConfig", "gitConfig", "pullRequest"), {"labels": ["x"]}),
            "exactly one provider",
        ),
        (
            "prd",
            _set(("spec", "writeBackConfig", "gitConfig", "pullRequest"), {"github": {}, "gitlab": {}}),
            "exactly one provider",
        ),
        ("prd", _set(("spec", "writeBackConfig", "gitConfig", "branch"), "main"), "head branch"),
        ("prd", _set(("spec", "writeBackConfig", "gitConfig", "branch"), "main:main"), "head branch"),
    ],
    ids=[
        "argocd-method",
        "other-base",
        "relative-target",
        "prd-writes-dev-overlay",
        "dev-pull-request",
        "dev-side-branch",
        "prd-commits",
        "no-provider",
        "two-providers",
        "prd-no-head",
        "prd-head-is-base",
    ],
)
def test_write_back_check_catches(
    argocd_entry_points: dict[str, list[Obj]], env: str, mutate: Callable[[Obj], None], expected: str
) -> None:
    objs = _mutated(argocd_entry_points[env], "ImageUpdater", mutate)
    updater = one(objs, "ImageUpdater")
    problems = write_back_problems(updater, application(objs, env), env)
    assert any(expected in p for p in problems), problems


def test_replicas_check_catches(
    argocd_entry_points: dict[str, list[Obj]], rendered: dict[str, list[Obj]]
) -> None:
    app = copy.deepcopy(application(argocd_entry_points["prd"], "prd"))
    app["spec"]["ignoreDifferences"] = [
        {"group": "apps", "kind": "Deployment", "name": "chat-api", "jsonPointers": ["/spec/replicas"]}
    ]
    app["spec"]["syncPolicy"]["syncOptions"].append("RespectIgnoreDifferences=true")
    without_hpa = [o for o in rendered["dev"] if o["kind"] != "HorizontalPodAutoscaler"]
    assert sorted(replicas_problems(app, without_hpa)) == [
        "RespectIgnoreDifferences=true",
        "ignoreDifferences on /spec/replicas",
    ]
    # An HPA beside a Deployment that still sets spec.replicas: self-heal would undo every scaling.
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "chat-api"},
    }
    deployment = copy.deepcopy(one(rendered["dev"], "Deployment", "chat-api"))
    deployment["spec"]["replicas"] = 3
    others = [o for o in rendered["dev"] if o["kind"] != "Deployment"]
    dev_app = application(argocd_entry_points["dev"], "dev")
    assert replicas_problems(dev_app, [*others, deployment, hpa]) == [
        "an HPA scales the Deployment, but the Deployment still sets spec.replicas"
    ]
    del deployment["spec"]["replicas"]
    assert replicas_problems(dev_app, [*others, deployment, hpa]) == []


# ---- what the updater does ----------------------------------------------------------------------------


@pytest.mark.parametrize("env", OVERLAYS)
def test_image_updater_follows_release_tags_of_the_image(argocd_objects: list[Obj], env: str) -> None:
    app = application(argocd_objects, env)
    updater, ref = updater_for(argocd_objects, app)
    assert updater["apiVersion"] == "argocd-image-updater.argoproj.io/v1alpha1"
    assert updater["metadata"]["namespace"] == "argocd"
    (image,) = ref["images"]
    assert image["alias"] == "chat-api"
    assert image["imageName"] == IMAGE
    assert image["commonUpdateSettings"]["updateStrategy"] == "semver"
    allowed = allow_tags_regex(image["commonUpdateSettings"]["allowTags"])
    for tag in ("0.1.0", "1.2.3", "v1.2.3", "10.20.30"):
        assert allowed.search(tag), tag
    for tag in ("latest", "main", "1.2", "1.2.3-rc.1", "sha-0a1b2c3", "v1.2.3.4", "pr-12"):
        assert not allowed.search(tag), tag
    # The kustomize target is the overlay's images entry, which names the image of both workloads.
    assert image["manifestTargets"] == {"kustomize": {"name": IMAGE}}
    (entry,) = overlay_images(DEPLOY / "overlays" / env / "kustomization.yaml")
    assert entry["name"] == image["manifestTargets"]["kustomize"]["name"]
    assert allowed.search(str(entry["newTag"]))


def test_kustomize_base_resolution_matches_the_updater() -> None:
    source = "deploy/overlays/dev"
    assert kustomize_base("kustomization", source) == source
    assert kustomize_base("kustomization:/deploy/overlays/dev", source) == source
    assert kustomize_base("kustomization:.", source) == source
    # The trap: without the leading slash the path is joined to the source path.
    assert (
        kustomize_base("kustomization:deploy/overlays/dev", source)
        == "deploy/overlays/dev/deploy/overlays/dev"
    )


def write_back(kustomization: Path, name: str, new_name: str, new_tag: str) -> None:
    """What the updater's git write-back does to the kustomization (kyaml ElementSetter keyed by name):
    the `images:` element with that name is replaced by {name, newName, newTag}. An element that does
    not exist would be appended and change nothing, so it must exist."""
    data = yaml.safe_load(kustomization.read_text())
    matches = [i for i, entry in enumerate(data["images"]) if entry["name"] == name]
    assert len(matches) == 1, f"{kustomization}: no single images entry named {name}"
    data["images"][matches[0]] = {"name": name, "newName": new_name, "newTag": new_tag}
    kustomization.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("env", OVERLAYS)
def test_image_update_moves_exactly_the_deployment_and_the_migration_job(
    argocd_objects: list[Obj], env: str, tmp_path: Path
) -> None:
    app = application(argocd_objects, env)
    updater, ref = updater_for(argocd_objects, app)
    (image,) = ref["images"]
    # A copy of the repository's deploy tree: the overlay's relative path to the base stays valid.
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    target = updater["spec"]["writeBackConfig"]["gitConfig"]["writeBackTarget"]
    base = kustomize_base(target, app["spec"]["source"]["path"])
    before = kustomize(tmp_path / base)
    write_back(
        tmp_path / base / "kustomization.yaml",
        image["manifestTargets"]["kustomize"]["name"],
        image["imageName"],
        "0.2.0",
    )
    after = kustomize(tmp_path / base)
    container = ("spec", "template", "spec", "containers", 0, "image")
    assert changed_leaves(before, after) == {
        ("Deployment", "chat-api", *container),
        ("Job", "chat-api-migrate", *container),
    }
    for kind in ("Deployment", "Job"):
        (workload,) = [o for o in after if o["kind"] == kind]
        assert workload["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:0.2.0"
