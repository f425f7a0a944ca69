"""Per-user rate limits on every write and on stream opens: a token bucket per user and action in
each process. Past its budget a request is answered 429 with Retry-After, before any database work.

Per process: with N replicas behind the ingress a user gets up to N times each budget (requests
spread over the replicas). That bounds abuse, which is what these are for; a limit that must hold
exactly across replicas would cost a database write on every request (docs/security.md).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Annotated

from fastapi import Depends, Request

from chat_api.core.config import Settings
from chat_api.core.errors import Problem

MAX_TRACKED_USERS = 100_000  # least recently seen users are forgotten first: memory stays bounded


class Action(Enum):
    SEND = "send"
    EDIT = "edit"
    DELETE = "delete"
    CREATE_ROOM = "create_room"
    CHANGE_MEMBERS = "change_members"
    MARK_READ = "mark_read"
    OPEN_STREAM = "open_stream"
    REACT = "react"
    CHANGE_ROOM = "change_room"
    TYPING = "typing"


@dataclass(frozen=True)
class Budget:
    per_second: float  # refill rate; 0 turns the limit off
    burst: int  # what a user may do at once after a pause


# Generous for people and clients, tight for scripts (docs/security.md lists them). Sends come from
# CHAT_API_SEND_RATE_PER_SECOND / _BURST.
BUDGETS = {
    Action.EDIT: Budget(5, 30),
    Action.DELETE: Budget(5, 30),
    Action.CREATE_ROOM: Budget(0.5, 20),
    Action.CHANGE_MEMBERS: Budget(5, 30),
    Action.MARK_READ: Budget(10, 60),
    Action.OPEN_STREAM: Budget(1, 20),
    Action.REACT: Budget(5, 30),
    Action.CHANGE_ROOM: Budget(1, 20),
    # A client sends one while its user types, every couple of seconds; the hubs forward at most one
    # per user and room per 2 s anyway (events/typing.py).
    Action.TYPING: Budget(2, 20),
}

WHAT = {
    Action.SEND: "messages",
    Action.EDIT: "edits",
    Action.DELETE: "deletions",
    Action.CREATE_ROOM: "new rooms",
    Action.CHANGE_MEMBERS: "membership changes",
    Action.MARK_READ: "read markers",
    Action.OPEN_STREAM: "stream opens",
    Action.REACT: "reactions",
    Action.CHANGE_ROOM: "room changes",
    Action.TYPING: "typing notices",
}


class TokenBucket:
    """One budget's buckets, one per user."""

    def __init__(self, budget: Budget) -> None:
        self.per_second = budget.per_second
        self.burst = budget.burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # user -> (tokens, at)

    def retry_after(self, user: str) -> int:
        """Takes one token for `user`; 0 when allowed, else the whole seconds until one is free."""
        if self.per_second <= 0:
            return 0
        now = time.monotonic()
        tokens, at = self._buckets.pop(user, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_second)
        if tokens >= 1.0:
            self._buckets[user] = (tokens - 1.0, now)
            allowed = 0
        else:
            self._buckets[user] = (tokens, now)
            allowed = max(1, math.ceil((1.0 - tokens) / self.per_second))
        if len(self._buckets) > MAX_TRACKED_USERS:
            self._buckets.popitem(last=False)
        return allowed


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        budgets = {**BUDGETS, Action.SEND: Budget(settings.send_rate_per_second, settings.send_rate_burst)}
        if not settings.rate_limits:
            budgets = dict.fromkeys(Action, Budget(0, 1))
        self._buckets = {action: TokenBucket(budget) for action, budget in budgets.items()}

    def check(self, action: Action, user: str) -> None:
        """Spends one of `user`'s `action` tokens, or raises the 429 problem."""
        wait = self._buckets[action].retry_after(user)
        if wait:
            raise Problem(
                429,
                f"Too many {WHAT[action]}; slow down.",
                kind="rate-limited",
                headers={"Retry-After": str(wait)},
            )


# async, though it awaits nothing: FastAPI runs plain `def` dependencies in a thread pool.
async def _rate_limits(request: Request) -> RateLimits:
    limits: RateLimits = request.state.limits
    return limits


RateLimitsDep = Annotated[RateLimits, Depends(_rate_limits)]
