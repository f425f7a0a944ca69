"""The `chat-api` command: dev, serve, migrate, prune, token, revoke-streams."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from chat_api.core import otel_env
from chat_api.core.config import ConfigError, load_settings
from chat_api.core.logging import configure_logging

log = logging.getLogger("chat_api")


def check_telemetry() -> None:
    """The OTEL_* choices (exporters, protocols), checked before anything starts."""
    try:
        otel_env.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.require_database()
    settings.require_auth()
    check_telemetry()
    configure_logging(settings)
    for warning in settings.auth_warnings():
        log.warning(warning)
    from chat_api.app import create_app
    from chat_api.workers import serve

    return serve(create_app(settings), settings)


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
    from chat_api.events.pruner import prune_once

    settings = load_settings()
    settings.require_database()
    configure_logging(settings)
    deleted = asyncio.run(prune_once(settings))
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
    from chat_api.core.db import connect
    from chat_api.events.contract import CONTROL_CHANNEL

    settings = load_settings()
    settings.require_database()
    if not 0 < len(args.user) <= 255:
        print("chat-api: revoke-streams: USER must be 1 to 255 characters", file=sys.stderr)
        return 2

    async def run() -> None:
        # Every replica's hub LISTENs on the control channel and ends the user's streams.
        conn = await connect(settings)
        try:
            await conn.execute("SELECT pg_notify($1, $2)", CONTROL_CHANNEL, args.user)
        finally:
            await conn.close()

    asyncio.run(run())
    print(f"chat-api: asked every replica to end the open streams of {args.user!r}", file=sys.stderr)
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    """Prints the service's OpenAPI document (what the client libraries' types are generated from):
    built from the application, no database or key needed."""
    import json

    from chat_api.app import create_app
    from chat_api.core.config import Settings

    placeholder = Settings(
        database_url="postgresql://unused@localhost/unused", jwt_secret="x" * 32, web_client=False
    )
    print(json.dumps(create_app(placeholder).openapi(), indent=2, ensure_ascii=False))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from chat_api.devserver import run_dev

    check_telemetry()
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
    commands.add_parser(
        "openapi", help="print the OpenAPI document (no database needed; the client libraries' source)"
    ).set_defaults(run=cmd_openapi)
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
