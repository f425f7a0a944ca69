"""The HTTP server's own limits, on a real `chat-api serve` (security review finding 9): uvicorn read a
4 MB header block whole before answering 431, let trickled headers hold a connection for 28 s and more,
had no connection limit, and believed X-Forwarded-* from any peer."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chat_api.server import MAX_HEAD_BYTES
from tests.support.ports import free_port
from tests.support.processes import stop_process
from tests.support.settings import TEST_SECRET

HEADER_TIMEOUT = 2.0


@contextlib.contextmanager
def serve(runtime_url: str, tmp_path: Path, **env: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT_API_", "DATABASE_URL", "OTEL_"))}
    base.update(
        DATABASE_URL=runtime_url,
        CHAT_API_JWT_SECRET=TEST_SECRET,
        CHAT_API_HOST="127.0.0.1",
        CHAT_API_PORT=str(port),
        CHAT_API_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        **env,
    )
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chat_api", "serve"], env=base, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield "127.0.0.1", port
    finally:
        stop_process(proc)


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when that happened."""
    sock.settimeout(timeout)
    started = time.monotonic()
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - started


@pytest.mark.slow
def test_an_oversized_head_is_refused_before_it_is_read_whole(runtime_url: str, tmp_path: Path) -> None:
    with serve(runtime_url, tmp_path) as address, socket.create_connection(address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        # Twice the cap of headers, and the head not finished: the server answers now, not after
        # the rest of a 4 MB block.
        sock.sendall(b"X-Padding: " + b"a" * (2 * MAX_HEAD_BYTES) + b"\r\n")
        answer, _ = read_until_closed(sock, timeout=5)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"application/problem+json" in answer and b'"status":431' in answer


@pytest.mark.slow
def test_trickled_headers_lose_the_connection_after_the_header_timeout(
    runtime_url: str, tmp_path: Path
) -> None:
    with serve(runtime_url, tmp_path) as address, socket.create_connection(address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed_after = None
        for i in range(40):  # one header line every 0.25 s: 10 s if nothing stops it
            try:
                sock.sendall(b"X-Slow-%d: 1\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
            sock.settimeout(0.25)
            try:
                if sock.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
    assert closed_after is not None, "the server kept a connection whose headers never ended"
    assert closed_after < HEADER_TIMEOUT + 1.5, closed_after
    # An idle connection that never sends a request is closed too.
    with serve(runtime_url, tmp_path) as address, socket.create_connection(address) as idle:
        _, waited = read_until_closed(idle, timeout=HEADER_TIMEOUT + 3)
    assert waited < HEADER_TIMEOUT + 1.5, waited


@pytest.mark.slow
def test_connections_beyond_the_limit_get_503(runtime_url: str, tmp_path: Path) -> None:
    with serve(runtime_url, tmp_path, CHAT_API_LIMIT_CONCURRENCY="4") as (host, port):
        held = [socket.create_connection((host, port)) for _ in range(4)]
        try:
            time.sleep(0.2)
            refused = httpx.get(f"http://{host}:{port}/healthz", timeout=5)
        finally:
            for sock in held:
                sock.close()
        assert refused.status_code == 503
        time.sleep(0.2)
        assert httpx.get(f"http://{host}:{port}/healthz", timeout=5).status_code == 200


@pytest.mark.slow
def test_forwarded_headers_are_believed_only_from_configured_peers(runtime_url: str, tmp_path: Path) -> None:
    """X-Forwarded-Proto decides the scheme of absolute URLs the server makes (and whether cookies are
    Secure); any client could set it."""
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}

    def redirect_scheme(base: str) -> str:
        r = httpx.get(f"{base}/v1/rooms/", headers=forwarded, timeout=5)
        assert r.status_code == 307, r.text
        return r.headers["location"].split(":", 1)[0]

    with serve(runtime_url, tmp_path) as (host, port):
        assert redirect_scheme(f"http://{host}:{port}") == "http"
    with serve(runtime_url, tmp_path, CHAT_API_FORWARDED_ALLOW_IPS="127.0.0.0/8") as (host, port):
        assert redirect_scheme(f"http://{host}:{port}") == "https"
