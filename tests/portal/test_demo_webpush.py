"""The web push demo page (/demo/webpush): its guard and service worker headers in-process,
and in Chromium, the page's service worker showing exactly the bytes Clarion encrypted.

Headless Chromium cannot reach its vendor's push service, so `pushManager.subscribe()` fails
there (the page must say so). The browser test therefore lets the web-push emulator play the
subscribed browser: Clarion encrypts a notification to the emulator's subscription, the
emulator decrypts it, and DevTools' `ServiceWorker.deliverPushMessage` hands those decrypted
bytes to the page's service worker, as Chromium does with a push it decrypted itself.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, BrowserContext, CDPSession, Page, expect
from sqlalchemy import Connection

from clarion.api.app import create_app
from clarion.channels.webpush import WebPushChannel
from clarion.delivery.channel_pool import Credential
from clarion.delivery.wakeup import LocalSignal, SoleLeader
from clarion.delivery.worker import Worker
from clarion.emulators.webpush import PushMessage, WebPushEmulator
from clarion.portal import demo
from clarion.store import accounts, migrate
from clarion.store.database import Database
from clarion.vault import Vault, new_key

PAGE = "/portal/demo/webpush"
# Generous bounds for a loaded machine; the page's own updates, not sleeps, are awaited.
TIMEOUT_SECONDS = 30
TIMEOUT_MS = TIMEOUT_SECONDS * 1000


async def _web_push_service(api: httpx.AsyncClient) -> tuple[str, str]:
    """A service with a web push credential (its VAPID key pair generated): both SIDs."""
    created = await api.post(
        "/v1/Credentials",
        data={
            "Type": "webpush",
            "FriendlyName": "Demo pushes",
            "Subject": "mailto:ops@example.com",
        },
    )
    assert created.status_code == 201, created.text
    credential = created.json()["sid"]
    service = await api.post(
        "/v1/Services", data={"FriendlyName": "Demo shop", "WebpushCredentialSid": credential}
    )
    assert service.status_code == 201, service.text
    return service.json()["sid"], credential


# --- in-process: the guard, the worker script, the registration endpoint --------------------


async def test_the_demo_needs_a_portal_session(portal_factory: Any) -> None:
    visitor = portal_factory()
    entry = await visitor.get("/demo/webpush")
    assert entry.status_code == 307
    assert entry.headers["location"] == PAGE
    response = await visitor.get(PAGE)
    assert response.status_code == 303
    assert response.headers["location"] == f"/portal/sign-in?next={PAGE}"
    await visitor.get("/portal/sign-in")  # a CSRF token, so only the missing session refuses
    posted = await visitor.post(
        f"{PAGE}/subscriptions", {"ServiceSid": "IS" + "0" * 32, "Identity": "x", "Address": "{}"}
    )
    assert posted.status_code == 303
    assert posted.headers["location"].startswith("/portal/sign-in")


async def test_the_service_worker_may_control_the_demo_page(portal_factory: Any) -> None:
    response = await portal_factory().get(f"{PAGE}/sw.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["service-worker-allowed"] == PAGE
    assert response.content == demo.WORKER_FILE.read_bytes()
    assert 'addEventListener("push"' in response.text


async def test_the_page_shows_the_services_vapid_key_and_stores_a_subscription(
    portal: Any, api: httpx.AsyncClient
) -> None:
    service_sid, credential_sid = await _web_push_service(api)
    credential = (await api.get(f"/v1/Credentials/{credential_sid}")).json()
    key = credential["settings"]["vapid_public_key"]
    page = await portal.get(f"{PAGE}?service={service_sid}")
    assert page.status_code == 200
    assert f'<code id="vapid-key" class="mono">{key}</code>' in page.text
    assert f'data-service-sid="{service_sid}"' in page.text

    push_service = WebPushEmulator()
    await push_service.start()
    try:
        subscription = push_service.subscribe(application_server_key=key)
    finally:
        await push_service.close()
    fields = {"ServiceSid": service_sid, "Identity": "alice", "Address": subscription.address()}
    refused = await portal.client.post(f"{PAGE}/subscriptions", data=fields)
    assert refused.status_code == 403  # no CSRF token
    stored = await portal.client.post(
        f"{PAGE}/subscriptions", data=fields, headers={"X-CSRF-Token": portal.csrf}
    )
    assert stored.status_code == 201, stored.text
    assert stored.json()["identity"] == "alice"
    bindings = (
        await api.get(f"/v1/Services/{service_sid}/Bindings", params={"Identity": "alice"})
    ).json()["bindings"]
    assert [(b["sid"], b["binding_type"]) for b in bindings] == [(stored.json()["sid"], "webpush")]
    assert json.loads(bindings[0]["address"])["endpoint"] == subscription.endpoint

    broken = await portal.client.post(
        f"{PAGE}/subscriptions",
        data={**fields, "Address": '{"endpoint": "http://insecure.example"}'},
        headers={"X-CSRF-Token": portal.csrf},
    )
    assert broken.status_code == 400
    assert "Address" in broken.json()["message"]


async def test_a_service_without_web_push_credential_is_explained(
    portal: Any, api: httpx.AsyncClient
) -> None:
    created = await api.post("/v1/Services", data={"FriendlyName": "No pushes"})
    page = await portal.get(f"{PAGE}?service={created.json()['sid']}")
    assert page.status_code == 200
    assert "has no web push credential" in page.text
    assert 'data-vapid-key=""' in page.text


# --- in Chromium, against Clarion with the web-push emulator --------------------------------


@dataclass(frozen=True)
class DemoServer:
    base_url: str
    account_sid: str
    auth_token: str
    push_service: WebPushEmulator


@pytest.fixture
async def demo_server(tmp_path: Path) -> AsyncIterator[DemoServer]:
    """Clarion (API, portal, a worker) on a port of its own, its web pushes going to a web-push
    emulator the test holds, so the test can subscribe in it and read what it decrypted."""
    push_service = WebPushEmulator()
    await push_service.start()
    database = Database(f"sqlite:///{tmp_path / 'clarion.db'}")
    await migrate.upgrade(database)
    await database.start()
    vault = Vault(new_key())

    def create(conn: Connection) -> accounts.Issued:
        return accounts.create_account(conn, vault, friendly_name="demo")

    account = await database.write(create)

    def channel(credential: Credential) -> WebPushChannel:
        # The webpush credential's own keys; only the emulator's test CA is added to the trust.
        return WebPushChannel(
            vapid_private_key=credential.secret["VapidPrivateKey"],
            subject=credential.settings["Subject"],
            ssl_context=push_service.client_ssl_context(),
        )

    signal = LocalSignal()
    worker = Worker(database, channels=channel, vault=vault, signal=signal, leader=SoleLeader())
    app = create_app(database=database, vault=vault, on_enqueued=signal.notify)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    async with asyncio.timeout(TIMEOUT_SECONDS):
        while not server.started:
            assert not serving.done(), "uvicorn stopped while starting"
            await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    await worker.start()
    try:
        yield DemoServer(f"http://127.0.0.1:{port}", account.sid, account.secret, push_service)
    finally:
        await worker.stop()
        server.should_exit = True
        await serving
        await database.close()
        await push_service.close()


@pytest.fixture
async def demo_context(browser: Browser, demo_server: DemoServer) -> AsyncIterator[BrowserContext]:
    """A browser context that may show the demo's notifications."""
    context = await browser.new_context()
    await context.grant_permissions(["notifications"], origin=demo_server.base_url)
    yield context
    await context.close()


