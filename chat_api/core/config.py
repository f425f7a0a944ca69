"""All configuration, read from the environment in one place (see the README's table)."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from chat_api.core.dburl import SSL_MODES, DatabaseTarget, DatabaseUrlError, parse_database_url
from chat_api.core.secretfile import SecretFile, read_text

MIN_HS256_SECRET_CHARS = 32


def env(name: str) -> AliasChoices:
    """Binds a field to exactly one environment variable (no prefix magic, no case games)."""
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_ignore_empty=True, extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: SecretStr | None = Field(None, validation_alias=env("DATABASE_URL"))
    database_url_file: Path | None = Field(None, validation_alias=env("DATABASE_URL_FILE"))
    # The password alone (key `password` of a CloudNativePG role's basic-auth secret, mounted): it
    # overrides the URL's and is read for every new connection.
    db_password_file: Path | None = Field(None, validation_alias=env("CHAT_API_DB_PASSWORD_FILE"))
    # libpq's own variables, made explicit so they are checked at start-up and applied to every
    # connection (pool, LISTEN, migrate) whose URI does not set the parameter itself.
    pg_sslmode: str | None = Field(None, validation_alias=env("PGSSLMODE"))
    pg_sslrootcert: Path | None = Field(None, validation_alias=env("PGSSLROOTCERT"))

    jwt_secret: SecretStr | None = Field(None, validation_alias=env("CHAT_API_JWT_SECRET"))
    # HS256 keys, one per line: the first signs, every one verifies (rotation without a restart).
    jwt_secret_file: Path | None = Field(None, validation_alias=env("CHAT_API_JWT_SECRET_FILE"))
    jwt_jwks_url: str | None = Field(None, validation_alias=env("CHAT_API_JWT_JWKS_URL"))
    jwt_issuer: str | None = Field(None, validation_alias=env("CHAT_API_JWT_ISSUER"))
    jwt_audience: str | None = Field(None, validation_alias=env("CHAT_API_JWT_AUDIENCE"))
    # The longest lifetime (exp - iat) of an accepted token; `iat` is then required. 0: no limit.
    jwt_max_lifetime_seconds: int = Field(
        86400, ge=0, validation_alias=env("CHAT_API_JWT_MAX_LIFETIME_SECONDS")
    )

    # Keys the web client's stream cookie (chat_api/auth/streamcookie.py); needed only with a JWKS
    # and the web client on: otherwise the key is derived from the HS256 keys.
    stream_cookie_secret: SecretStr | None = Field(
        None, validation_alias=env("CHAT_API_STREAM_COOKIE_SECRET")
    )

    host: str = Field("0.0.0.0", validation_alias=env("CHAT_API_HOST"))  # noqa: S104 - a container listens on all
    port: int = Field(8080, ge=1, le=65535, validation_alias=env("CHAT_API_PORT"))
    # The HTTP server's own limits (chat_api/server.py). Open streams count towards the connections.
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=300, validation_alias=env("CHAT_API_HEADER_TIMEOUT_SECONDS")
    )
    keepalive_timeout_seconds: int = Field(
        5, ge=1, le=3600, validation_alias=env("CHAT_API_KEEPALIVE_TIMEOUT_SECONDS")
    )
    limit_concurrency: int = Field(
        10_000, ge=1, le=1_000_000, validation_alias=env("CHAT_API_LIMIT_CONCURRENCY")
    )
    # Peers (IPs or CIDR networks) whose X-Forwarded-For/-Proto are believed: the ingress. None by default.
    forwarded_allow_ips: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias=env("CHAT_API_FORWARDED_ALLOW_IPS")
    )

    # Server processes on one listening socket (chat_api/workers.py), for single-host installs; on
    # Kubernetes keep 1 and scale replicas. Each process has its own pool and hub.
    workers: int = Field(1, ge=1, le=64, validation_alias=env("CHAT_API_WORKERS"))

    db_pool_size: int = Field(10, ge=1, le=1000, validation_alias=env("CHAT_API_DB_POOL_SIZE"))
    db_pool_max_overflow: int = Field(
        10, ge=0, le=1000, validation_alias=env("CHAT_API_DB_POOL_MAX_OVERFLOW")
    )
    db_statement_cache: bool = Field(True, validation_alias=env("CHAT_API_DB_STATEMENT_CACHE"))
    # Seconds a request waits for a pooled connection or a statement before it is answered 503.
    db_timeout: float = Field(10.0, gt=0, le=300, validation_alias=env("CHAT_API_DB_TIMEOUT"))

    # A direct (session) connection for LISTEN; needed when DATABASE_URL goes through PgBouncer in
    # transaction mode. Defaults to the database URL itself.
    db_listen_url: SecretStr | None = Field(None, validation_alias=env("CHAT_API_DB_LISTEN_URL"))
    # `chat-api migrate` grants this role (the server's own login, without DDL rights) what the
    # server needs on every table; unset, it grants nothing.
    db_runtime_role: str | None = Field(
        None, min_length=1, max_length=63, validation_alias=env("CHAT_API_DB_RUNTIME_ROLE")
    )

    # Per-user limits on every write and on stream opens (core/ratelimit.py); false turns them all off.
    rate_limits: bool = Field(True, validation_alias=env("CHAT_API_RATE_LIMITS"))
    # Sends per second per user in each process (a token bucket; 0 turns the limit off).
    send_rate_per_second: float = Field(20.0, ge=0, validation_alias=env("CHAT_API_SEND_RATE_PER_SECOND"))
    send_rate_burst: int = Field(60, ge=1, validation_alias=env("CHAT_API_SEND_RATE_BURST"))

    max_message_chars: int = Field(4000, ge=1, le=60000, validation_alias=env("CHAT_API_MAX_MESSAGE_CHARS"))

    event_retention_seconds: int = Field(
        7 * 24 * 3600, ge=60, validation_alias=env("CHAT_API_EVENT_RETENTION_SECONDS")
    )
    # How often the service prunes the event log (one replica at a time); 0 leaves it to `chat-api prune`.
    event_prune_interval_seconds: int = Field(
        600, ge=0, validation_alias=env("CHAT_API_EVENT_PRUNE_INTERVAL_SECONDS")
    )
    stream_heartbeat_seconds: float = Field(
        15.0, gt=0, le=300, validation_alias=env("CHAT_API_STREAM_HEARTBEAT_SECONDS")
    )
    stream_max_per_user: int = Field(10, ge=1, le=1000, validation_alias=env("CHAT_API_STREAM_MAX_PER_USER"))
    # Events queued for one stream before it counts as too slow and is closed (it resumes by cursor).
    stream_buffer_events: int = Field(
        1000, ge=10, le=100_000, validation_alias=env("CHAT_API_STREAM_BUFFER_EVENTS")
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=env("CHAT_API_LOG_LEVEL")
    )
    log_format: Literal["json", "console"] = Field("json", validation_alias=env("CHAT_API_LOG_FORMAT"))

    # /docs, /redoc and /openapi.json; `chat-api dev` turns them on, `serve` hides them by default.
    docs: bool = Field(False, validation_alias=env("CHAT_API_DOCS"))

    # The browser client at / (chat_api/web); `chat-api dev` turns it on.
    web_client: bool = Field(False, validation_alias=env("CHAT_API_WEB_CLIENT"))

    # The password file's last good content (see SecretFile): shared by every connection.
    _db_password: SecretFile[str] | None = PrivateAttr(None)

    def model_post_init(self, context: Any) -> None:
        if self.db_password_file is not None:
            self._db_password = SecretFile(self.db_password_file, parse_password, "CHAT_API_DB_PASSWORD_FILE")

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _addresses(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        items = tuple(item.strip() for item in value.split(",") if item.strip())
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return items

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url", "db_listen_url")
    @classmethod
    def _valid_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                parse_database_url(value.get_secret_value())
            except DatabaseUrlError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("database_url_file")
    @classmethod
    def _valid_database_url_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_database_url_file(value)
        return value

    @field_validator("db_password_file")
    @classmethod
    def _valid_password_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            parse_password(read_text(value))
        return value

    @field_validator("pg_sslmode")
    @classmethod
    def _valid_sslmode(cls, value: str | None) -> str | None:
        if value is not None and value not in SSL_MODES:
            raise ValueError(f"{value!r} is not one of {', '.join(sorted(SSL_MODES))}")
        return value

    @field_validator("pg_sslrootcert")
    @classmethod
    def _existing_root_cert(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {str(value)!r} does not exist")
        return value

    @field_validator("jwt_secret_file")
    @classmethod
    def _valid_jwt_secret_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            parse_jwt_keys(read_text(value))
        return value

    @field_validator("stream_cookie_secret")
    @classmethod
    def _strong_cookie_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_HS256_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_HS256_SECRET_CHARS} characters")
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_HS256_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_HS256_SECRET_CHARS} characters for HS256")
        return value

    @field_validator("jwt_jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> Settings:
        given = [
            name
            for name, value in (
                ("CHAT_API_JWT_SECRET", self.jwt_secret),
                ("CHAT_API_JWT_SECRET_FILE", self.jwt_secret_file),
                ("CHAT_API_JWT_JWKS_URL", self.jwt_jwks_url),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise ValueError(f"set only one of {', '.join(given[:-1])} and {given[-1]}")
        return self

    def require_auth(self) -> None:
        if self.jwt_secret is None and self.jwt_secret_file is None and self.jwt_jwks_url is None:
            raise ConfigError(
                "CHAT_API_JWT_SECRET (or CHAT_API_JWT_SECRET_FILE, or CHAT_API_JWT_JWKS_URL) is not set"
            )
        if self.jwt_jwks_url is not None:
            # An identity provider signs tokens for many services with the same keys: without both
            # checks a token it made for any of them would be accepted here.
            for name, value in (
                ("CHAT_API_JWT_AUDIENCE", self.jwt_audience),
                ("CHAT_API_JWT_ISSUER", self.jwt_issuer),
            ):
                if value is None:
                    raise ConfigError(f"{name} is not set (required with CHAT_API_JWT_JWKS_URL)")

    def auth_warnings(self) -> list[str]:
        """What `serve` warns about at start-up: settings that work but check less than they could."""
        if self.jwt_jwks_url is None and (self.jwt_audience is None or self.jwt_issuer is None):
            return [
                "CHAT_API_JWT_AUDIENCE and CHAT_API_JWT_ISSUER are not both set: HS256 tokens are "
                "accepted for any audience and issuer; set them if other services share the key"
            ]
        return []

    def jwt_signing_secret(self) -> str | None:
        """The HS256 key that signs: CHAT_API_JWT_SECRET, else the first key in the file (read now)."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        if self.jwt_secret_file is not None:
            try:
                return parse_jwt_keys(read_text(self.jwt_secret_file))[0]
            except ValueError as exc:
                raise ConfigError(f"CHAT_API_JWT_SECRET_FILE: {exc}") from None
        return None

    def require_database(self) -> None:
        if self.database_url is None and self.database_url_file is None:
            raise ConfigError("DATABASE_URL (or DATABASE_URL_FILE) is not set")

    def database_target(self) -> DatabaseTarget:
        """Where to connect now. The files are read on every call, so a rotated secret is seen."""
        if self.database_url_file is not None:
            return self._target(read_database_url_file(self.database_url_file))
        if self.database_url is not None:
            return self._target(self.database_url.get_secret_value())
        raise ConfigError("DATABASE_URL (or DATABASE_URL_FILE) is not set")

    def listen_target(self) -> DatabaseTarget:
        """Where the stream hub LISTENs: a session connection, never through a transaction pooler."""
        if self.db_listen_url is not None:
            return self._target(self.db_listen_url.get_secret_value())
        return self.database_target()

    def _target(self, raw: str) -> DatabaseTarget:
        """The URI with PGSSLMODE/PGSSLROOTCERT where it sets neither, and the password file's password."""
        defaults = {}
        if self.pg_sslmode is not None:
            defaults["sslmode"] = self.pg_sslmode
        if self.pg_sslrootcert is not None:
            defaults["sslrootcert"] = str(self.pg_sslrootcert)
        target = parse_database_url(raw, defaults=defaults)
        if self._db_password is not None:
            target = dataclasses.replace(target, password=self._db_password.reread())
        return target


