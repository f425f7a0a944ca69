"""Property-based tests of the two parsers that take arbitrary outside input: stream cursors and
database URIs."""

from __future__ import annotations

import urllib.parse

import asyncpg.connect_utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat_api.core.dburl import DatabaseUrlError, parse_database_url
from chat_api.events.cursor import Cursor, MalformedCursor

U64 = st.integers(min_value=0, max_value=2**64 - 1)
# Positions the service hands out: PostgreSQL bigints (event ids) and transaction ids below 2^63.
POSITION = st.integers(min_value=0, max_value=2**63 - 1)


@given(POSITION, POSITION)
def test_cursor_round_trips(xid: int, id_: int) -> None:
    cursor = Cursor(xid, id_)
    text = cursor.encode()
    assert Cursor.decode(text) == cursor
    assert text.isascii() and "\n" not in text and len(text) <= 64


@given(U64, U64)
def test_cursors_beyond_any_position_are_refused(xid: int, id_: int) -> None:
    text = Cursor(xid, id_).encode()
    if xid < 2**63 and id_ < 2**63:
        assert Cursor.decode(text) == (xid, id_)
    else:
        with pytest.raises(MalformedCursor):
            Cursor.decode(text)


@given(U64, U64, U64, U64)
def test_cursor_order_is_log_order(a: int, b: int, c: int, d: int) -> None:
    assert (Cursor(a, b) < Cursor(c, d)) == ((a, b) < (c, d))


@given(st.text(max_size=80))
def test_any_other_text_is_malformed_or_a_cursor_that_encodes_back(text: str) -> None:
    try:
        cursor = Cursor.decode(text)
    except MalformedCursor:
        return
    assert cursor.encode() == text  # one text per position: nothing else is accepted


PASSWORD = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=64)
HOST = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True)


@settings(max_examples=300)
@given(
    PASSWORD, HOST, st.integers(1, 65535), st.sampled_from(["postgresql", "postgres", "postgresql+asyncpg"])
)
def test_any_percent_encoded_password_reaches_asyncpg_intact(
    password: str, host: str, port: int, scheme: str
) -> None:
    uri = f"{scheme}://chatapi:{urllib.parse.quote(password, safe='')}@{host}:{port}/chat"
    target = parse_database_url(uri)
    shown = urllib.parse.urlsplit(target.redacted)
    assert shown.username == "chatapi" and shown.password == "***"
    assert shown.hostname == host and shown.port == port
    # asyncpg's own libpq-compatible parser reads what we hand it (internal API, checked once here
    # because it is the only way to see the decoded fields without a server).
    addrs, params = asyncpg.connect_utils._parse_connect_dsn_and_args(
        dsn=target.dsn,
        host=None,
        port=None,
        user=None,
        password=None,
        passfile=None,
        database=None,
        ssl=None,
        direct_tls=None,
        server_settings=None,
        target_session_attrs=None,
        krbsrvname=None,
        gsslib=None,
        service=None,
        servicefile=None,
    )
    assert params.password == password and params.user == "chatapi" and params.database == "chat"
    assert addrs == [(host, port)]


@given(st.text(max_size=200))
def test_garbage_uris_fail_with_one_line_or_parse(text: str) -> None:
    try:
        parse_database_url(text)
    except DatabaseUrlError as exc:
        assert "\n" not in str(exc)
