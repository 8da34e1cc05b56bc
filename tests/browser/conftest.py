"""Browser tests: Playwright drives Debian's Chromium (headless) against a live server.

* ``CHROMIUM`` names the browser binary (default ``/usr/bin/chromium``; ``scripts/test.sh``
  installs it when missing).
* Every test saves screenshots of the pages it visits under ``TEST_ARTIFACTS_DIR``
  (default ``test-artifacts/screenshots``), one folder per test.
* Waits are Playwright's auto-waiting expectations with generous timeouts, never sleeps:
  the suite must hold on a loaded two-core machine.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as django_apps
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from accounts.models import User
from tests.billing.fake_stripe import FakeStripe
from tests.factories import UserFactory
from tests.usage.conftest import prices  # noqa: F401 (the model catalog fixture)

PASSWORD = "correct-horse-battery"
WEBHOOK_SECRET = "whsec_browser_0123456789"
TIMEOUT_MS = 30_000
ROOT = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    return Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "test-artifacts" / "screenshots"))


@pytest.fixture(scope="module")
def playwright_instance() -> Iterator[Playwright]:
    """Playwright's sync API keeps an event loop on the test thread while it runs, which
    Django takes for async code. The ORM calls a browser test makes between steps (and the
    database set-up around it) are plain synchronous code with nothing else on that loop,
    so they are allowed while Playwright runs: for this module only."""
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            yield playwright
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture(scope="module")
def chromium(playwright_instance: Playwright) -> Iterator[Browser]:
    executable = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    assert Path(executable).exists(), (
        f"{executable} is missing: install Debian's chromium (scripts/test.sh does)."
    )
    browser = playwright_instance.chromium.launch(
        executable_path=executable,
        headless=True,
        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    )
    yield browser
    browser.close()


class Shots:
    """Screenshots of the pages a test visits, numbered in order."""

    def __init__(self, page: Page, folder: Path) -> None:
        self.page, self.folder, self.count = page, folder, 0
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def page(chromium: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS * 2)
    expect.set_options(timeout=TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def shots(page: Page, request: pytest.FixtureRequest) -> Shots:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    return Shots(page, artifacts_dir() / name)


@pytest.fixture(autouse=True)
def _catalogue(transactional_db: None) -> None:
    """The default top-up packages and bonus rules (a live server's tests flush tables)."""
    migration = importlib.import_module("billing.migrations.0002_default_packages_and_bonus_rules")
    migration.create_defaults(django_apps, None)


@pytest.fixture(scope="session")
def _stripe_server() -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    yield fake
    fake.stop()


@pytest.fixture
def site(live_server: Any, settings: Any, _stripe_server: FakeStripe) -> Any:
    """The live server, with Stripe pointed at the fake and its hosted checkout on."""
    _stripe_server.reset()
    _stripe_server.host_checkout(
        webhook_url=f"{live_server.url}/billing/webhooks/stripe/", webhook_secret=WEBHOOK_SECRET
    )
    settings.SITE_URL = live_server.url
    settings.STRIPE_SECRET_KEY = _stripe_server.api_key
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_API_BASE = _stripe_server.url
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    return live_server


def make_user(**kwargs: Any) -> User:
    return UserFactory(password=PASSWORD, **kwargs)


def log_in(page: Page, base: str, user: User) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Email").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_test_id("balance")).to_be_visible()
