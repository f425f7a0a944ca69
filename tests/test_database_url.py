"""DATABASE_URL / DATABASE_URL_FILE: the libpq URI parser (chat_api/core/dburl.py), then real connections
to a private PostgreSQL cluster: awkward passwords, every TLS mode that matters, and password rotation."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asyncpg import connect_utils

from chat_api.auth.tokens import mint_token
from chat_api.core.config import ConfigError, Settings
from chat_api.core.db import Database, DatabaseUnavailable
from chat_api.core.dburl import SSL_MODES, DatabaseUrlError, parse_database_url
from chat_api.core.migrations import migrate
from tests.support.pgcluster import ThrowawayCluster, ca_pem, ssl_available
from tests.support.secretvolume import SecretVolume
from tests.support.servers import serve
from tests.support.settings import TEST_SECRET, make_settings
from tests.support.sse import open_stream

# What CloudNativePG may generate: every character that has a meaning in a URI.
WrongPassword = asyncpg.exceptions.InvalidPasswordError
PASSWORD = "p@ss:w/rd%41?#x"
ENCODED = urllib.parse.quote(PASSWORD, safe="")  # p%40ss%3Aw%2Frd%2541%3F%23x
CNPG = f"postgresql://chatapi:{ENCODED}@chat-db-cnpg-rw.product-team:5432/chat"
HOST = "chat-db-cnpg-rw.product-team"
EXISTING_FILE = str(Path(__file__).resolve())


# -- the parser --------------------------------------------------------------------------------------------

VALID = [
    # (id, URI, expected query parameters passed on to asyncpg, expected connect timeout)
    ("cnpg", CNPG, {}, None),
    ("cnpg-trailing-newline", CNPG + "\n", {}, None),
    ("postgres-scheme", CNPG.replace("postgresql://", "postgres://"), {}, None),
    ("asyncpg-scheme", CNPG.replace("postgresql://", "postgresql+asyncpg://"), {}, None),
    *[(f"sslmode-{m}", f"{CNPG}?sslmode={m}", {"sslmode": m}, None) for m in sorted(SSL_MODES)],
    (
        "sslrootcert",
        f"{CNPG}?sslmode=verify-full&sslrootcert={EXISTING_FILE}",
        {"sslmode": "verify-full", "sslrootcert": EXISTING_FILE},
        None,
    ),
    ("application-name", f"{CNPG}?application_name=chat-api", {"application_name": "chat-api"}, None),
    ("connect-timeout-7", f"{CNPG}?connect_timeout=7", {}, 7.0),
    ("connect-timeout-0-forever", f"{CNPG}?connect_timeout=0", {}, None),
    ("connect-timeout-negative", f"{CNPG}?connect_timeout=-3", {}, None),
    (
        "connect-timeout-1-raised-to-2",
        f"{CNPG}?connect_timeout=1&sslmode=require",
        {"sslmode": "require"},
        2.0,
    ),
]


@pytest.mark.parametrize(("raw", "query", "timeout"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_uri(raw: str, query: dict[str, str], timeout: float | None) -> None:
    target = parse_database_url(raw)
    parts = urllib.parse.urlsplit(target.dsn)
    assert parts.scheme == "postgresql"
    assert (parts.username, parts.hostname, parts.port, parts.path) == ("chatapi", HOST, 5432, "/chat")
    # The password stays percent-encoded in the DSN and decodes to exactly the original (no double decoding).
    assert urllib.parse.unquote(parts.password or "") == PASSWORD
    assert dict(urllib.parse.parse_qsl(parts.query)) == query
    assert target.connect_timeout == timeout
    kwargs = target.connect_kwargs()
    assert kwargs["dsn"] == target.dsn
    assert kwargs.get("timeout") == timeout
    # redacted: safe to log.
    assert PASSWORD not in target.redacted and ENCODED not in target.redacted
    assert target.redacted.startswith(f"postgresql://chatapi:***@{HOST}:5432/chat")


def test_unix_socket_host_in_query() -> None:
    target = parse_database_url(f"postgresql://chatapi:{ENCODED}@/chat?host=/run/postgresql")
    parts = urllib.parse.urlsplit(target.dsn)
    assert dict(urllib.parse.parse_qsl(parts.query)) == {"host": "/run/postgresql"}
    assert urllib.parse.unquote(parts.password or "") == PASSWORD
    assert "***" in target.redacted and ENCODED not in target.redacted


def asyncpg_reads(dsn: str) -> tuple[list[Any], Any]:
    return connect_utils._parse_connect_dsn_and_args(  # type: ignore[no-any-return]
        dsn=dsn, host=None, port=None, user=None, password=None, passfile=None, database=None, ssl=None,
        service=None, servicefile=None, direct_tls=None, server_settings=None, target_session_attrs=None,
        krbsrvname=None, gsslib=None,
    )  # fmt: skip


def test_asyncpg_reads_the_dsn_like_libpq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The only place we call asyncpg's private DSN parser (asyncpg 0.30-0.32): connect() gives no other way
    # to see how it decodes the URI we hand over (password, host, port, database, sslmode), short of a
    # server for every host name. If asyncpg renames it, rewrite this test, not the service.
    for var in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE", "PGSSLROOTCERT"):
        monkeypatch.delenv(var, raising=False)
    ca = tmp_path / "ca.crt"
    ca.write_bytes(ca_pem())

    addrs, params = asyncpg_reads(parse_database_url(f"{CNPG}?sslmode=verify-full&sslrootcert={ca}").dsn)
    assert addrs == [(HOST, 5432)]
    assert (params.user, params.password, params.database) == ("chatapi", PASSWORD, "chat")
    assert params.sslmode == connect_utils.SSLMode.verify_full
    assert params.ssl.verify_mode == ssl.CERT_REQUIRED and params.ssl.check_hostname

    for mode in sorted(SSL_MODES):
        _, params = asyncpg_reads(parse_database_url(f"{CNPG}?sslmode={mode}&sslrootcert={ca}").dsn)
        assert params.sslmode == connect_utils.SSLMode.parse(mode), mode

    _, params = asyncpg_reads(parse_database_url(CNPG).dsn)
    assert params.sslmode == connect_utils.SSLMode.prefer  # libpq's default too

    addrs, params = asyncpg_reads(parse_database_url(f"postgres://chatapi:{ENCODED}@/chat?host=/run/pg").dsn)
    assert addrs == ["/run/pg/.s.PGSQL.5432"]
    assert (params.user, params.password, params.database) == ("chatapi", PASSWORD, "chat")


INVALID = [
    # (id, URI, a part of the expected message)
    (
        "statement-cache-size",
        f"{CNPG}?statement_cache_size=0",
        "unsupported query parameter 'statement_cache_size'",
    ),
    ("unknown-param", f"{CNPG}?foo=1", "unsupported query parameter 'foo'"),
    ("bad-sslmode", f"{CNPG}?sslmode=verify", "sslmode 'verify' is not one of"),
    ("empty-sslmode", f"{CNPG}?sslmode=", "sslmode '' is not one of"),
    ("missing-sslrootcert", f"{CNPG}?sslmode=verify-ca&sslrootcert=/nonexistent/ca.crt", "does not exist"),
    ("mysql", CNPG.replace("postgresql://", "mysql://"), "scheme must be"),
    ("no-scheme", CNPG.removeprefix("postgresql://"), "scheme must be"),
    ("port-not-a-number", CNPG.replace(":5432", ":54x2"), "the port is not a number"),
    ("port-zero", CNPG.replace(":5432", ":0"), "the port is not valid"),
    ("timeout-not-a-number", f"{CNPG}?connect_timeout=soon", "connect_timeout must be a whole number"),
    ("timeout-fraction", f"{CNPG}?connect_timeout=2.5", "connect_timeout must be a whole number"),
    ("duplicated", f"{CNPG}?sslmode=require&sslmode=disable", "'sslmode' is given twice"),
    ("no-host", "postgresql:///chat", "no host"),
]


@pytest.mark.parametrize(("raw", "message"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID])
def test_invalid_uri(raw: str, message: str) -> None:
    with pytest.raises(DatabaseUrlError) as caught:
        parse_database_url(raw)
    text_ = str(caught.value)
    assert message in text_
    assert "\n" not in text_
    assert PASSWORD not in text_ and ENCODED not in text_


def test_invalid_uri_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(f"{CNPG}?foo=1")
    assert str(caught.value).startswith("database_url: unsupported query parameter 'foo'")
    assert ENCODED not in str(caught.value)

    secret = tmp_path / "uri"
    secret.write_text(f"{CNPG}?sslmode=nope")
    with pytest.raises(ConfigError) as caught:
        make_settings(None, database_url_file=secret)  # type: ignore[arg-type]
    assert "database_url_file" in str(caught.value) and "sslmode 'nope'" in str(caught.value)
    assert ENCODED not in str(caught.value) and PASSWORD not in str(caught.value)


# -- real connections ---------------------------------------------------------------------------------------

needs_ssl = pytest.mark.skipif(not ssl_available(), reason="no SSL-enabled PostgreSQL build on this machine")


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    with ThrowawayCluster(ssl=ssl_available()) as pg:
        yield pg


@pytest.fixture(scope="module")
async def admin(cluster: ThrowawayCluster) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(cluster.admin_dsn)
    await conn.execute(f"CREATE ROLE chatapi LOGIN PASSWORD {sql_literal(PASSWORD)}")
    await conn.execute("CREATE DATABASE chat OWNER chatapi")
    try:
        yield conn
    finally:
        await conn.close()


async def scalar(settings: Settings, sql: str) -> Any:
    """One query on a new pool (so on a new connection)."""
    db = await opened(Database(settings))
    try:
        async with db.connection() as conn:
            return await conn.fetchval(sql)
    finally:
        await db.close()


async def opened(db: Database) -> Database:
    await db.open()
    return db


async def test_cnpg_style_uri_connects(cluster: ThrowawayCluster, admin: asyncpg.Connection) -> None:
    url = cluster.url("chatapi", PASSWORD, "chat")
    assert ENCODED in url  # the percent-encoded form CloudNativePG writes
    got = await scalar(make_settings(url), "SELECT current_user || '@' || current_database()")
    assert got == "chatapi@chat"


async def test_wrong_password_fails(cluster: ThrowawayCluster, admin: asyncpg.Connection) -> None:
    wrong = PASSWORD + "-wrong"
    with pytest.raises(
        asyncpg.exceptions.InvalidPasswordError, match="password authentication failed"
    ) as caught:
        await scalar(make_settings(cluster.url("chatapi", wrong, "chat")), "SELECT 1")
    assert wrong not in str(caught.value) and urllib.parse.quote(wrong, safe="") not in str(caught.value)


async def test_application_name_reaches_the_server(
    cluster: ThrowawayCluster, admin: asyncpg.Connection
) -> None:
    url = cluster.url("chatapi", PASSWORD, "chat", application_name="chat-api-url-test")
    sql = "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    assert await scalar(make_settings(url), sql) == "chat-api-url-test"


@pytest.mark.parametrize("form", ["port-in-netloc", "port-in-query"])
async def test_unix_socket_on_a_non_default_port(cluster: ThrowawayCluster, form: str) -> None:
    sock = urllib.parse.quote(str(cluster.socket_dir), safe="")
    auth = f"postgres:{urllib.parse.quote(cluster.admin_password, safe='')}"
    if form == "port-in-netloc":
        url = f"postgresql://{auth}@:{cluster.port}/postgres?host={sock}"
    else:
        url = f"postgresql://{auth}@/postgres?host={sock}&port={cluster.port}"
    # inet_server_addr() is NULL on a unix-socket connection.
    assert await scalar(make_settings(url), "SELECT inet_server_addr() IS NULL") is True


SSL_CASES = [
    # (id, host, query, ssl expected on the connection)
    ("require", "127.0.0.1", {"sslmode": "require"}, True),
    ("disable", "127.0.0.1", {"sslmode": "disable"}, False),
    ("prefer", "127.0.0.1", {"sslmode": "prefer"}, True),
    ("verify-full", "localhost", {"sslmode": "verify-full", "sslrootcert": "<ca>"}, True),
    ("verify-ca", "127.0.0.1", {"sslmode": "verify-ca", "sslrootcert": "<ca>"}, True),
]


@needs_ssl
@pytest.mark.parametrize(
    ("host", "query", "expected"), [c[1:] for c in SSL_CASES], ids=[c[0] for c in SSL_CASES]
)
async def test_ssl_modes(
    cluster: ThrowawayCluster, admin: asyncpg.Connection, host: str, query: dict[str, str], expected: bool
) -> None:
    query = {k: str(cluster.ca_path) if v == "<ca>" else v for k, v in query.items()}
    url = cluster.url("chatapi", PASSWORD, "chat", host=host, **query)
    sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    assert await scalar(make_settings(url), sql) is expected


@needs_ssl
@pytest.mark.parametrize("mode", ["verify-full", "verify-ca"])
async def test_ssl_verify_with_an_untrusted_ca_fails(
    cluster: ThrowawayCluster, admin: asyncpg.Connection, tmp_path: Path, mode: str
) -> None:
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(ca_pem("some other CA"))
    url = cluster.url("chatapi", PASSWORD, "chat", host="localhost", sslmode=mode, sslrootcert=str(other_ca))
    # The service's pool reports it as the database being unavailable (a 503), caused by the check.
    with pytest.raises(DatabaseUnavailable) as caught:
        await scalar(make_settings(url), "SELECT 1")
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError), caught.value.__cause__
    assert "certificate verify failed" in str(caught.value.__cause__)


# -- password rotation with DATABASE_URL_FILE ------------------------------------------------------------


def replace_file(path: Path, content: str) -> None:
    """Atomically, as the kubelet swaps a mounted secret."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(content + "\n")
    os.replace(tmp, path)


