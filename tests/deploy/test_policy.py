"""The Rego policies of deploy/policy (conftest style, one Kubernetes object as input), evaluated with
the regorus engine: the rendered overlays pass every rule, and each rule rejects its fixture."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import regorus
import yaml

from tests.deploy.manifests import POLICY_DIR, Obj

FIXTURES = Path(__file__).parent / "fixtures"
RULE_ID = re.compile(r'msg := sprintf\("\[([a-z0-9-]+)\]')


def rule_ids() -> set[str]:
    return {rule for path in POLICY_DIR.glob("*.rego") for rule in RULE_ID.findall(path.read_text())}


@pytest.fixture(scope="module")
def engine() -> regorus.Engine:
    engine = regorus.Engine()
    for path in sorted(POLICY_DIR.glob("*.rego")):
        engine.add_policy_from_file(str(path))
    return engine


def deny(engine: regorus.Engine, obj: Obj) -> set[str]:
    engine.set_input_json(json.dumps(obj))
    return set(engine.eval_rule("data.main.deny"))


def test_policies_are_package_main_with_rego_v1_rules() -> None:
    for path in POLICY_DIR.glob("*.rego"):
        text = path.read_text()
        assert re.search(r"^package main$", text, re.MULTILINE), path
        for line in text.splitlines():
            if line.startswith("deny"):
                assert line == "deny contains msg if {", f"{path.name}: {line}"


def test_rendered_overlays_pass_every_policy(engine: regorus.Engine, overlay: tuple[str, list[Obj]]) -> None:
    for obj in overlay[1]:
        assert deny(engine, obj) == set(), f"{obj['kind']}/{obj['metadata']['name']}"


def test_argocd_objects_pass_every_policy(engine: regorus.Engine, argocd_objects: list[Obj]) -> None:
    for obj in argocd_objects:
        assert deny(engine, obj) == set()


def test_the_base_alone_fails_the_image_rule(engine: regorus.Engine, base_objects: list[Obj]) -> None:
    """Why the policies run on rendered overlays: the base leaves the tag to the overlay."""
    messages = set().union(*(deny(engine, obj) for obj in base_objects))
    assert {m.split("]")[0] + "]" for m in messages} == {"[image-tag]"}


@pytest.mark.parametrize("rule", sorted(rule_ids()))
def test_rule_rejects_its_fixture(engine: regorus.Engine, rule: str) -> None:
    fixture = FIXTURES / f"{rule}.yaml"
    assert fixture.is_file(), f"rule {rule} has no failing fixture {fixture.name}"
    messages = deny(engine, yaml.safe_load(fixture.read_text()))
    assert any(m.startswith(f"[{rule}] ") for m in messages), messages


def test_every_fixture_belongs_to_a_rule() -> None:
    assert {p.stem for p in FIXTURES.glob("*.yaml")} == rule_ids()


@pytest.mark.parametrize(
    ("image", "denied"),
    [
        ("ghcr.io/product-team/chat-api:0.1.0", set()),
        ("ghcr.io/product-team/chat-api@sha256:" + "a" * 64, set()),
        ("registry.local:5000/chat-api", {"image-tag"}),
        ("registry.local:5000/chat-api:1.2.3", set()),
        ("chat-api:latest", {"image-latest"}),
    ],
)
def test_image_reference_forms(engine: regorus.Engine, image: str, denied: set[str]) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": image}]},
    }
    rules = {m[1 : m.index("]")] for m in deny(engine, pod)}
    assert rules & {"image-tag", "image-latest"} == denied
