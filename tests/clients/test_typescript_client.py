"""chat-api-client (clients/typescript): its generated types and the web client's copy are current,
its version is the service's, and Node's test runner drives it against live `chat-api serve`
processes: the whole API, and the stream helper's resume across two processes, reset, reauth,
typing and dedupe (clients/typescript/test/*.test.mjs)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import chat_api
from tests.support.settings import TEST_SECRET
from tests.support.typescript import LIBRARY, REPO, build, run_node
from tests.support.workers import ServeProcess, serve_process

# The streams' heartbeat, which also ends streams whose token expired (the reauth test's 2 s tokens).
HEARTBEAT = {"CHAT_API_STREAM_HEARTBEAT_SECONDS": "0.3"}


@pytest.fixture(scope="module")
def built() -> None:
    build()


@pytest.fixture(scope="module")
def server(runtime_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serve_process(runtime_url, tmp_path_factory.mktemp("ts-client"), "b", **HEARTBEAT) as b:
        b.wait_ready(1)
        yield b


def node_env(server: ServeProcess, database_url: str, **extra: str) -> dict[str, str]:
    return {
        "CHAT_API_TEST_URL": server.url,
        "CHAT_API_TEST_SECRET": TEST_SECRET,
        "CHAT_API_TEST_VERSION": chat_api.__version__,
        # How the reset test makes its cursor stale: ages the room's events and prunes the log.
        "CHAT_API_TEST_AGE_EVENTS": json.dumps(
            [sys.executable, "-m", "tests.support.eventlog", database_url]
        ),
        "PYTHONPATH": str(REPO),
        **extra,
    }


def test_the_library_is_versioned_with_the_service() -> None:
    package = json.loads((LIBRARY / "package.json").read_text())
    lock = json.loads((LIBRARY / "package-lock.json").read_text())
    exported = re.search(r'VERSION = "([^"]+)"', (LIBRARY / "src" / "version.ts").read_text())
    assert exported is not None
    versions = {package["version"], lock["version"], lock["packages"][""]["version"], exported.group(1)}
    service = chat_api.__version__
    assert versions == {service}, f"clients/typescript is {versions}, the service {service}"


def test_the_generated_types_are_those_of_the_services_openapi_document() -> None:
    """src/schema.ts is what openapi-typescript makes of `chat-api openapi` now: an API change that
    was not regenerated fails here."""
    cli = Path(sys.executable).with_name("chat-api")
    run_node("scripts/generate.mjs", "--check", env={"CHAT_API_CLI": str(cli)})


def test_the_web_client_serves_a_fresh_build_of_the_library() -> None:
    run_node("scripts/vendor.mjs", "--check")


def test_unit_tests_of_the_parser_and_the_stream_helper(built: None) -> None:
    run_node("--test", "--test-reporter=spec", "test/unit.test.mjs")


def test_the_whole_api_against_a_live_server(built: None, server: ServeProcess, database_url: str) -> None:
    run_node("--test", "--test-reporter=spec", "test/api.test.mjs", env=node_env(server, database_url))


async def test_the_stream_helper_against_live_servers(
    built: None, server: ServeProcess, runtime_url: str, database_url: str, tmp_path: Path
) -> None:
    """Process A is killed mid-stream by the first test (the helper resumes on B, this module's
    server); then reset, reauth, early renewal, typing and dedupe against B."""
    with serve_process(runtime_url, tmp_path, "a", **HEARTBEAT) as a:
        await asyncio.to_thread(a.wait_ready, 1)
        env = node_env(server, database_url, CHAT_API_TEST_URL_A=a.url, CHAT_API_TEST_PID_A=str(a.pid))
        await asyncio.to_thread(run_node, "--test", "--test-reporter=spec", "test/stream.test.mjs", env=env)
        assert a.proc.poll() is not None, "the cut test killed process A"
