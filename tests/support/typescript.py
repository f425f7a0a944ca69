"""The TypeScript client library (clients/typescript) seen from pytest: where it is, whether Node and
its locked npm modules are there, and `node` run on its scripts and tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.missing import missing

REPO = Path(__file__).resolve().parents[2]
LIBRARY = REPO / "clients" / "typescript"
TSC = LIBRARY / "node_modules" / "typescript" / "bin" / "tsc"
NODE_TIMEOUT = 300  # seconds: a deadline for a hung run, never a measurement


def require_node() -> str:
    """The node binary; skips without Node or the npm modules on a developer's machine, fails in CI
    (.ci/run installs both: `npm ci` in clients/typescript)."""
    node = shutil.which("node")
    needed = []
    if node is None:
        needed.append("node (apt-get install nodejs npm)")
    if not TSC.exists():
        needed.append(f"the npm modules of {LIBRARY.relative_to(REPO)} (npm ci there)")
    if needed:
        missing("the TypeScript client's tests need " + " and ".join(needed))
    assert node is not None
    return node


def run_node(*args: str, env: dict[str, str] | None = None, timeout: float = NODE_TIMEOUT) -> str:
    """`node ARGS` in clients/typescript; fails the test with node's output unless it exits 0."""
    node = require_node()
    done = subprocess.run(
        [node, *args],
        cwd=LIBRARY,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"node {' '.join(args)} exited with {done.returncode}:\n{output}", pytrace=False)
    print(output)  # shown with -rP or -s: which Node tests ran, and how long each took
    return output


def build() -> None:
    """`tsc` into clients/typescript/dist, which the Node tests import."""
    run_node(str(TSC), "-p", ".")
