"""The Python client's stream rules without a server: the SSE parser and what each frame does to the
stream's place and its per-room high-water marks."""

from __future__ import annotations

import json

from tests.support.clients import require_python_client

require_python_client()

from chat_api_client.stream import REAUTH, Event, Parser, Reset, StreamState, Typing, _Connection  # noqa: E402


def frames(text: str) -> tuple[Parser, list[tuple[str, str | None, str]]]:
    parser = Parser()
    found = [f for line in text.split("\n") if (f := parser.feed(line)) is not None]
    return parser, found


def change(room: str, seq: int) -> str:
    return json.dumps({"room_id": room, "seq": seq, "message": {"seq": seq}})


def test_the_parser_reads_frames_comments_retry_and_multiline_data() -> None:
    parser, found = frames(
        'retry: 2000\n\n: keepalive\n\nid: c1\nevent: message.created\ndata: {"a":\ndata: 1}\n\n'
        "event: typing\ndata: {}\n\nid\ndata:x\n\n"
    )
    assert parser.retry == 2.0
    assert found == [("message.created", "c1", '{"a":\n1}'), ("typing", None, "{}"), ("message", "", "x")]


def test_a_change_is_applied_once_and_never_below_its_rooms_high_water_mark() -> None:
    state = StreamState("c0")
    first = state.apply("message.created", "c1", change("r", 5))
    assert isinstance(first, Event) and (first.room_id, first.seq, first.id) == ("r", 5, "c1")
    assert state.apply("message.created", "c2", change("r", 5)) is None, "a repeat"
    assert state.apply("message.updated", "c3", change("r", 4)) is None, "an older change"
    assert state.last_id == "c3", "the place moves past repeats: they are behind it"
    assert isinstance(state.apply("message.created", "c4", change("other", 1)), Event)
    assert isinstance(state.apply("message.updated", "c5", change("r", 6)), Event)


def test_the_high_water_marks_are_bounded_forgetting_the_least_recently_changed_room() -> None:
    state = StreamState("c0", {"a": 1, "b": 1}, max_rooms=2)
    state.apply("message.created", "c1", change("a", 2))
    state.apply("message.created", "c2", change("c", 1))
    assert dict(state.marks) == {"a": 2, "c": 1}


def test_typing_moves_no_cursor_reauth_and_reset_say_what_to_do() -> None:
    state = StreamState("c0")
    notice = state.apply("typing", None, '{"room_id": "r", "user_id": "u", "expires_at": "t"}')
    assert notice == Typing("r", "u", "t") and state.last_id == "c0"
    assert state.apply("reauth", None, '{"reason": "token expired"}') is REAUTH and state.last_id == "c0"
    assert state.apply("reset", "c9", '{"cursor": "c9"}') == Reset("c9") and state.last_id == "c9"
    assert state.apply("some.future.kind", None, "{}") is None


def test_reconnections_wait_as_retry_says_then_back_off_and_a_reauth_does_not_wait() -> None:
    conn = _Connection(max_backoff=30.0)
    conn.failures = 1  # the stream ended
    assert conn.wait(2.0) == 2.0, "the service's retry: at first"
    conn.failures = 3
    assert conn.wait(2.0) == 8.0, "doubling while the service stays away"
    conn.failures = 10
    assert conn.wait(2.0) == 30.0, "up to max_backoff"
    assert conn.wait(2.0, at_least=45.0) == 45.0, "a Retry-After is honoured"
    conn.failures, conn.refresh = 0, True
    assert conn.wait(2.0) == 0.0, "reauth: at once, with a fresh token"
