"""RFC 9457 problem details: one shape for every error the service answers."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("chat_api.errors")

# Domain problem types are tag URIs (RFC 4151): stable identifiers, listed in docs/api.md.
PROBLEM_TYPE_BASE = "tag:chat-api,2026:problem/"


class Problem(Exception):
    """An error answered as application/problem+json. `kind` names a documented problem type."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.kind = kind
        self.headers = headers or {}
        self.extensions = extensions


def not_found(what: str = "resource") -> Problem:
    return Problem(404, f"No such {what}.")


def problem_response(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + kind if kind else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **extensions,
    }
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/problem+json", headers=headers
    )


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc.status, exc.detail, kind=exc.kind, headers=exc.headers, **exc.extensions)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != HTTPStatus(status).phrase else None
    if detail is None:
        detail = {
            404: "No such resource.",
            405: f"{request.method} is not allowed here.",
            413: "The request body is larger than the service accepts.",
        }.get(status, HTTPStatus(status).description)
    return problem_response(status, detail, headers=dict(exc.headers or {}))


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Report where and why, never the offending value (it may be a message body or a secret).
    errors = [
        {"loc": [str(part) for part in error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"])
    detail = f"{where}: {first['msg']}" if where else str(first["msg"])
    return problem_response(422, detail, kind="validation", errors=errors)


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    # The database is down, restarting or overloaded: the client may retry (idempotently for sends).
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return problem_response(
        503,
        "The database is unavailable; retry shortly.",
        kind="database-unavailable",
        headers={"Retry-After": "1"},
    )


DATABASE_UNAVAILABLE = (
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    ConnectionError,
    TimeoutError,
)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "The service failed to handle this request; it has been logged.")


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation)
    for exc_type in DATABASE_UNAVAILABLE:
        app.add_exception_handler(exc_type, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)
