"""What a test needs from the machine (a tool, a package, a folder) and does not find: skipped on a
developer's machine, saying what to install; a failure in CI (`CI` set), whose .ci/run installs it."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str, *, module: bool = False) -> NoReturn:
    """Skips (the whole module with `module=True`) or, in CI, fails with `reason` as its one line."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=module)
