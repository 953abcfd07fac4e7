"""Debian's Chromium through playwright, for the tests that need a real browser.

No ``playwright install``: the system browser is used. Without it (or without playwright) a
test is skipped with the install command in its reason, except in CI (``CI=true``), where
``.ci/run`` installs the browser and a missing one is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
INSTALL = "apt-get install -y chromium && pip install playwright"


def playwright_api() -> Any:
    """playwright's async API, or a skip (a failure in CI) naming the install command."""
    why = None
    try:
        from playwright import async_api
    except ImportError:
        why = "playwright is not installed"
    if why is None and not os.path.exists(CHROMIUM):
        why = f"no Chromium at {CHROMIUM}"
    if why is not None:
        message = f"{why}: run `{INSTALL}`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return async_api


@contextlib.asynccontextmanager
async def chromium(args: Sequence[str] = ()) -> AsyncIterator[Any]:
    """A headless Chromium (a playwright ``Browser``), closed on exit."""
    api = playwright_api()
    async with api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=list(args))
        try:
            yield browser
        finally:
            await browser.close()