async def current_user(db: Database) -> str:
    async with db.connection() as conn:
        return str(await conn.fetchval("SELECT current_user"))


async def test_rotated_password_in_the_file_is_used_for_new_connections(
    cluster: ThrowawayCluster, admin: asyncpg.Connection, tmp_path: Path
) -> None:
    # Its own role, so the other tests keep chatapi's password whatever the order.
    role, old, new = "chatapi_rotating", "old:p@ss/w%rd", "new:p@ss/w%rd#2"
    await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD {sql_literal(old)}")
    secret = tmp_path / "database-url"
    replace_file(secret, cluster.url(role, old, "chat"))
    pool = {"db_pool_size": 1, "db_pool_max_overflow": 1}  # a second connection is always a new one
    from_file = await opened(Database(make_settings(None, database_url_file=secret, **pool)))  # type: ignore[arg-type]
    from_env = await opened(Database(make_settings(cluster.url(role, old, "chat"), **pool)))
    try:
        async with from_file.connection() as held_file, from_env.connection() as held_env:
            for held in (held_file, held_env):
                assert await held.fetchval("SELECT current_user") == role

            await admin.execute(f"ALTER ROLE {role} PASSWORD {sql_literal(new)}")
            # The file still holds the old password: a new connection fails...
            with pytest.raises(
                asyncpg.exceptions.InvalidPasswordError, match="password authentication failed"
            ):
                await current_user(from_file)
            # ...until the secret is rewritten; then the same engine connects with the new one.
            replace_file(secret, cluster.url(role, new, "chat"))
            assert await current_user(from_file) == role
            # DATABASE_URL is fixed at startup: the old password keeps failing (the file really is re-read).
            with pytest.raises(
                asyncpg.exceptions.InvalidPasswordError, match="password authentication failed"
            ):
                await current_user(from_env)
            # Connections opened before the rotation are not affected.
            for held in (held_file, held_env):
                assert await held.fetchval("SELECT 1") == 1
    finally:
        await from_file.close()
        await from_env.close()
        await admin.execute(f"DROP ROLE {role}")


