"""The portal in a real browser (Debian's Chromium) against `clarion serve --sandbox`: what an
operator does on a first day, from sign-in to reading why a delivery failed."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import Page, expect

from e2e.conftest import ClarionServer

TOKEN = "ab" * 32
# Sandbox APNs: a token starting `dead` is unregistered, one starting `slow` answers after 5 s
# (long enough that the notification page is certainly still live when it opens).
DEAD_TOKEN = "dead" + "0" * 60
SLOW_TOKEN = "slow" + "0" * 60
PHONE = "+14155550142"
# Long enough for several live updates; the page's own updates, not a sleep, are awaited.
LIVE_TIMEOUT_MS = 30_000


async def _sign_in(page: Page, server: ClarionServer, secret: str | None = None) -> None:
    await page.goto(server.base_url + "/portal/")
    await expect(page).to_have_url(re.compile(r"/portal/sign-in"))
    await page.get_by_label("Account SID or API key SID").fill(server.account_sid)
    await page.get_by_label("Auth token or API key secret").fill(secret or server.auth_token)
    await page.get_by_role("button", name="Sign in").click()


def _register(
    server: ClarionServer, service_sid: str, identity: str, kind: str, address: str
) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/Services/{service_sid}/Bindings",
        data={"Identity": identity, "BindingType": kind, "Address": address},
        auth=(server.account_sid, server.auth_token),
    )
    assert response.status_code == 201, response.text


async def test_an_operator_sends_and_debugs_a_notification(
    page: Page, sandbox_portal: ClarionServer
) -> None:
    await _sign_in(page, sandbox_portal)
    await expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()

    # A service whose notifications fail over from push to SMS.
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Services").click()
    await page.get_by_role("link", name="New service").first.click()
    await page.get_by_label("Name", exact=True).fill("Shop")
    await page.get_by_label("Default failover policy").fill(
        '{"channels": ["push", "sms"], "wait": 1}'
    )
    await page.get_by_role("button", name="Create service").click()
    await expect(page.get_by_role("status")).to_have_text("Service created.")
    service_sid = re.search(r"IS[0-9a-f]{32}", page.url).group(0)

    # A sandbox credential: the VAPID key pair is generated, the private half never shown.
    await (
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Credentials").click()
    )
    await page.get_by_role("link", name="New credential").first.click()
    await page.get_by_role("link", name=re.compile("Web push")).click()
    await page.get_by_label("Name", exact=True).fill("Browser pushes")
    await page.get_by_label("Subject").fill("mailto:ops@example.com")
    await page.get_by_role("button", name="Create credential").click()
    await expect(page.get_by_role("status")).to_contain_text("Credential created")
    await expect(page.get_by_label("VapidPublicKey")).to_have_value(re.compile(r"^B[\w-]{40,}$"))
    await expect(page.get_by_label("VapidPrivateKey")).to_have_value("")

    # The app registers its users' devices through the API.
    _register(sandbox_portal, service_sid, "alice", "apn", TOKEN)
    _register(sandbox_portal, service_sid, "bob", "apn", DEAD_TOKEN)
    _register(sandbox_portal, service_sid, "bob", "sms", PHONE)
    _register(sandbox_portal, service_sid, "carol", "apn", SLOW_TOKEN)

    # Send from the portal; the notification page fills in live.
    await page.goto(f"{sandbox_portal.base_url}/portal/services/{service_sid}/send")
    await page.get_by_label("Identities").fill("alice\nbob\ncarol")
    await page.get_by_label("Title").fill("Order shipped")
    await page.get_by_label("Body").fill("Your parcel is on its way")
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_role("status")).to_contain_text("Notification accepted")
    notification_url = page.url
    await expect(page.get_by_text("live", exact=True)).to_be_visible()
    await expect(page.locator("#notification-status")).to_have_text(
        "completed", timeout=LIVE_TIMEOUT_MS
    )
    assert page.url == notification_url  # updated in place, not reloaded
    await expect(page.locator('[data-count="total"]')).to_have_text("4")
    await expect(page.locator('[data-count="failed"]')).to_have_text("1")

    # Bob's push token was dead: the failed delivery says why and what to do.
    await page.get_by_role("link", name="Unregistered").click()
    await expect(page.locator("#delivery-status")).to_have_text("failed")
    problem = page.locator("#provider-error")
    await expect(problem).to_contain_text("Unregistered")
    await expect(problem).to_contain_text("What it means: The app was uninstalled")
    await expect(page.get_by_text(DEAD_TOKEN)).to_have_count(0)  # addresses are masked

    # His failover chain went on to SMS, which reached him.
    chain = page.get_by_role("heading", name="Failover chain of bob").locator("..")
    await expect(chain).to_contain_text("Step 2")
    await expect(chain).to_contain_text("the earlier address is dead")
    await chain.get_by_role("link", name=re.compile("SMS")).click()
    await expect(page.locator("#delivery-status")).to_have_text(re.compile("sent|delivered"))
    await expect(page.get_by_text(PHONE)).to_have_count(0)

    # The dead binding is retired, with the provider's reason.
    await page.goto(
        f"{sandbox_portal.base_url}/portal/services/{service_sid}/bindings?status=inactive"
    )
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("bob")
    await expect(rows.first).to_contain_text("inactive")

    # The dashboard charts it.
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Dashboard").click()
    await expect(page.locator('svg[aria-label^="Deliveries per channel"]')).to_be_visible()
    await expect(page.locator("svg[aria-label='Top error codes']")).to_contain_text("Unregistered")

    # Signing out ends it.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("status")).to_have_text("You are signed out.")
    await page.goto(sandbox_portal.base_url + "/portal/notifications")
    await expect(page).to_have_url(re.compile(r"/portal/sign-in"))


async def test_a_wrong_secret_does_not_sign_in(page: Page, sandbox_portal: ClarionServer) -> None:
    await _sign_in(page, sandbox_portal, secret="0" * 32)
    await expect(page.get_by_role("alert")).to_contain_text("do not match")
    await page.goto(sandbox_portal.base_url + "/portal/services")
    await expect(page).to_have_url(re.compile(r"/portal/sign-in"))


async def test_a_post_without_the_csrf_token_is_refused(
    page: Page, sandbox_portal: ClarionServer
) -> None:
    await _sign_in(page, sandbox_portal)
    await expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    # The browser's own cookies, a form from elsewhere: no token.
    response = await page.request.post(
        sandbox_portal.base_url + "/portal/services/new", form={"FriendlyName": "Forged"}
    )
    assert response.status == 403
    await page.goto(sandbox_portal.base_url + "/portal/services")
    await expect(page.get_by_text("Forged")).to_have_count(0)
