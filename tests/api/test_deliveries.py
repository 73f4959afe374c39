"""Delivery records (extension): a notification's counts and one row per recipient.

Direct (ToBinding) notifications store their deliveries with the 201, so these tests read
records without running the delivery engine; tests/delivery covers how the records change.
"""

from __future__ import annotations

import json

import httpx

from assertions import assert_error

SMS = ["+14155550100", "+14155550101", "+14155550102"]


def notifications_url(service_sid: str) -> str:
    return f"/v1/Services/{service_sid}/Notifications"


async def send_direct(api: httpx.AsyncClient, service_sid: str, *addresses: str) -> str:
    response = await api.post(
        notifications_url(service_sid),
        data={
            "ToBinding": [
                json.dumps({"binding_type": "sms", "address": address}) for address in addresses
            ],
            "Body": "hello",
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])


async def test_a_notification_can_be_fetched_with_its_delivery_counts(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    sid = await send_direct(api, service_sid, *SMS, "not-a-number")

    response = await api.get(f"{notifications_url(service_sid)}/{sid}")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sid"] == sid
    assert body["body"] == "hello"
    assert body["identities"] == []
    assert body["status"] == "queued"
    assert body["deliveries"] == {"total": 4, "pending": 3, "failed": 1}
    assert body["deliveries_by_channel"] == {"sms": {"pending": 3, "failed": 1}}
    assert body["url"].endswith(f"/v1/Services/{service_sid}/Notifications/{sid}")
    assert body["links"]["deliveries"] == body["url"] + "/Deliveries"


async def test_fetch_answers_like_create_for_the_spec_fields(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    created = await api.post(
        notifications_url(service_sid),
        data={"Identity": "alice", "Body": "b", "Title": "t", "Data": '{"k": 1}', "Ttl": "60"},
    )
    fetched = (await api.get(f"{notifications_url(service_sid)}/{created.json()['sid']}")).json()

    for field, value in created.json().items():
        assert fetched[field] == value, field


async def test_deliveries_list_one_row_per_recipient_in_order(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    sid = await send_direct(api, service_sid, *SMS)

    response = await api.get(f"{notifications_url(service_sid)}/{sid}/Deliveries")

    assert response.status_code == 200, response.text
    body = response.json()
    rows = body["deliveries"]
    assert [row["address"] for row in rows] == SMS
    first = rows[0]
    assert first["sid"].startswith("DL")
    assert len(first["sid"]) == 34
    assert first["notification_sid"] == sid
    assert first["service_sid"] == service_sid
    assert first["channel"] == "sms"
    assert first["status"] == "pending"
    assert first["attempts"] == 0
    assert first["binding_sid"] is None  # a ToBinding address has no stored binding
    assert first["provider_sid"] is None
    assert body["meta"]["key"] == "deliveries"
    fetched = await api.get(first["url"])
    assert fetched.json() == first


async def test_deliveries_filter_by_status_and_channel(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    sid = await send_direct(api, service_sid, SMS[0], "not-a-number")
    url = f"{notifications_url(service_sid)}/{sid}/Deliveries"

    failed = (await api.get(url, params={"Status": "failed"})).json()["deliveries"]
    assert [row["address"] for row in failed] == ["not-a-number"]
    assert failed[0]["error_code"] == "52001"
    assert failed[0]["error_message"]
    both = (await api.get(url, params={"Status": ["failed", "pending"]})).json()["deliveries"]
    assert len(both) == 2
    apn = (await api.get(url, params={"Channel": "apn"})).json()["deliveries"]
    assert apn == []


async def test_deliveries_page_through_every_row(api: httpx.AsyncClient, service_sid: str) -> None:
    addresses = [f"+1415555{n:04d}" for n in range(7)]
    sid = await send_direct(api, service_sid, *addresses)
    url: str | None = f"{notifications_url(service_sid)}/{sid}/Deliveries?PageSize=3"
    seen: list[str] = []
    while url:
        body = (await api.get(url)).json()
        seen += [row["address"] for row in body["deliveries"]]
        url = body["meta"]["next_page_url"]
    assert seen == addresses


async def test_unknown_filter_values_are_rejected_naming_the_parameter(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    sid = await send_direct(api, service_sid, SMS[0])
    url = f"{notifications_url(service_sid)}/{sid}/Deliveries"

    assert_error(await api.get(url, params={"Status": "lost"}), 400, 20001, "Status")
    assert_error(await api.get(url, params={"Channel": "pigeon"}), 400, 20001, "Channel")


async def test_another_accounts_notification_and_deliveries_are_404(
    api: httpx.AsyncClient, other_api: httpx.AsyncClient, service_sid: str
) -> None:
    sid = await send_direct(api, service_sid, SMS[0])
    base = f"{notifications_url(service_sid)}/{sid}"
    delivery_url = (await api.get(f"{base}/Deliveries")).json()["deliveries"][0]["url"]

    for path in (base, f"{base}/Deliveries", delivery_url):
        assert_error(await other_api.get(path), 404, 20404)


async def test_malformed_and_unknown_sids_are_404(api: httpx.AsyncClient, service_sid: str) -> None:
    sid = await send_direct(api, service_sid, SMS[0])
    base = notifications_url(service_sid)

    assert_error(await api.get(f"{base}/NT{'0' * 32}"), 404, 20404)
    assert_error(await api.get(f"{base}/nope"), 404, 20404)
    assert_error(await api.get(f"{base}/{sid}/Deliveries/DL{'f' * 32}"), 404, 20404)
    assert_error(await api.get(f"{base}/{sid}/Deliveries/BS{'0' * 32}"), 404, 20404)
