"""The opt-in HPA component: enabled in prd the documented way (one line uncommented) it adds the
HorizontalPodAutoscaler, removes spec.replicas from the Deployment (ArgoCD's self-heal must not reset
what the HPA chose) and changes nothing else. An overlay that sets its count with its own `replicas:`
field would keep spec.replicas: kustomize applies an overlay's fields after its components."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.manifests import DEPLOY, REPO, Obj, changed_leaves, kustomize, one, wave

KUBERNETES_VERSION = "1.34.0"
NAMESPACES = {"dev": "product-team-dev", "prd": "product-team"}
COMPONENT_LINE = "  - ../../components/hpa"
DISABLED_LINE = "  # - ../../components/hpa"


def hpa_problems(objs: list[Obj]) -> list[str]:
    """An HPA owns the Deployment's replica count."""
    hpas = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    if len(hpas) != 1:
        return [f"{len(hpas)} HorizontalPodAutoscalers"]
    (hpa,) = hpas
    problems = []
    deployment = one(objs, "Deployment", "chat-api")
    if "replicas" in deployment["spec"]:
        problems.append("the Deployment still sets spec.replicas: ArgoCD self-heal would fight the HPA")
    spec = hpa["spec"]
    if spec["scaleTargetRef"] != {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-api"}:
        problems.append(f"the HPA scales {spec['scaleTargetRef']}")
    if hpa["metadata"].get("namespace") != deployment["metadata"].get("namespace"):
        problems.append("the HPA is in another namespace")
    if wave(hpa) != wave(deployment):
        problems.append("the HPA is not in the Deployment's wave")
    return problems


def enable(overlay: Path) -> None:
    """What docs/deploy.md says: uncomment the one line in the overlay's kustomization."""
    kustomization = overlay / "kustomization.yaml"
    text = kustomization.read_text()
    assert text.count(DISABLED_LINE) == 1, f"{kustomization} has no single line {DISABLED_LINE!r}"
    kustomization.write_text(text.replace(DISABLED_LINE, COMPONENT_LINE))


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    return tmp_path / "deploy"


def test_prd_with_the_component_lets_the_hpa_own_replicas(deploy_copy: Path) -> None:
    overlay = deploy_copy / "overlays" / "prd"
    before = kustomize(overlay)
    assert [o for o in before if o["kind"] == "HorizontalPodAutoscaler"] == []
    assert one(before, "Deployment")["spec"]["replicas"] == 3
    enable(overlay)
    after = kustomize(overlay)
    assert hpa_problems(after) == []
    hpa = one(after, "HorizontalPodAutoscaler", "chat-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    kubernetes_validate.validate(copy.deepcopy(hpa), KUBERNETES_VERSION, strict=True)
    kubernetes_validate.validate(copy.deepcopy(one(after, "Deployment")), KUBERNETES_VERSION, strict=True)
    spec = hpa["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 10)
    assert spec["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    ]
    # The HPA starts from prd's fixed count, so enabling it never scales prd down.
    assert spec["minReplicas"] == one(before, "Deployment")["spec"]["replicas"]
    assert hpa["metadata"]["labels"]["app.kubernetes.io/part-of"] == "chat"
    # Nothing else moves.
    kept = [o for o in after if o["kind"] != "HorizontalPodAutoscaler"]
    assert changed_leaves(before, kept) == {("Deployment", "chat-api", "spec", "replicas")}


@pytest.mark.parametrize("env", ["dev", "prd"])
def test_component_over_a_rendered_overlay_in_a_temp_kustomization(env: str, deploy_copy: Path) -> None:
    """Layered over a whole overlay (the overlay as a resource, its own replicas: already applied), the
    component works for either environment; every object still validates."""
    variant = deploy_copy / "variants" / f"{env}-hpa"
    variant.mkdir(parents=True)
    (variant / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # The component's HPA has no namespace of its own: the layer must set it.
                "namespace": NAMESPACES[env],
                "resources": [f"../../overlays/{env}"],
                "components": ["../../components/hpa"],
            }
        )
    )
    objs = kustomize(variant)
    assert hpa_problems(objs) == []
    for obj in objs:
        if obj["kind"] not in ("Cluster", "SealedSecret"):  # CRD kinds: test_schemas.py
            kubernetes_validate.validate(copy.deepcopy(obj), KUBERNETES_VERSION, strict=True)


def test_an_overlays_own_replicas_field_would_undo_the_component(deploy_copy: Path) -> None:
    """Why prd's count is a component listed before the HPA's: with dev's `replicas:` field the
    component's removal is undone (kustomize applies the overlay's fields after its components)."""
    overlay = deploy_copy / "overlays" / "dev"
    kustomization = overlay / "kustomization.yaml"
    data = yaml.safe_load(kustomization.read_text())
    assert data["replicas"] == [{"name": "chat-api", "count": 1}]
    data["components"] = ["../../components/hpa"]
    kustomization.write_text(yaml.safe_dump(data, sort_keys=False))
    objs = kustomize(overlay)
    assert one(objs, "Deployment")["spec"]["replicas"] == 1
    assert any("spec.replicas" in p for p in hpa_problems(objs))


def test_the_component_listed_before_the_count_is_undone_too(deploy_copy: Path) -> None:
    overlay = deploy_copy / "overlays" / "prd"
    kustomization = overlay / "kustomization.yaml"
    text = kustomization.read_text()
    assert re.search(r"^  - replicas\n", text, re.MULTILINE)
    kustomization.write_text(
        text.replace(DISABLED_LINE, "").replace("  - replicas\n", COMPONENT_LINE + "\n  - replicas\n")
    )
    assert hpa_problems(kustomize(overlay)) != []


def test_hpa_problems_rejects_a_missing_or_misdirected_hpa(deploy_copy: Path) -> None:
    overlay = deploy_copy / "overlays" / "prd"
    assert hpa_problems(kustomize(overlay)) != []  # the default: no HPA
    enable(overlay)
    objs = kustomize(overlay)
    broken = copy.deepcopy(objs)
    one(broken, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] = "other"
    assert hpa_problems(broken) != []
    broken = copy.deepcopy(objs)
    one(broken, "HorizontalPodAutoscaler")["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] = "3"
    assert hpa_problems(broken) != []


def test_component_documents_metrics_server_and_docs_give_the_line() -> None:
    component = (DEPLOY / "components" / "hpa" / "kustomization.yaml").read_text()
    assert "metrics-server" in component and "Degraded" in component
    docs = (REPO / "docs" / "deploy.md").read_text()
    assert COMPONENT_LINE.strip() in docs and "metrics-server" in docs
