"""The tests' settings and URLs: the test secret, the session's runtime role, make_settings."""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Any

from chat_api.core.config import Settings, load_settings

TEST_SECRET = "test-secret-" + "x" * 32
# The servers of the tests log in as a runtime role without DDL rights, as in the overlays (a hyphen
# in the name, like theirs, so quoting is exercised). Roles belong to the whole PostgreSQL server:
# one per test session, dropped at its end.
RUNTIME_ROLE = f"chat-runtime-test-{uuid.uuid4().hex[:8]}"
RUNTIME_PASSWORD = "runtime-" + uuid.uuid4().hex  # trust auth ignores it; testcontainers needs one


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def with_user(url: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    login = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{login}@{host}"))


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "database_url_file": None,
        "jwt_secret": TEST_SECRET,
        "jwt_jwks_url": None,
        "jwt_issuer": None,
        "jwt_audience": None,
        "db_pool_size": 5,
        "db_pool_max_overflow": 10,
        "rate_limits": False,  # off unless a test turns them on (tests/test_rate_limits.py)
        "send_rate_per_second": 0,
    }
    values.update(overrides)
    return load_settings(**values)