# -- CHAT_API_DB_PASSWORD_FILE, PGSSLMODE and PGSSLROOTCERT --------------------------------------------------


def query_of(dsn: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(dsn).query))


def test_pgsslmode_and_pgsslrootcert_apply_where_the_uri_does_not_set_them(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(ca_pem())
    uri_file = tmp_path / "uri"
    uri_file.write_text(CNPG + "\n")
    ssl_env = {"pg_sslmode": "verify-full", "pg_sslrootcert": ca}
    # CloudNativePG's `uri` has no query string: both come from the variables, for every target.
    for settings in (
        make_settings(CNPG, **ssl_env),
        make_settings(None, database_url_file=uri_file, **ssl_env),  # type: ignore[arg-type]
        make_settings("postgresql://other@db.example/chat", db_listen_url=CNPG, **ssl_env),
    ):
        for target in (settings.database_target(), settings.listen_target()):
            assert query_of(target.dsn) == {"sslmode": "verify-full", "sslrootcert": str(ca)}
    _, params = asyncpg_reads(make_settings(CNPG, **ssl_env).database_target().dsn)
    assert params.sslmode == connect_utils.SSLMode.verify_full
    assert params.ssl.verify_mode == ssl.CERT_REQUIRED and params.ssl.check_hostname

    # The URI wins for what it sets itself.
    other = tmp_path / "other.crt"
    other.write_bytes(ca_pem("other"))
    settings = make_settings(f"{CNPG}?sslmode=disable", **ssl_env)
    assert query_of(settings.database_target().dsn) == {"sslmode": "disable", "sslrootcert": str(ca)}
    settings = make_settings(f"{CNPG}?sslrootcert={other}", **ssl_env)
    assert query_of(settings.database_target().dsn) == {"sslmode": "verify-full", "sslrootcert": str(other)}
    # Neither set: the URI is passed on as it is.
    assert query_of(make_settings(CNPG).database_target().dsn) == {}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pg_sslmode": "verify"}, "pg_sslmode: 'verify' is not one of allow, disable, prefer,"),
        ({"pg_sslmode": "VERIFY-FULL"}, "pg_sslmode: 'VERIFY-FULL' is not one of"),
        (
            {"pg_sslrootcert": "/nonexistent/ca.crt"},
            "pg_sslrootcert: file '/nonexistent/ca.crt' does not exist",
        ),
        (
            {"db_password_file": "/nonexistent/password"},
            "db_password_file: cannot read /nonexistent/password",
        ),
    ],
    ids=["sslmode-unknown", "sslmode-upper-case", "sslrootcert-missing", "password-file-missing"],
)
def test_invalid_ssl_and_password_settings_are_config_errors(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(CNPG, **overrides)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_password_file_overrides_the_uri_password(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path / "role")
    volume.write(username="chatapi", password="from-the-file\n")
    settings = make_settings(CNPG, db_password_file=volume.path("password"))
    target = settings.database_target()
    assert target.connect_kwargs()["password"] == "from-the-file"  # the trailing newline is not part of it
    assert "from-the-file" not in target.redacted and "from-the-file" not in repr(target)
    assert target.redacted.startswith("postgresql://chatapi:***@")
    no_password = make_settings(
        "postgresql://chatapi@db.example/chat", db_password_file=volume.path("password")
    )
    assert no_password.database_target().connect_kwargs()["password"] == "from-the-file"
    assert "from-the-file" not in no_password.database_target().redacted

    volume.write(password="\n")
    with pytest.raises(ConfigError) as caught:
        make_settings(CNPG, db_password_file=volume.path("password"))
    assert str(caught.value) == "db_password_file: the file is empty"


@pytest.fixture
async def rotating_role(admin: asyncpg.Connection) -> AsyncIterator[str]:
    """A role of its own (so the other tests keep chatapi's password), with password OLD_PASSWORD."""
    role = f"chatapi_{os.urandom(4).hex()}"
    await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD {sql_literal(OLD_PASSWORD)}")
    try:
        yield role
    finally:
        await admin.execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
        )
        await admin.execute(f"DROP ROLE {role}")


