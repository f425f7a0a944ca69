"""Fixtures of the deploy tests: rendered overlays (once per session) and the CRD schema folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.manifests import DEPLOY, OVERLAYS, CrdSchemas, Obj, kustomize, require_crds_dir


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Obj]]:
    """Every overlay rendered with `kubectl kustomize`, by name."""
    return {name: kustomize(DEPLOY / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def base_objects() -> list[Obj]:
    return kustomize(DEPLOY / "base")


@pytest.fixture(scope="session")
def argocd_entry_points() -> dict[str, list[Obj]]:
    """What each cluster's app-of-apps syncs (deploy/argocd/<env>), rendered, by environment."""
    return {name: kustomize(DEPLOY / "argocd" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def argocd_objects(argocd_entry_points: dict[str, list[Obj]]) -> list[Obj]:
    """The ArgoCD objects of every environment together."""
    return [obj for name in OVERLAYS for obj in argocd_entry_points[name]]


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, list[Obj]]) -> tuple[str, list[Obj]]:
    name = str(request.param)
    return name, rendered[name]


@pytest.fixture(scope="session")
def crds_dir() -> Path:
    return require_crds_dir()


@pytest.fixture(scope="session")
def crd_schemas(crds_dir: Path) -> CrdSchemas:
    return CrdSchemas(crds_dir)
