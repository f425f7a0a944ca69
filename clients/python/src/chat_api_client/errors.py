"""Errors: every error answer of the service is an RFC 9457 problem, raised as ProblemError."""

from __future__ import annotations

from typing import Any

import httpx


class ProblemError(Exception):
    """An error answer: `status`, `type` (about:blank or tag:chat-api,2026:problem/<kind>), `title`,
    `detail`, the whole `problem` body, and `retry_after` (seconds) when the service sent one."""

    def __init__(
        self,
        status: int,
        type: str,
        title: str,
        detail: str,
        problem: dict[str, Any],
        retry_after: float | None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.problem = problem
        self.retry_after = retry_after

    @property
    def kind(self) -> str | None:
        """The service's own kind (`message-deleted`, `rate-limited`, ...), None for about:blank."""
        prefix = "tag:chat-api,2026:problem/"
        return self.type.removeprefix(prefix) if self.type.startswith(prefix) else None

    @classmethod
    def from_response(cls, response: httpx.Response) -> ProblemError:
        problem: dict[str, Any] = {}
        try:
            body = response.json()
            if isinstance(body, dict):
                problem = body
        except ValueError:
            pass
        phrase = response.reason_phrase or "Error"
        return cls(
            status=int(problem.get("status", response.status_code)),
            type=str(problem.get("type", "about:blank")),
            title=str(problem.get("title", phrase)),
            detail=str(problem.get("detail", response.text[:200] or phrase)),
            problem=problem,
            retry_after=retry_after(response),
        )


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (the service sends delay-seconds only)."""
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
