"""Turns a libpq database URI (as CloudNativePG writes it) into what asyncpg's connect() needs."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg"}
SSL_MODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}
# Query parameters passed on to asyncpg's own libpq-compatible DSN parser (`host` may name a
# unix-socket directory, as in libpq).
PASSED_ON = {"sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "host", "port"}
# Query parameters the service turns into connect() arguments itself.
HANDLED_HERE = {"connect_timeout"}
ALLOWED = PASSED_ON | HANDLED_HERE


class DatabaseUrlError(ValueError):
    """The URI cannot be used; the message is one line and never contains the password."""


@dataclass(frozen=True)
class DatabaseTarget:
    dsn: str  # postgresql:// URI for asyncpg, secrets included: never log it
    connect_timeout: float | None
    redacted: str  # the same URI with the password replaced, safe to log
    # From CHAT_API_DB_PASSWORD_FILE: passed to connect() beside the DSN, where it wins over the DSN's.
    password: str | None = field(default=None, repr=False)

    def connect_kwargs(self) -> dict[str, object]:
        kwargs: dict[str, object] = {"dsn": self.dsn}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.connect_timeout is not None:
            kwargs["timeout"] = self.connect_timeout
        return kwargs


def parse_database_url(raw: str, defaults: Mapping[str, str] | None = None) -> DatabaseTarget:
    """`defaults`: query parameters for when the URI does not give them (PGSSLMODE, PGSSLROOTCERT)."""
    raw = raw.strip()
    try:
        parts = urllib.parse.urlsplit(raw)
    except ValueError as exc:
        raise DatabaseUrlError(f"not a valid URI ({exc})") from None
    if parts.scheme not in SCHEMES:
        shown = parts.scheme or "(none)"
        raise DatabaseUrlError(
            f"scheme must be postgresql://, postgres:// or postgresql+asyncpg://, not {shown}"
        )
    if not parts.netloc and "host=" not in parts.query:
        raise DatabaseUrlError("no host in the URI")
    try:
        port = parts.port
    except ValueError:
        raise DatabaseUrlError("the port is not a number") from None
    if port == 0:
        raise DatabaseUrlError("the port is not valid")

    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False)
    seen: dict[str, str] = {}
    for key, value in query:
        if not key.replace("_", "").isalnum():
            # Never echo it: this is what an un-encoded `?` inside a password looks like.
            raise DatabaseUrlError(
                "the query string is malformed (percent-encode special characters in the password)"
            )
        if key not in ALLOWED:
            allowed = ", ".join(sorted(ALLOWED))
            raise DatabaseUrlError(f"unsupported query parameter {key!r} (supported: {allowed})")
        if key in seen:
            raise DatabaseUrlError(f"query parameter {key!r} is given twice")
        seen[key] = value
    for key, value in (defaults or {}).items():
        seen.setdefault(key, value)

    mode = seen.get("sslmode")
    if mode is not None and mode not in SSL_MODES:
        raise DatabaseUrlError(f"sslmode {mode!r} is not one of {', '.join(sorted(SSL_MODES))}")
    for key in ("sslrootcert", "sslcert", "sslkey"):
        if key in seen and not Path(seen[key]).is_file():
            raise DatabaseUrlError(f"{key} file {seen[key]!r} does not exist")

    timeout: float | None = None
    if "connect_timeout" in seen:
        try:
            timeout = float(int(seen.pop("connect_timeout")))
        except ValueError:
            raise DatabaseUrlError("connect_timeout must be a whole number of seconds") from None
        # libpq: zero or negative means wait forever; anything below 2 s is raised to 2 s.
        timeout = None if timeout <= 0 else max(timeout, 2.0)

    netloc = parts.netloc
    if "host" in seen:
        # libpq: a host given as a parameter wins over the URI's. asyncpg would ignore it when the URI
        # names a host or a port, so move the port to a parameter and keep only the user part.
        userinfo, at, _ = netloc.rpartition("@")
        if port is not None:
            seen.setdefault("port", str(port))
        netloc = userinfo + at
    rest = urllib.parse.urlencode(list(seen.items()))
    dsn = f"postgresql://{netloc}{parts.path}" + (f"?{rest}" if rest else "")
    return DatabaseTarget(dsn=dsn, connect_timeout=timeout, redacted=redact(dsn))


def redact(uri: str) -> str:
    """The URI with any password replaced by ***."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{user}:***@{hostinfo}{parts.path}{query}"
