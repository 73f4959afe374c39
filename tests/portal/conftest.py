"""Fixtures of the portal tests.

Two kinds of test live here: page tests through the ASGI app in-process (`portal` — fast, on
SQLite and PostgreSQL like the API tests), and browser tests driving Debian's Chromium through
Playwright against a real `clarion serve --sandbox` (`sandbox_portal`, `page`). A failed
browser test leaves a screenshot of its page in `test-results/portal/`.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

from e2e.conftest import ClarionServer, running_server

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path("test-results/portal")
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class PortalClient:
    """A browser-like client of the portal: keeps cookies, echoes the page's CSRF token."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.csrf = ""

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.get(path, **kwargs)
        match = _CSRF.search(response.text)
        if match:
            self.csrf = match.group(1)
        return response

    async def post(
        self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True
    ) -> httpx.Response:
        fields = dict(data or {})
        if csrf:
            fields["csrf_token"] = self.csrf
        return await self.client.post(path, data=fields)

    async def sign_in(self, username: str, password: str) -> httpx.Response:
        await self.get("/portal/sign-in")
        response = await self.post("/portal/sign-in", {"username": username, "password": password})
        await self.get("/portal/")
        return response


@pytest.fixture
async def portal_factory(
    app_transport: httpx.ASGITransport,
) -> Any:
    """Makes signed-out portal clients on the in-process app; closes them afterwards."""
    clients: list[httpx.AsyncClient] = []

    def make() -> PortalClient:
        client = httpx.AsyncClient(transport=app_transport, base_url="http://testserver")
        clients.append(client)
        return PortalClient(client)

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def portal(portal_factory: Any, account: Any) -> PortalClient:
    """A portal client signed in as the `account` of the `api` fixture."""
    client: PortalClient = portal_factory()
    response = await client.sign_in(account.sid, account.token)
    assert response.status_code == 303, response.text
    return client


# --- browser tests ---------------------------------------------------------------------------
# Playwright's async API on the suite's own event loop: pytest-playwright's fixtures use the
# sync API, whose loop stays running for the whole session and breaks every asyncio test after
# the first browser test.


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, with nothing phoning home."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A fresh browser context per test; a screenshot of the page when the test failed."""
    context = await browser.new_context()
    opened = await context.new_page()
    yield opened
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        await opened.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    await context.close()


@pytest.fixture(scope="session")
def sandbox_portal(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ClarionServer]:
    """`clarion serve --sandbox` on a data directory of its own, for the browser tests."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CLARION_")}
    env["CLARION_DATA_DIR"] = str(tmp_path_factory.mktemp("portal-sandbox"))
    with running_server(env, "--sandbox") as server:
        yield server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[Any]:
    """Keep each test's call report on it, for the `page` fixture's screenshot on failure."""
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
