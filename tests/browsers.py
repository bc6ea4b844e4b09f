"""Headless Chromium for the browser tests, launched one way for all of them: the
module-scoped `browser` fixture (each test opens contexts of its own in it)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import CHROMIUM, need

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Playwright

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Each window Chromium opens (Playwright opens one for each page) loads the WebUI of its
# address bar's drop-down ahead, chrome://omnibox-popup.top-chrome/ and its AI Mode page,
# in a renderer of its own: 0.6 s of CPU a window for a drop-down that a headless test
# never opens, a quarter of what Chromium spent in the browser tests.
DISABLED_FEATURES = ["WebUIOmniboxPopup", "WebUIOmniboxAimPopup", "WebUIOmniboxFullPopup"]


def playwright_disabled_features(playwright: Playwright) -> list[str] | None:
    """The features Playwright disables itself (its chromiumSwitches), read from the
    command line it gives a stand-in for Chromium that only writes its arguments down and
    exits (the launch fails at once). Chromium honours only the last --disable-features
    it is given, so ours must repeat these; None if they could not be read."""
    from playwright.sync_api import Error

    with tempfile.TemporaryDirectory() as directory:
        stand_in = Path(directory) / "chromium"
        stand_in.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.args"\n')
        stand_in.chmod(0o755)
        try:
            playwright.chromium.launch(executable_path=stand_in, timeout=10_000).close()
        except Error:
            pass  # expected: the stand-in exits without answering
        written = stand_in.with_suffix(".args")
        lines = written.read_text().splitlines() if written.exists() else []
    values = [line.split("=", 1)[1] for line in lines if line.startswith("--disable-features=")]
    return values[-1].split(",") if values else None


def launch(playwright: Playwright) -> Browser:
    """Chromium with CHROMIUM_ARGS and, beside Playwright's own, DISABLED_FEATURES."""
    args = list(CHROMIUM_ARGS)
    theirs = playwright_disabled_features(playwright)
    if theirs is not None:  # else without ours rather than without Playwright's
        args.append("--disable-features=" + ",".join(dict.fromkeys(theirs + DISABLED_FEATURES)))
    return playwright.chromium.launch(executable_path=CHROMIUM, args=args)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    need(os.path.exists(CHROMIUM), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()