OLD_PASSWORD, NEW_PASSWORD = "old:p@ss/w%rd from a file", "new:p@ss/w%rd#2 from a file"


async def test_password_file_is_read_for_every_new_connection(
    cluster: ThrowawayCluster, admin: asyncpg.Connection, rotating_role: str, tmp_path: Path
) -> None:
    volume = SecretVolume(tmp_path / "role")
    volume.write(password=OLD_PASSWORD + "\n")
    # The URI's password is wrong: the file's is the one that counts.
    url = cluster.url(rotating_role, "not-the-password", "chat")
    pool = {"db_pool_size": 1, "db_pool_max_overflow": 1}  # a second connection is always a new one
    engine = await opened(Database(make_settings(url, db_password_file=volume.path("password"), **pool)))
    try:
        async with engine.connection() as held:
            assert await held.fetchval("SELECT current_user") == rotating_role

            await admin.execute(f"ALTER ROLE {rotating_role} PASSWORD {sql_literal(NEW_PASSWORD)}")
            # The file still holds the old password: a new connection fails, without saying it...
            with pytest.raises(
                asyncpg.exceptions.InvalidPasswordError, match="password authentication failed"
            ) as caught:
                await current_user(engine)
            for secret in (OLD_PASSWORD, NEW_PASSWORD, "not-the-password"):
                assert secret not in str(caught.value)
            # ...until the kubelet updates the mounted secret; then the same engine connects with the new one.
            volume.write(password=NEW_PASSWORD + "\n")
            assert await current_user(engine) == rotating_role
            # The connection opened before the rotation is not affected.
            assert await held.fetchval("SELECT 1") == 1
    finally:
        await engine.close()


