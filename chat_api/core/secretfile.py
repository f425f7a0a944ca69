"""Secrets mounted as files (a Kubernetes Secret volume): read at start-up, re-read when they change,
and the last good value kept when the file turns unreadable or invalid."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger("chat_api.config")

T = TypeVar("T")

# How often `current()` looks at the file: one stat() a second at most, never on every request.
RECHECK_SECONDS = 1.0

# What identifies a version of the file. The kubelet updates a mounted Secret by swapping a symlink
# to a new directory: stat() follows the links, so the inode changes even if the size does not.
Stamp = tuple[int, int, int, int]


def stamp(path: Path) -> Stamp:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_text(path: Path) -> str:
    """The file's text; an OSError becomes a one-line ValueError (the path, never the content)."""
    try:
        return path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None


class SecretFile(Generic[T]):
    """The parsed content of one file. `parse` raises ValueError with a message that never contains
    the secret. The first read happens here and raises; later failures keep the last good value and
    log one warning (until the file is good again)."""

    def __init__(self, path: Path, parse: Callable[[str], T], variable: str) -> None:
        self.path = path
        self.parse = parse
        self.variable = variable
        self._seen: Stamp | None = stamp(path) if path.exists() else None
        self.value = parse(read_text(path))
        self._next_check = time.monotonic() + RECHECK_SECONDS
        self._failing = False

    def current(self) -> T:
        """The value, looking at the file for a change at most once per RECHECK_SECONDS."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RECHECK_SECONDS
            self._refresh(force=False)
        return self.value

    def reread(self) -> T:
        """The value read now (for rare callers, e.g. once per new database connection)."""
        self._refresh(force=True)
        return self.value

    def _refresh(self, *, force: bool) -> None:
        try:
            seen = stamp(self.path)
        except OSError as exc:
            self._seen = None
            self._failed(f"cannot read {self.path}: {exc.strerror or type(exc).__name__}")
            return
        if seen == self._seen and not force:
            return
        self._seen = seen  # a bad version is not read again until it changes
        try:
            value = self.parse(read_text(self.path))
        except ValueError as exc:
            self._failed(str(exc))
            return
        self.value = value
        if self._failing:
            log.info("%s: %s is usable again", self.variable, self.path)
            self._failing = False

    def _failed(self, problem: str) -> None:
        if not self._failing:
            log.warning("%s: %s; keeping the last good value", self.variable, problem)
            self._failing = True
