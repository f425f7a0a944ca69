"""RFC 9457 problem details: one shape for every error the service answers."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from chat_api.core.db import DatabaseUnavailable

log = logging.getLogger("chat_api.errors")

# Domain problem types are tag URIs (RFC 4151): stable identifiers, listed in docs/api.md.
PROBLEM_TYPE_BASE = "tag:chat-api,2026:problem/"


class ProblemDetails(BaseModel):
    """The body of every error answer (RFC 9457), served as application/problem+json."""

    type: str = Field(description="about:blank, or a tag:chat-api,2026:problem/<kind> URI (docs/api.md)")
    title: str = Field(description="The HTTP status phrase")
    status: int
    detail: str = Field(description="What went wrong, for a human")
    errors: list[dict[str, Any]] | None = Field(None, description="Validation problems: loc, msg, type")


PROBLEM_DESCRIPTIONS = {
    400: "Malformed request (e.g. a cursor this service did not hand out, a body that is not JSON)",
    401: "Missing, malformed, expired or foreign bearer token",
    403: "A member without the right for this action",
    404: "No such room (also: not a member), message or member",
    409: "The message is deleted",
    413: "Request body over 64 KiB",
    422: "The request does not fit the schema",
    429: "Too many requests (Retry-After says when to try again)",
    431: "Request headers too large",
    503: "The database is unavailable or the instance is shutting down (Retry-After)",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for these error statuses (see openapi_with_problem_types)."""
    return {
        status: {"model": ProblemDetails, "description": PROBLEM_DESCRIPTIONS[status]} for status in statuses
    }


def serve_problems_in_openapi(app: FastAPI) -> None:
    """Makes the app's OpenAPI document say what the service sends: every error response as
    application/problem+json (FastAPI documents a response model as application/json)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # FastAPI caches it as app.openapi_schema; adjusted in place below
        for path in schema["paths"].values():
            for operation in path.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if status.isdigit() and int(status) >= 400 and "application/json" in content:
                        content["application/problem+json"] = content.pop("application/json")
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


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


class DomainError(Exception):
    """An error a service raises in its own words; each package defines its own (rooms/errors.py,
    messages/errors.py), with the HTTP status and problem kind it is answered with, here, once."""

    status: ClassVar[int] = 400
    kind: ClassVar[str | None] = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    """No such thing, or one the caller may not see (a room it is not a member of): the same 404."""

    status = 404

    def __init__(self, what: str) -> None:
        super().__init__(f"No such {what}.")


class NotAMember(NotFound):
    """The caller is not a member of the room (or it does not exist): never a 403, no existence leak."""

    def __init__(self) -> None:
        super().__init__("room")


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


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return problem_response(exc.status, exc.detail, kind=exc.kind)


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
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem_response(
        503,
        "The database is unavailable; retry shortly.",
        kind="database-unavailable",
        headers={"Retry-After": "1"},
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "The service failed to handle this request; it has been logged.")


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(DatabaseUnavailable, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)
