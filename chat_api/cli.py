"""The `chat-api` command: dev, serve, migrate, prune, token, revoke-streams."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from chat_api.core.config import ConfigError, load_settings
from chat_api.core.logging import configure_logging

log = logging.getLogger("chat_api")

# uvicorn waits this long for open requests after SIGTERM; streams end at once (the app drains
# them), so this only bounds slow ordinary requests. Keep it below the pod's grace period (30 s).
GRACEFUL_SHUTDOWN_SECONDS = 20


class Server(uvicorn.Server):
    """uvicorn, plus: the first SIGTERM/SIGINT starts the app's drain (readiness 503, streams end)."""

    def __init__(self, config: uvicorn.Config, draining: asyncio.Event) -> None:
        super().__init__(config)
        self.draining = draining

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        try:
            asyncio.get_running_loop().call_soon_threadsafe(self.draining.set)
        except RuntimeError:  # no loop running yet or any more
            self.draining.set()
        super().handle_exit(sig, frame)


def run_server(app: FastAPI, host: str, port: int, *, behind_proxy: bool) -> None:
    """uvicorn with uvloop and httptools, one process. Behind a proxy (the ingress) it takes the
    client address and scheme from X-Forwarded-* headers; the NetworkPolicy admits only the ingress."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=behind_proxy,
        forwarded_allow_ips="*" if behind_proxy else None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    Server(config, app.state.draining).run()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.require_database()
    settings.require_auth()
    configure_logging(settings)
    for warning in settings.auth_warnings():
        log.warning(warning)
    from chat_api.app import create_app

    run_server(create_app(settings), settings.host, settings.port, behind_proxy=True)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from chat_api.core.migrations import MigrationError, migrate

    settings = load_settings()
    settings.require_database()
    configure_logging(settings)
    try:
        asyncio.run(migrate(settings, args.to))
    except MigrationError as exc:
        print(f"chat-api: migrate: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from chat_api.core.db import new_engine
    from chat_api.events.reader import prune

    settings = load_settings()
    settings.require_database()
    configure_logging(settings)

    async def run() -> int:
        engine = new_engine(settings)
        try:
            return await prune(engine, settings.event_retention_seconds)
        finally:
            await engine.dispose()

    deleted = asyncio.run(run())
    log.info("pruned %d events older than %d s", deleted, settings.event_retention_seconds)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from chat_api.auth.tokens import mint_token

    settings = load_settings()
    secret = settings.jwt_signing_secret()
    if secret is None:
        raise ConfigError(
            "CHAT_API_JWT_SECRET (or CHAT_API_JWT_SECRET_FILE) is not set (tokens are signed with it)"
        )
    longest = settings.jwt_max_lifetime_seconds
    if longest and args.ttl > longest:
        print(
            f"chat-api: token: --ttl {args.ttl} is longer than CHAT_API_JWT_MAX_LIFETIME_SECONDS "
            f"({longest}): the service would refuse the token",
            file=sys.stderr,
        )
        return 2
    print(mint_token(secret, args.sub, args.ttl))
    return 0


def cmd_revoke_streams(args: argparse.Namespace) -> int:
    import asyncpg

    from chat_api.events.log import CONTROL_CHANNEL

    settings = load_settings()
    settings.require_database()
    if not 0 < len(args.user) <= 255:
        print("chat-api: revoke-streams: USER must be 1 to 255 characters", file=sys.stderr)
        return 2

    async def run() -> None:
        # Every replica's hub LISTENs on the control channel and ends the user's streams.
        conn = await asyncpg.connect(**settings.database_target().connect_kwargs())
        try:
            await conn.execute("SELECT pg_notify($1, $2)", CONTROL_CHANNEL, args.user)
        finally:
            await conn.close()

    asyncio.run(run())
    print(f"chat-api: asked every replica to end the open streams of {args.user!r}", file=sys.stderr)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from chat_api.devserver import run_dev

    return run_dev()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="chat-api", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("dev", help="run locally with an embedded PostgreSQL (zero set-up)").set_defaults(
        run=cmd_dev
    )
    commands.add_parser("serve", help="serve HTTP (production; needs DATABASE_URL)").set_defaults(
        run=cmd_serve
    )
    migrate = commands.add_parser(
        "migrate", help="upgrade the database schema to head (safe to run twice at once)"
    )
    migrate.add_argument(
        "--to",
        metavar="REV",
        help="move to this revision instead: a downgrade when it is below the current one (or `base`)",
    )
    migrate.set_defaults(run=cmd_migrate)
    commands.add_parser(
        "prune", help="delete events older than CHAT_API_EVENT_RETENTION_SECONDS from the event log"
    ).set_defaults(run=cmd_prune)
    token = commands.add_parser(
        "token",
        help="print an HS256 bearer token (CHAT_API_JWT_SECRET, or CHAT_API_JWT_SECRET_FILE's first key)",
    )
    token.add_argument("sub", help="the user id (the token's subject)")
    token.add_argument("--ttl", type=int, default=3600, metavar="SECONDS", help="lifetime (default 3600)")
    token.set_defaults(run=cmd_token)
    revoke = commands.add_parser(
        "revoke-streams",
        help="end USER's open event streams on every replica now (each gets `event: reauth`)",
    )
    revoke.add_argument("user", metavar="USER", help="the user id (a token's subject)")
    revoke.set_defaults(run=cmd_revoke_streams)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"chat-api: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
