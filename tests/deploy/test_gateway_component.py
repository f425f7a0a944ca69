"""The optional Gateway API component: enabled in an overlay it adds an HTTPRoute to the Service and a
NetworkPolicy for the gateway's namespace, and changes nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.deploy.manifests import DEPLOY, Obj, changed_leaves, kustomize, one, pod_labels, selects

HOST = "chat.dev.example.com"


def enable(overlay: Path) -> None:
    """What docs/deploy.md tells a tenant to add to an overlay's kustomization."""
    kustomization = overlay / "kustomization.yaml"
    data = yaml.safe_load(kustomization.read_text())
    data["components"] = ["../../components/gateway-api"]
    data["patches"].append(
        {
            "target": {"kind": "HTTPRoute", "name": "chat-api"},
            "patch": yaml.safe_dump([{"op": "replace", "path": "/spec/hostnames/0", "value": HOST}]),
        }
    )
    kustomization.write_text(yaml.safe_dump(data, sort_keys=False))


def test_component_adds_a_route_and_a_policy_and_changes_nothing_else(tmp_path: Path) -> None:
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    overlay = tmp_path / "deploy" / "overlays" / "dev"
    before = kustomize(overlay)
    enable(overlay)
    after = kustomize(overlay)
    added = [
        o
        for o in after
        if (o["kind"], o["metadata"]["name"]) not in {(b["kind"], b["metadata"]["name"]) for b in before}
    ]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in added) == [
        ("HTTPRoute", "chat-api"),
        ("NetworkPolicy", "chat-api-from-gateway"),
    ]
    kept = [o for o in after if o not in added]
    assert changed_leaves(before, kept) == set()

    route = one(after, "HTTPRoute")
    service = one(after, "Service")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["metadata"]["namespace"] == service["metadata"]["namespace"] == "product-team-dev"
    assert route["spec"]["hostnames"] == [HOST]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}
    ]
    assert rule["timeouts"] == {"request": "0s"}  # event streams stay open

    policy: Obj = one(after, "NetworkPolicy", "chat-api-from-gateway")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(one(after, "Deployment")))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]


def test_overlays_do_not_enable_the_component_by_default(rendered: dict[str, list[Obj]]) -> None:
    for objs in rendered.values():
        assert [o for o in objs if o["kind"] == "HTTPRoute"] == []
