"""Debian's Chromium, headless, driven by Playwright: what test_report opens the report in (and the README screenshot).

Usage::

    browser.require()                            # pytest: skipped (failed under RH_REQUIRE_BROWSER=1) without one
    with chromium() as browser:
        visit = open_page(browser, Path("demo-out/report.html"))
        visit.page.screenshot(...); visit.errors  # console errors, page errors and failed requests, as lines

    python tests/browser.py demo-out/report.html docs/img/report.png   # the screenshot the README shows

Why the system browser: a test must not download one (``playwright install`` fetches its own build), and CI
installs Debian's ``chromium`` with apt-get (``.ci/run``). Playwright's Python package carries only its driver.
Every launch gets a fresh profile, and the switches that would make Chromium reach the network on its own
(component updates, background networking, sync) are off, so a failed request can only come from the page.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
REQUIRE = "RH_REQUIRE_BROWSER"  # set to 1 by .ci/run: a missing browser fails instead of skipping
SWITCHES = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAPTOP = {"width": 1280, "height": 800}


def missing() -> str | None:
    """Why no browser test can run here, or None: Debian's chromium and Playwright's package are both needed."""
    if not (Path(CHROMIUM).is_file() or shutil.which("chromium")):
        return f"no {CHROMIUM} (Debian's chromium package: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is not installed (pip install 'rh-eval[test]')"
    return None


def require() -> None:
    """In a test: skip it, saying why, when :func:`missing` finds no browser; fail it instead under
    ``RH_REQUIRE_BROWSER=1`` (CI), where a skipped browser test would pass unseen."""
    import pytest

    reason = missing()
    if reason and os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{REQUIRE}=1 but {reason}")
    if reason:
        pytest.skip(reason)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright persistent context on a fresh profile), closed on exit."""
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="rh-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=SWITCHES, viewport=LAPTOP)
        try:
            yield context
        finally:
            context.close()


@dataclass
class Visit:
    """One page opened from disk, with what went wrong while it loaded and every URL it requested."""

    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


def open_page(context: Any, path: Path) -> Visit:
    """Open ``path`` (file://) in a new tab and wait for it to load, recording errors and requests."""
    page = context.new_page()
    visit = Visit(page)
    page.on("console", lambda message: message.type == "error" and visit.errors.append(f"console: {message.text}"))
    page.on("pageerror", lambda error: visit.errors.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: visit.errors.append(f"failed request: {request.url} ({request.failure})"))
    page.on("request", lambda request: visit.requests.append(request.url))
    page.goto(Path(path).resolve().as_uri(), wait_until="load")
    return visit


def screenshot(context: Any, report: Path, out: Path, size: dict[str, int] = LAPTOP) -> Visit:
    """The top of a page, as a reader first sees it at ``size``, saved to ``out`` (PNG)."""
    visit = open_page(context, report)
    visit.page.set_viewport_size(size)
    visit.page.screenshot(path=str(out))
    return visit


def main(argv: list[str]) -> int:
    """``browser.py REPORT PNG [WIDTH HEIGHT]``: :func:`screenshot` at a laptop's size (or the one given)."""
    report, out = Path(argv[0]), Path(argv[1])
    size = {"width": int(argv[2]), "height": int(argv[3])} if len(argv) > 3 else LAPTOP
    reason = missing()
    if reason:
        print(f"browser.py: {reason}", file=sys.stderr)
        return 2
    with chromium() as context:
        visit = screenshot(context, report, out, size)
    print(f"{out}: {size['width']}x{size['height']}, {os.path.getsize(out) / 1e3:.0f} kB; errors: {visit.errors or 'none'}")
    return 1 if visit.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
