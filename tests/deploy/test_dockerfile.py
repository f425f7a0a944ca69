"""The Dockerfile: hadolint finds nothing, and its shape matches what the manifests expect (user,
port, CMD, read-only root filesystem, no embedded PostgreSQL, no build tools in the final stage)."""

from __future__ import annotations

import re
import subprocess

from tests.deploy.manifests import (
    REPO,
    Obj,
    dockerfile_cmd,
    dockerfile_env,
    dockerfile_stages,
    executable,
    main_container,
    one,
    pod_spec,
)


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [executable("hadolint"), "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_multi_stage_on_a_pinned_slim_python() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", stage.base), stage.base
    # The wheel is built in a build stage; the runtime copies only the venv.
    final = stages[-1]
    assert final.all("COPY") == ["--from=build /opt/chat-api /opt/chat-api"]


def test_final_stage_has_no_compilers_caches_or_extras() -> None:
    stages = dockerfile_stages()
    runs = " ".join(stages[-1].all("RUN"))
    for tool in ("apt-get", "gcc", "build-essential", "pip install"):
        assert tool not in runs, tool
    build_runs = " ".join(r for stage in stages[:-1] for r in stage.all("RUN"))
    assert "--only-binary=:all:" in build_runs  # dependencies never compile
    assert "chat_api-*.whl" in build_runs and "whl[" not in build_runs  # the wheel without extras
    assert "pixeltable" not in (REPO / "Dockerfile").read_text()
    build_env = " ".join(e for stage in stages[:-1] for e in stage.all("ENV"))
    assert "PIP_NO_CACHE_DIR=1" in build_env


def test_bytecode_is_compiled_at_build_time_for_a_read_only_root() -> None:
    stages = dockerfile_stages()
    runs = [r for stage in stages for r in stage.all("RUN")]
    assert any("compileall" in r and "/opt/chat-api" in r for r in runs)
    assert any("compileall" in r and "/usr/local/lib/python3.11" in r for r in stages[-1].all("RUN"))
    assert dockerfile_env()["PYTHONDONTWRITEBYTECODE"] == "1"


def test_numeric_user_port_cmd_and_labels() -> None:
    final = dockerfile_stages()[-1]
    assert final.all("USER") == ["10001:10001"]
    assert final.all("EXPOSE") == ["8080"]
    assert dockerfile_cmd() == ["chat-api", "serve"]
    labels = " ".join(final.all("LABEL"))
    for key, arg in (("source", "SOURCE"), ("version", "VERSION"), ("revision", "REVISION")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in labels
        assert any(a.startswith(f"{arg}=") for a in final.all("ARG"))


def test_manifests_match_the_image(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["dev"]
    deployment = one(objs, "Deployment")
    user, group = dockerfile_stages()[-1].all("USER")[0].split(":")
    context = pod_spec(deployment)["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (int(user), int(group))
    port = int(dockerfile_stages()[-1].all("EXPOSE")[0])
    assert main_container(deployment)["ports"][0]["containerPort"] == port


def test_dockerignore_sends_only_the_wheel_sources() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for stage in dockerfile_stages():
        for args in stage.all("COPY"):
            if not args.startswith("--from"):
                copied.update(part.rstrip("/") for part in args.split()[:-1])
    assert copied == allowed
    assert {"pyproject.toml", "README.md", "chat_api", "migrations"} <= allowed
