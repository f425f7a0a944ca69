"""The ArgoCD Applications and argocd-image-updater's ImageUpdaters, and what a write-back does: the
updater commits a new tag to the overlay's kustomization, and only the two images change."""

from __future__ import annotations

import fnmatch
import posixpath
import re
import shutil
from pathlib import Path

import pytest
import yaml

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

REPO_URL = "https://github.com/product-team/chat-api.git"
NAMESPACES = {"dev": "product-team-dev", "prd": "product-team"}


def application(argocd_objects: list[Obj], env: str) -> Obj:
    return one(argocd_objects, "Application", f"chat-api-{env}")


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


@pytest.mark.parametrize("env", OVERLAYS)
def test_application_per_overlay(argocd_objects: list[Obj], env: str) -> None:
    app = application(argocd_objects, env)
    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    assert app["metadata"]["namespace"] == "argocd"
    assert annotations_of(app)[WAVE] == "5"
    spec = app["spec"]
    assert spec["project"] in ("default", "product-team")
    assert spec["source"] == {"repoURL": REPO_URL, "targetRevision": "main", "path": f"deploy/overlays/{env}"}
    assert (REPO / spec["source"]["path"] / "kustomization.yaml").is_file()
    assert spec["destination"] == {"server": "https://kubernetes.default.svc", "namespace": NAMESPACES[env]}
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "CreateNamespace=true" in spec["syncPolicy"]["syncOptions"]
    # What the Application deploys lands in the namespace it creates.
    rendered = kustomize(REPO / spec["source"]["path"])
    assert {o["metadata"]["namespace"] for o in rendered} == {spec["destination"]["namespace"]}


def test_prd_application_leaves_replicas_to_the_hpa(
    argocd_objects: list[Obj], rendered: dict[str, list[Obj]]
) -> None:
    for env in OVERLAYS:
        spec = application(argocd_objects, env)["spec"]
        has_hpa = bool(objects(rendered[env], "HorizontalPodAutoscaler"))
        ignored = [
            d
            for d in spec.get("ignoreDifferences", [])
            if d["kind"] == "Deployment" and "/spec/replicas" in d["jsonPointers"]
        ]
        assert bool(ignored) == has_hpa, env
        assert ("RespectIgnoreDifferences=true" in spec["syncPolicy"]["syncOptions"]) == has_hpa


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


@pytest.mark.parametrize("env", OVERLAYS)
def test_image_updater_writes_back_to_the_applications_overlay_by_git(
    argocd_objects: list[Obj], env: str
) -> None:
    app = application(argocd_objects, env)
    updater, _ = updater_for(argocd_objects, app)
    write_back = updater["spec"]["writeBackConfig"]
    assert write_back["method"] == "git"  # the default (argocd) is undone by the app-of-apps
    assert write_back["gitConfig"]["branch"] == app["spec"]["source"]["targetRevision"] == "main"
    target = kustomize_base(write_back["gitConfig"]["writeBackTarget"], app["spec"]["source"]["path"])
    assert target == app["spec"]["source"]["path"]


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
