"""All configuration, read from the environment in one place (see the README's table)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, Request
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chat_api.core.dburl import DatabaseTarget, DatabaseUrlError, parse_database_url

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

    jwt_secret: SecretStr | None = Field(None, validation_alias=env("CHAT_API_JWT_SECRET"))
    jwt_jwks_url: str | None = Field(None, validation_alias=env("CHAT_API_JWT_JWKS_URL"))
    jwt_issuer: str | None = Field(None, validation_alias=env("CHAT_API_JWT_ISSUER"))
    jwt_audience: str | None = Field(None, validation_alias=env("CHAT_API_JWT_AUDIENCE"))

    host: str = Field("0.0.0.0", validation_alias=env("CHAT_API_HOST"))  # noqa: S104 - a container listens on all
    port: int = Field(8080, ge=1, le=65535, validation_alias=env("CHAT_API_PORT"))

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
        if self.jwt_secret is not None and self.jwt_jwks_url is not None:
            raise ValueError("set CHAT_API_JWT_SECRET or CHAT_API_JWT_JWKS_URL, not both")
        return self

    def require_auth(self) -> None:
        if self.jwt_secret is None and self.jwt_jwks_url is None:
            raise ConfigError("CHAT_API_JWT_SECRET (or CHAT_API_JWT_JWKS_URL) is not set")

    def require_database(self) -> None:
        if self.database_url is None and self.database_url_file is None:
            raise ConfigError("DATABASE_URL (or DATABASE_URL_FILE) is not set")

    def database_target(self) -> DatabaseTarget:
        """Where to connect now. The file variant is read on every call, so a rotated secret is seen."""
        if self.database_url_file is not None:
            return parse_database_url(read_database_url_file(self.database_url_file))
        if self.database_url is not None:
            return parse_database_url(self.database_url.get_secret_value())
        raise ConfigError("DATABASE_URL (or DATABASE_URL_FILE) is not set")

    def listen_target(self) -> DatabaseTarget:
        """Where the stream hub LISTENs: a session connection, never through a transaction pooler."""
        if self.db_listen_url is not None:
            return parse_database_url(self.db_listen_url.get_secret_value())
        return self.database_target()


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
    settings: Settings = request.app.state.settings
    return settings


AppSettings = Annotated[Settings, Depends(_settings)]