PG_SSL_CASES = [
    # (id, host, URI query, PGSSLMODE, PGSSLROOTCERT, expected: ssl on the connection or an exception)
    ("require", "127.0.0.1", {}, "require", None, True),
    ("disable", "127.0.0.1", {}, "disable", None, False),
    ("verify-full", "localhost", {}, "verify-full", "<ca>", True),
    ("verify-ca", "127.0.0.1", {}, "verify-ca", "<ca>", True),
    ("verify-full-untrusted", "localhost", {}, "verify-full", "<other>", ssl.SSLCertVerificationError),
    ("verify-ca-untrusted", "127.0.0.1", {}, "verify-ca", "<other>", ssl.SSLCertVerificationError),
    ("uri-sslmode-wins", "localhost", {"sslmode": "disable"}, "verify-full", "<other>", False),
    ("uri-sslrootcert-wins", "localhost", {"sslrootcert": "<ca>"}, "verify-full", "<other>", True),
]


@needs_ssl
@pytest.mark.parametrize(
    ("host", "query", "mode", "root_cert", "expected"),
    [c[1:] for c in PG_SSL_CASES],
    ids=[c[0] for c in PG_SSL_CASES],
)
async def test_pgsslmode_and_pgsslrootcert_reach_the_connection(
    cluster: ThrowawayCluster,
    admin: asyncpg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    query: dict[str, str],
    mode: str,
    root_cert: str | None,
    expected: bool | type[Exception],
) -> None:
    # Not in the environment: asyncpg would read them itself. They reach it through the service's URI.
    for var in ("PGSSLMODE", "PGSSLROOTCERT"):
        monkeypatch.delenv(var, raising=False)
    other = tmp_path / "other-ca.crt"
    other.write_bytes(ca_pem("some other CA"))
    paths = {"<ca>": str(cluster.ca_path), "<other>": str(other)}
    url = cluster.url(
        "chatapi", PASSWORD, "chat", host=host, **{k: paths.get(v, v) for k, v in query.items()}
    )
    settings = make_settings(url, pg_sslmode=mode, pg_sslrootcert=paths.get(root_cert or ""))
    sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    if isinstance(expected, bool):
        assert await scalar(settings, sql) is expected
    else:
        with pytest.raises(DatabaseUnavailable) as caught:
            await scalar(settings, sql)
        assert isinstance(caught.value.__cause__, expected), caught.value.__cause__
        assert "certificate verify failed" in str(caught.value.__cause__)


