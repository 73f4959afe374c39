"""The portal's pages through the app in-process: sessions, CSRF, isolation, configuration
screens and the debugger, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection

from clarion.portal.session import COOKIE, IDLE_SECONDS, MAX_SECONDS, SessionCodec, anonymous
from clarion.store import accounts
from clarion.store.accounts import Principal
from clarion.store.database import Database
from clarion.vault import Vault

TOKEN = "a" * 64


async def _api_key(database: Database, account: Any) -> accounts.Issued:
    def op(conn: Connection) -> accounts.Issued:
        return accounts.create_api_key(conn, account_sid=account.sid, friendly_name="portal")

    return await database.write(op)


# --- sign-in, sessions, CSRF -----------------------------------------------------------------


async def test_pages_need_a_session(portal_factory: Any) -> None:
    anonymous_client = portal_factory()
    response = await anonymous_client.get("/portal/services")
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/sign-in?next=/portal/services"


async def test_sign_in_with_the_auth_token_opens_the_dashboard(
    portal_factory: Any, account: Any
) -> None:
    client = portal_factory()
    response = await client.sign_in(account.sid, account.token)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "httponly" in cookie.lower()
    assert "samesite=lax" in cookie.lower()
    assert "secure" not in cookie.lower()  # plain http here; https gets Secure
    dashboard = await client.get("/portal/")
    assert dashboard.status_code == 200
    assert account.sid in dashboard.text
    assert "Nothing sent in this window" in dashboard.text


async def test_sign_in_with_an_api_key(
    portal_factory: Any, account: Any, database: Database
) -> None:
    key = await _api_key(database, account)
    client = portal_factory()
    assert (await client.sign_in(key.sid, key.secret)).status_code == 303
    assert account.sid in (await client.get("/portal/services")).text


async def test_the_session_cookie_is_secure_over_https(
    app_transport: httpx.ASGITransport, account: Any
) -> None:
    async with httpx.AsyncClient(transport=app_transport, base_url="https://testserver") as raw:
        page = await raw.get("/portal/sign-in")
        assert "secure" in page.headers["set-cookie"].lower()


async def test_a_wrong_secret_is_refused(portal_factory: Any, account: Any) -> None:
    client = portal_factory()
    response = await client.sign_in(account.sid, "0" * 32)
    assert response.status_code == 401
    assert "do not match" in response.text
    assert (await client.get("/portal/services")).status_code == 303


async def test_a_post_without_the_csrf_token_changes_nothing(
    portal: Any, api: httpx.AsyncClient
) -> None:
    response = await portal.post("/portal/services/new", {"FriendlyName": "forged"}, csrf=False)
    assert response.status_code == 403
    assert "out of date" in response.text
    wrong = await portal.client.post(
        "/portal/services/new", data={"FriendlyName": "forged", "csrf_token": "x" * 32}
    )
    assert wrong.status_code == 403
    assert (await api.get("/v1/Services")).json()["services"] == []


async def test_sign_in_itself_needs_the_csrf_token(portal_factory: Any, account: Any) -> None:
    client = portal_factory()
    await client.get("/portal/sign-in")
    response = await client.post(
        "/portal/sign-in", {"username": account.sid, "password": account.token}, csrf=False
    )
    assert response.status_code == 403
    assert (await client.get("/portal/services")).status_code == 303


async def test_sign_out_ends_the_session(portal: Any) -> None:
    response = await portal.post("/portal/sign-out")
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/sign-in?done=signed-out"
    assert (await portal.get("/portal/services")).status_code == 303


async def test_a_sessions_ends_when_its_idle_time_or_lifetime_is_over(vault: Vault) -> None:
    now = [1_000_000.0]
    codec = SessionCodec(vault, clock=lambda: now[0])
    principal = Principal(account_id=1, account_sid="AC" + "0" * 32)
    session = anonymous().signed_in(
        username=principal.account_sid, principal=principal, digest="d", now=now[0]
    )
    sealed = codec.seal(session)
    now[0] += IDLE_SECONDS - 1
    assert codec.open(sealed) == session
    now[0] += 2
    assert codec.open(sealed) is None
    # Re-issued on every request, it lives on while used, until its lifetime is over.
    for _ in range(MAX_SECONDS // (IDLE_SECONDS - 60)):
        sealed = codec.seal(session)
        now[0] += IDLE_SECONDS - 60
    assert codec.open(sealed) is None


async def test_a_forged_cookie_is_no_session(portal_factory: Any) -> None:
    client = portal_factory()
    client.client.cookies.set(COOKIE, "gAAAAAforged", path="/portal")
    assert (await client.get("/portal/")).status_code == 303


# --- isolation -------------------------------------------------------------------------------


async def test_an_account_sees_only_its_own_records(
    portal: Any,
    portal_factory: Any,
    api: httpx.AsyncClient,
    database: Database,
    vault: Vault,
) -> None:
    service = (await api.post("/v1/Services", data={"FriendlyName": "mine"})).json()["sid"]
    sent = await api.post(
        f"/v1/Services/{service}/Notifications",
        data={"Body": "hi", "ToBinding": json.dumps({"binding_type": "sms", "address": "x"})},
    )
    notification = sent.json()["sid"]
    other = await database.write(
        lambda conn: accounts.create_account(conn, vault, friendly_name="other")
    )
    intruder = portal_factory()
    await intruder.sign_in(other.sid, other.secret)
    assert "mine" not in (await intruder.get("/portal/services")).text
    assert notification not in (await intruder.get("/portal/notifications")).text
    for path in (
        f"/portal/services/{service}",
        f"/portal/services/{service}/bindings",
        f"/portal/services/{service}/notifications/{notification}",
    ):
        assert (await intruder.get(path)).status_code == 404, path
    deleted = await intruder.post(f"/portal/services/{service}/delete")
    assert deleted.status_code == 404
    assert (await api.get(f"/v1/Services/{service}")).status_code == 200


# --- configuration ---------------------------------------------------------------------------


async def test_create_and_edit_a_service(portal: Any, api: httpx.AsyncClient) -> None:
    assert "No services yet" in (await portal.get("/portal/services")).text
    await portal.get("/portal/services/new")
    created = await portal.post(
        "/portal/services/new", {"FriendlyName": "Shop", "LogEnabled": "true"}
    )
    assert created.status_code == 303
    sid = re.search(r"/portal/services/(IS\w+)", created.headers["location"]).group(1)
    await portal.get(f"/portal/services/{sid}")
    saved = await portal.post(
        f"/portal/services/{sid}",
        {
            "FriendlyName": "Shop",
            "Failover": '{"channels": ["push", "sms"], "wait": 60}',
            "DeliveryCallbackUrl": "https://example.com/cb",
            "DeliveryCallbackEnabled": "true",
        },
    )
    assert saved.status_code == 303
    stored = (await api.get(f"/v1/Services/{sid}")).json()
    assert stored["failover"] == {"channels": ["push", "sms"], "wait": 60}
    assert stored["delivery_callback_enabled"] is True
    assert stored["log_enabled"] is False  # unchecked on the edit form
    page = await portal.get(f"/portal/services/{sid}?done=service-saved")
    assert "Service saved." in page.text
    assert "https://example.com/cb" in page.text


async def test_a_bad_setting_shows_the_apis_message_on_the_form(portal: Any) -> None:
    await portal.get("/portal/services/new")
    response = await portal.post(
        "/portal/services/new", {"FriendlyName": "x", "Failover": "{not json"}
    )
    assert response.status_code == 400
    assert "Parameter &#39;Failover&#39; is invalid" in response.text
    assert 'value="x"' in response.text  # what was typed is kept


async def test_credentials_are_created_rotated_and_deleted_without_showing_secrets(
    portal: Any, api: httpx.AsyncClient
) -> None:
    secret, rotated = "f" * 32, "e" * 32
    await portal.get("/portal/credentials/new?type=twilio-sms")
    created = await portal.post(
        "/portal/credentials/new",
        {
            "Type": "twilio-sms",
            "FriendlyName": "sms",
            "AccountSid": "AC" + "1" * 32,
            "AuthToken": secret,
            "From": "+14155550100",
        },
    )
    assert created.status_code == 303, created.text
    path = created.headers["location"].split("?")[0]
    page = await portal.get(path)
    assert "+14155550100" in page.text
    assert secret not in page.text
    # Rotating one secret keeps the rest; an empty secret field keeps the stored one.
    rotate = await portal.post(
        path, {"FriendlyName": "sms", "AuthToken": rotated, "From": "+14155550100"}
    )
    assert rotate.status_code == 303
    assert rotated not in (await portal.get(path)).text
    renamed = await portal.post(path, {"FriendlyName": "renamed", "AuthToken": ""})
    assert renamed.status_code == 303
    listed = await portal.get("/portal/credentials")
    assert "renamed" in listed.text
    assert secret not in listed.text
    assert rotated not in listed.text
    deleted = await portal.post(path + "/delete")
    assert deleted.status_code == 303
    assert (await api.get("/v1/Credentials")).json()["credentials"] == []


async def test_binding_search_by_identity_address_tag_and_type(
    portal: Any, api: httpx.AsyncClient, service_sid: str
) -> None:
    for identity, kind, address, tag in (
        ("alice", "apn", TOKEN, "vip"),
        ("alice", "sms", "+14155550101", "vip"),
        ("bob", "sms", "+14155550102", "news"),
    ):
        response = await api.post(
            f"/v1/Services/{service_sid}/Bindings",
            data={"Identity": identity, "BindingType": kind, "Address": address, "Tag": tag},
        )
        assert response.status_code == 201
    base = f"/portal/services/{service_sid}/bindings"

    async def found(**query: str) -> list[str]:
        page = await portal.get(base, params=query)
        assert page.status_code == 200
        return re.findall(r"<td>(alice|bob)</td>", page.text)

    assert await found() == ["alice", "alice", "bob"]
    assert await found(identity="bo") == ["bob"]
    assert await found(tag="vip", type="sms") == ["alice"]
    assert await found(address="+1415555010") == ["alice", "bob"]
    assert await found(status="inactive") == []
    page = await portal.get(base, params={"identity": "alice", "type": "apn"})
    assert TOKEN not in page.text  # masked
    assert "aaaaaa••••aaaa" in page.text


async def test_delete_a_binding(portal: Any, api: httpx.AsyncClient, service_sid: str) -> None:
    binding = await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={"Identity": "carol", "BindingType": "apn", "Address": TOKEN},
    )
    sid = binding.json()["sid"]
    await portal.get(f"/portal/services/{service_sid}/bindings")
    response = await portal.post(f"/portal/services/{service_sid}/bindings/{sid}/delete")
    assert response.status_code == 303
    assert (await api.get(f"/v1/Services/{service_sid}/Bindings/{sid}")).status_code == 404


# --- sending and the debugger ----------------------------------------------------------------


async def test_send_opens_the_notification_page(
    portal: Any, api: httpx.AsyncClient, service_sid: str
) -> None:
    await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={"Identity": "alice", "BindingType": "apn", "Address": TOKEN},
    )
    await portal.get(f"/portal/services/{service_sid}/send")
    response = await portal.post(
        f"/portal/services/{service_sid}/send",
        {"Identity": "alice, bob", "Body": "Your order shipped", "FailoverChoice": "service"},
    )
    assert response.status_code == 303, response.text
    page = await portal.get(response.headers["location"])
    assert "Your order shipped" in page.text
    assert "alice, bob" in page.text  # identities: the targets as requested
    assert 'sse-connect="' in page.text  # in flight: the page goes live
    listed = await portal.get("/portal/notifications", params={"status": "queued"})
    assert "Your order shipped" in listed.text


async def test_a_bad_send_keeps_the_form_and_says_what_to_fix(
    portal: Any, service_sid: str
) -> None:
    await portal.get(f"/portal/services/{service_sid}/send")
    response = await portal.post(
        f"/portal/services/{service_sid}/send", {"Identity": "alice", "Data": "[1]"}
    )
    assert response.status_code == 400
    assert "Parameter &#39;Data&#39; is invalid" in response.text
    assert ">alice</textarea>" in response.text


async def _direct(api: httpx.AsyncClient, service_sid: str, addresses: list[str]) -> str:
    """A ToBinding notification: its deliveries exist from the start (invalid ones failed)."""
    response = await api.post(
        f"/v1/Services/{service_sid}/Notifications",
        data={
            "Body": "hello",
            "ToBinding": [
                json.dumps({"binding_type": "sms", "address": address}) for address in addresses
            ],
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])


async def test_deliveries_are_paged_never_loaded_whole(
    portal: Any, api: httpx.AsyncClient, service_sid: str
) -> None:
    numbers = [f"+1415555{index:04d}" for index in range(120)]
    notification = await _direct(api, service_sid, numbers)
    path = f"/portal/services/{service_sid}/notifications/{notification}"
    first = await portal.get(path)
    assert ">120</strong> deliveries" in first.text
    assert "Server-Timing" in first.headers
    first_rows = re.findall(r"/deliveries/(DL\w+)", first.text)
    assert len(first_rows) == 50
    after = re.search(r'href="\?after=(\d+)"', first.text).group(1)
    second = await portal.get(path, params={"after": after})
    second_rows = re.findall(r"/deliveries/(DL\w+)", second.text)
    assert len(second_rows) == 50
    assert not set(first_rows) & set(second_rows)
    assert "+1415••••0000" in first.text  # masked
    assert numbers[0] not in first.text


async def test_a_failed_delivery_says_what_the_error_means(
    portal: Any, api: httpx.AsyncClient, service_sid: str
) -> None:
    notification = await _direct(api, service_sid, ["not-a-number"])
    path = f"/portal/services/{service_sid}/notifications/{notification}"
    filtered = await portal.get(path, params={"status": "failed"})
    delivery = re.search(r"/deliveries/(DL\w+)", filtered.text).group(1)
    page = await portal.get(f"{path}/deliveries/{delivery}")
    assert page.status_code == 200
    assert "52001" in page.text
    assert "What it means:" in page.text
    assert "How to fix it:" in page.text
    assert "E.164" in page.text  # the API's own reason for this address
    assert "not-a-number" not in page.text  # masked
    assert "not-a" in page.text or "no••••" in page.text


async def test_the_dashboard_draws_charts(
    portal: Any, api: httpx.AsyncClient, service_sid: str
) -> None:
    await _direct(api, service_sid, ["+14155550100", "bad"])
    for window in ("24h", "7d", "30d"):
        page = await portal.get("/portal/", params={"window": window})
        assert page.status_code == 200
        assert page.text.count("<svg") >= 3, window
        assert 'aria-label="Deliveries per channel: 2 in all"' in page.text
        assert "SMS · 52001" in page.text


async def test_bad_input_gets_a_page_not_a_crash(portal: Any) -> None:
    multipart = await portal.client.post(
        "/portal/services/new", files={"FriendlyName": ("a", b"b")}
    )
    assert multipart.status_code == 415
    assert "<html" in multipart.text
    assert (await portal.get("/portal/services/ISnot-a-sid")).status_code == 404
    missing = await portal.get("/portal/no-such-page")
    assert missing.status_code == 404
    assert "nothing at this address" in missing.text


@pytest.mark.parametrize("path", ["/portal/static/htmx.min.js", "/portal/static/portal.css"])
async def test_assets_are_vendored(portal_factory: Any, path: str) -> None:
    response = await portal_factory().get(path)
    assert response.status_code == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]
