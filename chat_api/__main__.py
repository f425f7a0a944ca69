"""`python -m chat_api ...` is the same as the `chat-api` command."""

from chat_api.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