async def role_backends(admin: asyncpg.Connection, role: str) -> list[asyncpg.Record]:
    return await admin.fetch(
        "SELECT a.pid, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = $1",
        role,
    )


async def room_event_arrives(base_url: str) -> None:
    """A new room's event reaches an open stream: only the hub's LISTEN connection delivers it."""
    user = f"u-{os.urandom(4).hex()}"
    token = mint_token(TEST_SECRET, user)
    async with open_stream(base_url, token) as stream, httpx.AsyncClient(base_url=base_url) as client:
        r = await client.post("/v1/rooms", json={"name": "r"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        await stream.wait_for(1, "room.created", timeout=15)


async def ready(base_url: str) -> None:
    """/readyz answers 200 within 15 s (after an outage the pool first drops its dead connections)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client, asyncio.timeout(15):
        for _ in range(150):
            if (await client.get("/readyz")).status_code == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("/readyz did not answer 200")


@needs_ssl
async def test_migrate_pool_and_listen_use_the_password_file_and_pgsslmode(
    cluster: ThrowawayCluster,
    admin: asyncpg.Connection,
    rotating_role: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = f"{rotating_role}_db"
    await admin.execute(f"CREATE DATABASE {database} OWNER {rotating_role}")
    volume = SecretVolume(tmp_path / "role")
    volume.write(password=OLD_PASSWORD + "\n")
    # As on the platform: CloudNativePG's `uri` (no query string, here no usable password), a direct
    # LISTEN URL without any password, and TLS verified through PGSSLMODE/PGSSLROOTCERT.
    settings = make_settings(
        cluster.url(rotating_role, "not-the-password", database, host="localhost"),
        db_listen_url=f"postgresql://{rotating_role}@127.0.0.1:{cluster.port}/{database}",
        db_password_file=volume.path("password"),
        pg_sslmode="verify-full",
        pg_sslrootcert=cluster.ca_path,
    )
    try:
        await migrate(settings)
        async with serve(settings) as server:
            await ready(server.url)
            await room_event_arrives(server.url)
            backends = await role_backends(admin, rotating_role)
            assert len(backends) >= 2 and all(b["ssl"] for b in backends), backends  # the pool and LISTEN

            # Rotation: the role's password changes, the mounted file follows, then every connection
            # breaks (a failover, say). The pool and the hub reconnect with the new password.
            await admin.execute(f"ALTER ROLE {rotating_role} PASSWORD {sql_literal(NEW_PASSWORD)}")
            volume.write(password=NEW_PASSWORD + "\n")
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", rotating_role
            )
            await ready(server.url)
            await room_event_arrives(server.url)
            backends = await role_backends(admin, rotating_role)
            assert len(backends) >= 2 and all(b["ssl"] for b in backends), backends
    finally:
        await admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
    for secret in (OLD_PASSWORD, NEW_PASSWORD, "not-the-password"):
        assert secret not in caplog.text
        assert urllib.parse.quote(secret, safe="") not in caplog.text


def test_password_file_that_turns_unreadable_keeps_the_last_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume = SecretVolume(tmp_path / "role")
    volume.write(password="the-first-password\n")
    settings = make_settings(CNPG, db_password_file=volume.path("password"))
    volume.write(password="the-second-password")
    assert settings.database_target().password == "the-second-password"  # read for every connection
    caplog.set_level(logging.INFO, logger="chat_api.config")
    for broken in ({}, {"password": ""}):  # the key left the secret; an empty password
        volume.write(**broken)
        for _ in range(3):
            assert settings.database_target().password == "the-second-password"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "CHAT_API_DB_PASSWORD_FILE" in warnings[0], warnings
    volume.write(password="the-third-password\n")
    assert settings.database_target().password == "the-third-password"
    for secret in ("the-first-password", "the-second-password", "the-third-password"):
        assert secret not in caplog.text
