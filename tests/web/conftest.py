"""Fixtures of the web client's tests: Debian's Chromium driven by Playwright (never a browser
Playwright downloads)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.web.browser import CHROMIUM, CHROMIUM_ARGS, require_browser


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()
