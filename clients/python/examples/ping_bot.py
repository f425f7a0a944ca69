"""A bot that answers "pong" to every "ping" in every room it is in, rooms it is added to later
included, and never answers one twice: not across a server restart (the stream resumes from its last
id and applies each change once), and not across its own crash, even one between answering and saving
its place (the answer's Idempotency-Key is derived from the ping, so sending it again is a no-op).

    CHAT_API_URL=http://localhost:8080 CHAT_API_TOKEN=<the bot's JWT> python ping_bot.py

CHAT_API_TOKEN_FILE instead of CHAT_API_TOKEN: the token is read from that file on every request (a
token an operator renews in place). PING_BOT_STATE: where the bot keeps its place (ping_bot.cursor).
Run it under something that restarts it (systemd, a Deployment): an error it cannot retry ends it, and
the next run continues from its place.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from chat_api_client import ChatClient, Event, Reset, Typing


def token_provider(*, refresh: bool) -> str:
    """The token, read again for every request (and for a fresh one after a 401 or a reauth)."""
    if path := os.environ.get("CHAT_API_TOKEN_FILE"):
        return Path(path).read_text().strip()
    return os.environ["CHAT_API_TOKEN"]


def save(state: Path, cursor: str) -> None:
    """Write, then rename: a crash leaves the old place or the new one, never half of one."""
    partial = state.with_suffix(".partial")
    partial.write_text(cursor)
    partial.replace(state)


def main() -> int:
    state = Path(os.environ.get("PING_BOT_STATE", "ping_bot.cursor"))
    with ChatClient(os.environ["CHAT_API_URL"], token_provider) as client:
        me = client.user_id()
        if state.exists():
            cursor = state.read_text().strip()
        else:  # first start: from now on, with no gap after this point
            cursor = client.list_rooms(limit=1)["stream_cursor"]
            save(state, cursor)
        print(f"{me} listening from {cursor}", flush=True)

        def on_reset(reset: Reset) -> None:
            # The bot keeps no state but its place: the pings it missed are older than the log.
            print(f"reset: continuing from {reset.cursor}", flush=True)

        stream = client.stream(cursor, on_reset=on_reset)
        for item in stream:
            if isinstance(item, Event) and item.kind == "message.created":
                message = item.message
                if message["sender"] != me and (message["body"] or "").strip().lower() == "ping":
                    pong = client.send_message(
                        message["room_id"],
                        "pong",
                        reply_to=message["seq"],
                        idempotency_key=f"pong:{message['id']}",  # the same for every try at this ping
                    )
                    print(f"pong {pong['room_id']} {message['seq']} -> {pong['seq']}", flush=True)
            if stream.cursor and not isinstance(item, Typing):  # typing moves no cursor
                save(state, stream.cursor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
