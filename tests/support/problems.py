"""What every error answer must be: an RFC 9457 problem with the status it claims."""

from __future__ import annotations

from typing import Any

import httpx


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status and body["title"] and body["type"] and "detail" in body, body
    return dict(body)
