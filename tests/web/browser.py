"""Debian's Chromium for the web client's tests: where it is, its flags, where screenshots go."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tests.support.missing import missing

CHROMIUM = Path(os.environ.get("CHAT_API_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def require_browser() -> None:
    """Skips without Playwright or Chromium on a developer's machine; fails in CI, which installs both."""
    needed = []
    if importlib.util.find_spec("playwright") is None:
        needed.append("the playwright package (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 pip install playwright)")
    if not CHROMIUM.exists():
        needed.append(f"{CHROMIUM} (apt-get install chromium)")
    if needed:
        missing("browser tests need " + " and ".join(needed))