class ConfigError(Exception):
    """A configuration problem, worded as one line that names the variable."""


def read_database_url_file(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        parse_database_url(text)
    except DatabaseUrlError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return text


def parse_password(text: str) -> str:
    """A password file's content: one trailing newline is not part of the password."""
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise ValueError("the file is empty")
    return password


def parse_jwt_keys(text: str) -> tuple[str, ...]:
    """HS256 keys, one per line (blank lines and surrounding whitespace ignored); the first signs."""
    keys = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not keys:
        raise ValueError("the file holds no key")
    for number, key in enumerate(keys, 1):
        if len(key) < MIN_HS256_SECRET_CHARS:
            raise ValueError(f"key {number} is shorter than {MIN_HS256_SECRET_CHARS} characters (HS256)")
    return keys


def load_settings(**overrides: object) -> Settings:
    """Reads the environment; a bad value raises ConfigError naming the variable, never its secret."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    first = exc.errors(include_input=False, include_url=False)[0]
    name = ".".join(str(part) for part in first["loc"]) or "configuration"
    message = first["msg"].removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    return f"{name}: {message}" + (f" (and {more} more)" if more else "")


# async, though it awaits nothing: FastAPI runs plain `def` dependencies in a thread pool.
async def _settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


AppSettings = Annotated[Settings, Depends(_settings)]


async def _draining(request: Request) -> asyncio.Event:
    draining: asyncio.Event = request.state.draining
    return draining


# Set once shutdown begins (readiness turns 503, streams end).
Draining = Annotated[asyncio.Event, Depends(_draining)]