@pytest.fixture
async def demo_page(
    demo_context: BrowserContext, request: pytest.FixtureRequest
) -> AsyncIterator[Page]:
    opened = await demo_context.new_page()
    yield opened
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        path = Path("test-results/portal") / f"{request.node.name}.png"
        await opened.screenshot(path=str(path), full_page=True)


async def _decrypted_push(push_service: WebPushEmulator, endpoint: str) -> PushMessage:
    async with asyncio.timeout(TIMEOUT_SECONDS):
        # The emulator records pushes in a list, with no event to await.
        while not (received := push_service.pending(endpoint)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert len(received) == 1
    return received[0]


async def _demo_registration(
    context: BrowserContext, page: Page, scope: str
) -> tuple[CDPSession, str]:
    """A DevTools session with its ServiceWorker domain on, and the registration id it gives
    the demo's service worker."""
    cdp = await context.new_cdp_session(page)
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def updated(event: dict[str, Any]) -> None:
        for registration in event["registrations"]:
            ours = registration["scopeURL"] == scope and not registration["isDeleted"]
            if ours and not found.done():
                found.set_result(registration["registrationId"])

    cdp.on("ServiceWorker.workerRegistrationUpdated", updated)
    await cdp.send("ServiceWorker.enable")
    async with asyncio.timeout(TIMEOUT_SECONDS):
        return cdp, await found


async def test_the_service_worker_shows_what_clarion_encrypted(
    demo_server: DemoServer, demo_context: BrowserContext, demo_page: Page
) -> None:
    page, base = demo_page, demo_server.base_url
    async with httpx.AsyncClient(
        base_url=base, auth=(demo_server.account_sid, demo_server.auth_token)
    ) as api:
        service_sid, _ = await _web_push_service(api)

        # Behind the portal's sign-in, then back on the demo, its only service chosen.
        await page.goto(base + "/demo/webpush")
        await expect(page).to_have_url(re.compile(r"/portal/sign-in\?next=/portal/demo/webpush"))
        await page.get_by_label("Account SID or API key SID").fill(demo_server.account_sid)
        await page.get_by_label("Auth token or API key secret").fill(demo_server.auth_token)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Web push demo")).to_be_visible()
        await expect(page.locator("#sw-status")).to_have_attribute(
            "data-state", "active", timeout=TIMEOUT_MS
        )
        vapid_key = await page.locator("#vapid-key").inner_text()
        assert re.fullmatch(r"B[\w-]{86}", vapid_key)

        # Subscribing needs Chromium's push service, out of reach here: the page says why.
        await page.get_by_label("Identity").fill("alice")
        await page.get_by_role("button", name="Subscribe this browser").click()
        outcome = page.locator("#subscribe-error, #subscribe-result").locator("visible=true")
        await expect(outcome).to_have_count(1, timeout=TIMEOUT_MS)
        if await page.locator("#subscribe-error").is_visible():
            await expect(page.locator("#subscribe-error")).to_contain_text("The browser refused")

        # The emulator plays the subscribed browser, restricted to the key the page showed.
        subscription = demo_server.push_service.subscribe(application_server_key=vapid_key)
        registered = await api.post(
            f"/v1/Services/{service_sid}/Bindings",
            data={"Identity": "bob", "BindingType": "webpush", "Address": subscription.address()},
        )
        assert registered.status_code == 201, registered.text
        sent = await api.post(
            f"/v1/Services/{service_sid}/Notifications",
            data={
                "Identity": "bob",
                "Title": "Order shipped",
                "Body": "Your parcel is on its way",
                "Data": json.dumps({"order": "42"}),
            },
        )
        assert sent.status_code == 201, sent.text

    push = await _decrypted_push(demo_server.push_service, subscription.endpoint)
    assert push.decrypt_error is None
    assert push.plaintext is not None
    assert push.json()["title"] == "Order shipped"

    # Exactly the bytes the browser would have decrypted, into the page's service worker.
    cdp, registration = await _demo_registration(demo_context, page, base + PAGE)
    await cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": base, "registrationId": registration, "data": push.plaintext.decode()},
    )
    shown = page.locator("#incoming li")
    await expect(shown).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(shown.locator(".incoming-title")).to_have_text("Order shipped")
    await expect(shown.locator(".incoming-body")).to_have_text("Your parcel is on its way")
    await expect(shown.locator(".incoming-data")).to_have_text('{"order":"42"}')
    await expect(shown.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
    await expect(shown.locator(".incoming-shown")).to_have_text(
        "shown as a system notification", timeout=TIMEOUT_MS
    )
    await expect(page.locator("#incoming-empty")).to_be_hidden()
