"""deploy/seal-secrets.sh without a cluster: shellcheck finds nothing, it refuses what it does not know,
and with a stand-in kubeseal (which records how it is called and answers with the placeholder) it
writes exactly the committed SealedSecret files, piping fresh random values to `kubeseal --raw
--scope strict` for the overlay's namespace. What only a cluster can show: that the real kubeseal
accepts these flags and the controller decrypts the result (see docs/deploy.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.manifests import DEPLOY, PLACEHOLDER
from tests.support.shellcheck import shellcheck_findings

SCRIPT = DEPLOY / "seal-secrets.sh"
NAMESPACES = {"dev": "product-team-dev", "prd": "product-team"}
FILES = ("sealedsecret-chat-api-jwt.yaml", "sealedsecret-chat-db-runtime.yaml")

# Records its arguments and its stdin (one call per file in the log folder), prints the placeholder.
STUB = f"""#!/bin/sh
n=$(find "$KUBESEAL_LOG" -name '*.args' | wc -l)
printf '%s\\n' "$@" > "$KUBESEAL_LOG/$n.args"
cat > "$KUBESEAL_LOG/$n.stdin"
echo {PLACEHOLDER}
"""


def run(
    args: list[str], env: dict[str, str] | None = None, script: Path = SCRIPT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def copy_of_deploy(tmp_path: Path) -> Path:
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    return tmp_path / "deploy"


@pytest.fixture
def kubeseal(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in kubeseal and the folder where it logs its calls."""
    binary = tmp_path / "bin" / "kubeseal"
    binary.parent.mkdir()
    binary.write_text(STUB)
    binary.chmod(0o755)
    log = tmp_path / "calls"
    log.mkdir()
    return binary, log


def calls(log: Path) -> list[tuple[list[str], str]]:
    count = len(list(log.glob("*.args")))
    return [
        ((log / f"{i}.args").read_text().splitlines(), (log / f"{i}.stdin").read_text()) for i in range(count)
    ]


def test_shellcheck_finds_nothing() -> None:
    assert shellcheck_findings(SCRIPT) == (0, "")


def test_strict_bash() -> None:
    lines = SCRIPT.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    assert os.access(SCRIPT, os.X_OK)


def test_help() -> None:
    done = run(["--help"])
    assert done.returncode == 0
    assert done.stdout.startswith("Usage: deploy/seal-secrets.sh ENV")
    for word in (
        "SEALED_SECRETS_CONTROLLER_NAME",
        "SEALED_SECRETS_CONTROLLER_NAMESPACE",
        "JWT_KEEP_KEYS_FILE",
    ):
        assert word in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Usage"),
        (["staging"], "unknown environment staging"),
        (["../base"], "not an environment name"),
        (["dev", "chat-db-cnpg-app"], "unknown secret chat-db-cnpg-app"),
    ],
)
def test_refuses_what_it_does_not_know(
    args: list[str], message: str, copy_of_deploy: Path, kubeseal: tuple[Path, Path]
) -> None:
    binary, log = kubeseal
    before = {p: p.read_bytes() for p in copy_of_deploy.rglob("*") if p.is_file()}
    done = run(args, {"KUBESEAL": str(binary), "KUBESEAL_LOG": str(log)}, copy_of_deploy / "seal-secrets.sh")
    assert done.returncode == 2
    assert message in done.stderr
    assert calls(log) == []
    assert {p: p.read_bytes() for p in copy_of_deploy.rglob("*") if p.is_file()} == before


