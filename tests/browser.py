"""A real headless Chromium (Debian's), driven by Playwright, for the browser tests.

Playwright's sync API marks its own event loop as running in the thread it is used
from, so Django's ORM would refuse sync calls there (SynchronousOnlyOperation).
The browser therefore lives in a thread of its own (`Browser.run`), and the
test's thread keeps the ORM and httpx.

Every request that would leave the gateway's host is aborted and recorded, so a page
that needs the internet (a CDN) shows up in `Browser.clean()`.

Without chromium or playwright a browser test module skips (`skip_without_browser`),
except under CI (CI set), where it fails. CHROMIUM_PATH overrides /usr/bin/chromium.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# A common laptop screen: what the console must fit.
LAPTOP = {"width": 1366, "height": 768}


def _missing() -> str:
    """What the browser tests need and this machine lacks ("" when nothing)."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    return "browser tests need " + " and ".join(missing) if missing else ""


MISSING = _missing()


def skip_without_browser() -> None:
    """Skip the calling module without chromium or playwright, before any fixture
    starts; under CI the `Browser` fails instead, so CI proves the pages in a browser."""
    if MISSING and not os.environ.get("CI"):
        pytest.skip(MISSING, allow_module_level=True)


def shot(page, shots: Path, name: str, *, full_page: bool = False) -> None:
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{name}.png"), full_page=full_page)


class Browser:
    """One Chromium page, used only from a worker thread of its own (see the docstring)."""

    def __init__(self, base_url: str, shots: Path, viewport: dict[str, int] = LAPTOP) -> None:
        if MISSING:
            pytest.fail(MISSING)
        self.base_url = base_url
        self.shots = shots
        self.viewport = viewport
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="playwright")
        self.console_errors: list[str] = []
        self.failed: list[str] = []  # failed requests and responses >= 400
        self.external: list[str] = []  # requests that tried to leave the gateway (offline)
        self._pool.submit(self._start).result(60)

    def run(self, step: Callable[[Any], Any], timeout: float = 60) -> Any:
        """step(page) in the browser's thread; its result, or its exception."""

        def call() -> Any:
            try:
                return step(self.page)
            except Exception:
                # What the browser showed when the step failed, for the CI artifacts.
                with contextlib.suppress(Exception):
                    name = f"failed-{getattr(step, '__name__', 'step')}"
                    shot(self.page, self.shots, name, full_page=True)
                raise

        return self._pool.submit(call).result(timeout)

    def shot(self, page, name: str, *, full_page: bool = False) -> None:
        shot(page, self.shots, name, full_page=full_page)

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._chromium = self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        context = self._chromium.new_context(base_url=self.base_url, viewport=self.viewport)
        context.set_default_timeout(10_000)
        host = urlsplit(self.base_url).netloc

        def route(route) -> None:
            if urlsplit(route.request.url).netloc in (host, ""):
                route.continue_()
            else:
                self.external.append(route.request.url)
                route.abort()

        context.route("**/*", route)
        self.page = context.new_page()
        self.page.on(
            "console",
            lambda m: m.type == "error" and self.console_errors.append(f"{m.text} @ {m.location}"),
        )
        self.page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        self.page.on("requestfailed", self._request_failed)
        self.page.on(
            "response", lambda r: r.status >= 400 and self.failed.append(f"{r.url}: {r.status}")
        )

    def _request_failed(self, request) -> None:
        # select2 aborts its autocomplete search when a newer one (or the choice) supersedes it.
        if "/admin/autocomplete/" in request.url and request.failure == "net::ERR_ABORTED":
            return
        self.failed.append(f"{request.url}: {request.failure}")

    def close(self) -> None:
        def stop() -> None:
            self._chromium.close()
            self._playwright.stop()

        try:
            self._pool.submit(stop).result(30)
        finally:
            self._pool.shutdown()

    def clean(self) -> None:
        """No console errors, failed requests or attempts to reach another host so far."""
        problems = {"console": self.console_errors, "failed": self.failed}
        problems["external"] = self.external
        assert not any(problems.values()), problems
        for found in problems.values():
            found.clear()
