"""Per-user send rate limit: a token bucket per user in each process (a replica limits its own
share; with N replicas a user may send up to N times the rate, which is fine for abuse control)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict

MAX_TRACKED_USERS = 100_000  # least recently seen users are forgotten first: memory stays bounded


class SendRateLimiter:
    def __init__(self, per_second: float, burst: int) -> None:
        self.per_second = per_second
        self.burst = burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # user -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def retry_after(self, user: str) -> int:
        """Takes one token for `user`; 0 when allowed, else the whole seconds until one is free."""
        if not self.enabled:
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
