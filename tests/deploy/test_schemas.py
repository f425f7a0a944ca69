"""Every overlay renders with `kubectl kustomize`; core kinds validate strictly against the Kubernetes
schemas (kubernetes-validate, the same check as its `--strict` CLI flag), custom resources against the
upstream CRD schemas (jsonschema)."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest

from tests.deploy.manifests import (
    CRD_FILES,
    DEPLOY,
    CrdSchemas,
    Obj,
    crds_dir_from_env,
    is_custom,
    kustomize,
    one,
    require_crds_dir,
)

# The cluster version the manifests are checked against (kubernetes-validate knows 1.25 to 1.37).
KUBERNETES_VERSION = "1.34.0"

EXPECTED_KINDS = {
    "dev": {
        "ServiceAccount",
        "ConfigMap",
        "NetworkPolicy",
        "Cluster",
        "Job",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Ingress",
        "SealedSecret",
    },
}
# The HPA is opt-in (components/hpa, tests/deploy/test_hpa_component.py): prd has the same kinds.
EXPECTED_KINDS["prd"] = EXPECTED_KINDS["dev"]
# chat-api-jwt and chat-db-runtime; every other kind once.
COUNTS = {"SealedSecret": 2}


def test_overlay_renders_the_expected_objects(overlay: tuple[str, list[Obj]]) -> None:
    name, objs = overlay
    kinds = [o["kind"] for o in objs]
    assert set(kinds) == EXPECTED_KINDS[name]
    counts = {kind: kinds.count(kind) for kind in set(kinds)}
    assert counts == {kind: COUNTS.get(kind, 1) for kind in EXPECTED_KINDS[name]}, sorted(kinds)


def test_core_kinds_validate_strictly(overlay: tuple[str, list[Obj]]) -> None:
    _, objs = overlay
    core = [o for o in objs if not is_custom(o)]
    assert core
    for obj in core:
        # Raises ValidationError (unknown field, wrong type, missing required field).
        kubernetes_validate.validate(copy.deepcopy(obj), KUBERNETES_VERSION, strict=True)


def test_gateway_component_core_kinds_validate_strictly() -> None:
    objs = kustomize(DEPLOY / "components" / "gateway-api")
    for obj in objs:
        if obj["kind"] != "HTTPRoute":  # a Gateway API CRD kind: checked in test_gateway_component.py
            kubernetes_validate.validate(copy.deepcopy(obj), KUBERNETES_VERSION, strict=True)


def test_cnpg_cluster_matches_the_crd_schema(overlay: tuple[str, list[Obj]], crd_schemas: CrdSchemas) -> None:
    _, objs = overlay
    cluster = one(objs, "Cluster", "chat-db-cnpg")
    assert crd_schemas.errors(cluster) == []


def test_sealed_secrets_match_the_crd_schema(overlay: tuple[str, list[Obj]], crd_schemas: CrdSchemas) -> None:
    _, objs = overlay
    sealed = [o for o in objs if o["kind"] == "SealedSecret"]
    assert len(sealed) == 2
    for obj in sealed:
        assert is_custom(obj)
        assert crd_schemas.errors(obj) == [], obj["metadata"]["name"]


def test_argocd_objects_match_their_crd_schemas(argocd_objects: list[Obj], crd_schemas: CrdSchemas) -> None:
    kinds = sorted(o["kind"] for o in argocd_objects)
    # Per environment: the service's AppProject, Application and ImageUpdater, and the dashboards'
    # AppProject and Application.
    assert kinds == ["AppProject"] * 4 + ["Application"] * 4 + ["ImageUpdater"] * 2
    # The AppProject CRD is not in the CRD folder: test_argocd.py checks its structure explicitly.
    custom = [o for o in argocd_objects if o["kind"] != "AppProject"]
    for obj in custom:
        assert is_custom(obj)
        assert crd_schemas.errors(obj) == [], obj["metadata"]["name"]


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        # A typo the API server would prune silently.
        (
            "ImageUpdater",
            lambda o: o["spec"]["writeBackConfig"]["gitConfig"].update(writeBackTarge="x"),
            "writeBackTarge",
        ),
        ("ImageUpdater", lambda o: o["spec"]["writeBackConfig"].update(method="gti"), "does not match"),
        (
            "ImageUpdater",
            lambda o: o["spec"]["writeBackConfig"]["gitConfig"].update(
                pullRequest={"github": {}, "lables": ["x"]}
            ),
            "lables",
        ),
        (
            "ImageUpdater",
            lambda o: o["spec"]["applicationRefs"][0]["images"][0].pop("imageName"),
            "imageName",
        ),
        ("Application", lambda o: o["spec"]["syncPolicy"]["automated"].update(prune="yes"), "not of type"),
        ("Cluster", lambda o: o["spec"].update(instances="3"), "not of type"),
        ("Cluster", lambda o: o["spec"]["bootstrap"]["initdb"].update(databse="chat"), "databse"),
        (
            "Cluster",
            lambda o: o["spec"]["managed"]["roles"][0].update(passwordSecrets={"name": "x"}),
            "passwordSecrets",
        ),
        ("Cluster", lambda o: o["spec"].update(enablePDB="false"), "not of type"),
        ("SealedSecret", lambda o: o["spec"].pop("encryptedData"), "encryptedData"),
        ("SealedSecret", lambda o: o["spec"]["template"].update(stringData={"secret": "x"}), "stringData"),
    ],
    ids=[
        "unknown-field",
        "bad-method",
        "pull-request-typo",
        "missing-image-name",
        "bad-bool",
        "bad-int",
        "typo-initdb",
        "typo-role",
        "bad-pdb-bool",
        "sealed-without-data",
        "sealed-plaintext",
    ],
)
def test_crd_validation_rejects_broken_objects(
    kind: str,
    mutate: object,
    expected: str,
    argocd_objects: list[Obj],
    rendered: dict[str, list[Obj]],
    crd_schemas: CrdSchemas,
) -> None:
    source = rendered["dev"] if kind in ("Cluster", "SealedSecret") else argocd_objects
    obj = copy.deepcopy(next(o for o in source if o["kind"] == kind))
    mutate(obj)  # type: ignore[operator]
    errors = crd_schemas.errors(obj)
    assert any(expected in error for error in errors), errors


def test_crd_folder_holds_every_schema_the_tests_use(crds_dir: Path) -> None:
    for filename in CRD_FILES.values():
        assert (crds_dir / filename).is_file(), f"{crds_dir / filename} is missing"


def test_missing_crd_folder_fails_in_ci_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHAT_API_CRDS_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(
        pytest.fail.Exception, match=r"CRD schema folder .* does not exist: set CHAT_API_CRDS_DIR"
    ):
        require_crds_dir()


def test_missing_crd_folder_skips_outside_ci_with_the_same_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHAT_API_CRDS_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(
        pytest.skip.Exception, match=r"CRD schema folder .* does not exist: set CHAT_API_CRDS_DIR"
    ):
        require_crds_dir()


def test_crd_folder_defaults_beside_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAT_API_CRDS_DIR", raising=False)
    assert crds_dir_from_env().parts[-2:] == ("shared", "crds")
