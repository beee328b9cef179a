"""Headless Chromium for the tests that look at a page (the status page, Label Studio's editor): Debian's
`chromium` driven by playwright (never `playwright install`: its browser download is not reachable), with every
request that is not to 127.0.0.1 / localhost aborted and recorded, and the page's console errors, uncaught
exceptions, failed requests and HTTP errors collected for the test to judge."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"


def sync_playwright_or_skip(fail_instead: bool = False):
    """playwright's `sync_playwright`; skips (or fails, where the run must not pass vacuously) without Chromium
    or playwright."""
    why = None
    if not os.path.exists(CHROMIUM):
        why = (f"{CHROMIUM} is not installed (scripts/bootstrap.sh --test installs Debian's chromium package; "
               f"apt-get install chromium failed or was not run)")
    else:
        try:
            from playwright.sync_api import sync_playwright

            return sync_playwright
        except ImportError as exc:
            why = f"playwright is not installed ({exc}; it is pinned in requirements-test.txt)"
    if fail_instead:
        pytest.fail(why)
    pytest.skip(why)


@dataclass
class PageLog:
    outside: List[str] = field(default_factory=list)  # requests to other hosts (aborted)
    console: List[str] = field(default_factory=list)  # "type: text" of the console messages kept
    page_errors: List[str] = field(default_factory=list)  # uncaught exceptions
    failed: List[str] = field(default_factory=list)  # requests that failed (network level)
    bad_status: List[str] = field(default_factory=list)  # "status url" of HTTP >= 400 answers


@contextmanager
def localhost_page(viewport: dict, console_types: Sequence[str] = ("error",), fail_instead: bool = False,
                   **context_options) -> Iterator[Tuple[object, PageLog]]:
    """A fresh page in headless Chromium that may reach only 127.0.0.1 / localhost; yields (page, log)."""
    sync_playwright = sync_playwright_or_skip(fail_instead)
    log = PageLog()

    def only_localhost(route):
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            log.outside.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(viewport=viewport, **context_options)
            context.route("**/*", only_localhost)
            page = context.new_page()
            page.on("console", lambda m: log.console.append(f"{m.type}: {m.text}") if m.type in console_types
                    else None)
            page.on("pageerror", lambda e: log.page_errors.append(str(e)))
            page.on("requestfailed", lambda r: log.failed.append(f"{r.url}: {r.failure}"))
            page.on("response", lambda r: log.bad_status.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            yield page, log
        finally:
            browser.close()


def keep_screenshot(page, tmp_path: Path, name: str, env_var: str, min_bytes: int, full_page: bool = False) -> Path:
    """Screenshot the page into tmp_path (it must be a real picture: at least `min_bytes`), and copy it to the
    path in $env_var when that is set (how docs/*.png are made)."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=full_page)
    assert shot.stat().st_size > min_bytes
    target = os.environ.get(env_var)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    return shot