def test_without_kubeseal_it_stops_before_writing(copy_of_deploy: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in copy_of_deploy.rglob("*") if p.is_file()}
    done = run(
        ["dev"], {"KUBESEAL": str(tmp_path / "nowhere" / "kubeseal")}, copy_of_deploy / "seal-secrets.sh"
    )
    assert done.returncode == 2 and "not found" in done.stderr
    assert {p: p.read_bytes() for p in copy_of_deploy.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("env", sorted(NAMESPACES))
def test_writes_the_committed_files_with_fresh_values_sealed_strictly(
    env: str, copy_of_deploy: Path, kubeseal: tuple[Path, Path]
) -> None:
    binary, log = kubeseal
    overlay = copy_of_deploy / "overlays" / env
    for name in FILES:
        (overlay / name).unlink()
    done = run([env], {"KUBESEAL": str(binary), "KUBESEAL_LOG": str(log)}, copy_of_deploy / "seal-secrets.sh")
    assert done.returncode == 0, done.stderr
    # Byte for byte what is committed: the committed files are the script's output around the placeholder.
    for name in FILES:
        assert (overlay / name).read_text() == (DEPLOY / "overlays" / env / name).read_text(), name
    assert sorted(p.name for p in overlay.iterdir() if p.name.endswith(".tmp")) == []
    recorded = calls(log)
    assert [args[args.index("--name") + 1] for args, _ in recorded] == ["chat-api-jwt", "chat-db-runtime"]
    for args, value in recorded:
        assert args[:5] == ["--raw", "--scope", "strict", "--namespace", NAMESPACES[env]]
        assert "--controller-name" in args and "--controller-namespace" in args
        assert args[args.index("--controller-name") + 1] == "sealed-secrets-controller"
        assert args[args.index("--controller-namespace") + 1] == "kube-system"
        assert args[-1] == "--from-file=/dev/stdin"
        # 32 random bytes as hex, no newline, on stdin only (never in the arguments).
        assert re.fullmatch(r"[0-9a-f]{64}", value), value
        assert value not in " ".join(args)
    assert recorded[0][1] != recorded[1][1]


def test_values_are_fresh_on_every_run(copy_of_deploy: Path, kubeseal: tuple[Path, Path]) -> None:
    binary, log = kubeseal
    env = {"KUBESEAL": str(binary), "KUBESEAL_LOG": str(log)}
    for _ in range(2):
        assert run(["prd", "chat-api-jwt"], env, copy_of_deploy / "seal-secrets.sh").returncode == 0
    (first, _), (second, _) = [(value, args) for args, value in calls(log)]
    assert first != second


def test_controller_and_certificate_can_be_chosen(copy_of_deploy: Path, kubeseal: tuple[Path, Path]) -> None:
    binary, log = kubeseal
    env = {
        "KUBESEAL": str(binary),
        "KUBESEAL_LOG": str(log),
        "SEALED_SECRETS_CONTROLLER_NAME": "sealed-secrets",
        "SEALED_SECRETS_CONTROLLER_NAMESPACE": "sealed-secrets",
    }
    assert run(["dev", "chat-db-runtime"], env, copy_of_deploy / "seal-secrets.sh").returncode == 0
    ((args, _),) = calls(log)
    assert args[args.index("--controller-name") + 1] == "sealed-secrets"
    assert args[args.index("--controller-namespace") + 1] == "sealed-secrets"
    env["SEALED_SECRETS_CERT"] = "/certs/prd.pem"
    assert run(["dev", "chat-db-runtime"], env, copy_of_deploy / "seal-secrets.sh").returncode == 0
    args, _ = calls(log)[1]
    assert args[args.index("--cert") + 1] == "/certs/prd.pem" and "--controller-name" not in args


def test_jwt_rotation_keeps_the_old_keys_after_the_new_one(
    copy_of_deploy: Path, kubeseal: tuple[Path, Path], tmp_path: Path
) -> None:
    binary, log = kubeseal
    keep = tmp_path / "keep"
    keep.write_text("old-key-1\n\nold-key-2\n")
    env = {"KUBESEAL": str(binary), "KUBESEAL_LOG": str(log), "JWT_KEEP_KEYS_FILE": str(keep)}
    assert run(["dev", "chat-api-jwt"], env, copy_of_deploy / "seal-secrets.sh").returncode == 0
    ((_, value),) = calls(log)
    new, *kept = value.splitlines()
    assert re.fullmatch(r"[0-9a-f]{64}", new)
    assert kept == ["old-key-1", "old-key-2"]  # blank lines dropped; the new key signs
