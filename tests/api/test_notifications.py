"""`POST /v1/Services/{IS}/Notifications`: the 201 shape, the work stored with it, validation.

An accepted notification and all of its pending work are committed in one transaction, so these
tests look at the `notification`, `job` and `delivery` rows right after the 201; a rejected one
must leave no row behind.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, Select, func, select

from assertions import assert_error
from clarion.store.database import Database
from clarion.store.tables import delivery, job, notification, service
from support import Account

SMS = "+14155550100"
APN_TOKEN = "ab" * 32
MAX_TTL = 2_419_200


def url(service_sid: str) -> str:
    return f"/v1/Services/{service_sid}/Notifications"


def to_binding(binding_type: str, address: str) -> str:
    return json.dumps({"binding_type": binding_type, "address": address})


async def send(api: httpx.AsyncClient, service_sid: str, **params: Any) -> httpx.Response:
    return await api.post(url(service_sid), data=params)


async def rows(database: Database, query: Select[Any]) -> list[dict[str, Any]]:
    """The rows a query returns, read in a transaction of their own."""

    def run(conn: Connection) -> list[dict[str, Any]]:
        return [dict(row) for row in conn.execute(query).mappings()]

    return await database.read(run)


async def stored_notification(database: Database, sid: str) -> dict[str, Any]:
    (row,) = await rows(database, select(notification).where(notification.c.sid == sid))
    return row


async def jobs_of(database: Database, notification_id: int) -> list[dict[str, Any]]:
    return await rows(database, select(job).where(job.c.notification_id == notification_id))


async def deliveries_of(database: Database, notification_id: int) -> list[dict[str, Any]]:
    return await rows(
        database,
        select(delivery)
        .where(delivery.c.notification_id == notification_id)
        .order_by(delivery.c.id),
    )


async def notification_count(database: Database, service_sid: str) -> int:
    (row,) = await rows(
        database,
        select(func.count().label("n"))
        .select_from(notification.join(service))
        .where(service.c.sid == service_sid),
    )
    return int(row["n"])


# --- The 201 response -------------------------------------------------------------------------


async def test_query_notification_answers_201_with_the_spec_shape(
    api: httpx.AsyncClient, service_sid: str, account: Account
) -> None:
    response = await send(api, service_sid, Identity="jing", Body="Hello", Title="Hi")

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "sid",
        "account_sid",
        "service_sid",
        "date_created",
        "identities",
        "tags",
        "segments",
        "priority",
        "ttl",
        "title",
        "body",
        "sound",
        "action",
        "data",
        "apn",
        "gcm",
        "fcm",
        "sms",
        "facebook_messenger",
        "alexa",
    }
    assert re.fullmatch(r"NT[0-9a-f]{32}", body["sid"])
    assert body["account_sid"] == account.sid
    assert body["service_sid"] == service_sid
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["date_created"])
    assert body["identities"] == ["jing"]
    assert body["tags"] == []
    assert body["segments"] == []
    assert body["title"] == "Hi"
    assert body["body"] == "Hello"
    assert body["sound"] is None
    assert body["action"] is None
    for field in ("data", "apn", "gcm", "fcm", "sms", "facebook_messenger", "alexa"):
        assert body[field] is None, field


async def test_priority_defaults_to_high_and_ttl_to_four_weeks(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await send(api, service_sid, Tag="all", Body="x")

    assert response.status_code == 201, response.text
    assert response.json()["priority"] == "high"
    assert response.json()["ttl"] == MAX_TTL


async def test_priority_and_ttl_are_echoed(api: httpx.AsyncClient, service_sid: str) -> None:
    response = await send(api, service_sid, Tag="all", Body="x", Priority="low", Ttl="0")

    assert response.status_code == 201, response.text
    assert response.json()["priority"] == "low"
    assert response.json()["ttl"] == 0


async def test_text_content_and_targets_are_echoed(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await api.post(
        url(service_sid),
        data={
            "Identity": ["alice", "bob"],
            "Tag": ["vip", "eu"],
            "Segment": ["beta"],
            "Title": "T",
            "Body": "B",
            "Sound": "ding.caf",
            "Action": "OPEN",
        },
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["identities"] == ["alice", "bob"]
    assert body["tags"] == ["vip", "eu"]
    assert body["segments"] == ["beta"]
    assert (body["title"], body["body"], body["sound"], body["action"]) == (
        "T",
        "B",
        "ding.caf",
        "OPEN",
    )


async def test_json_parameters_come_back_as_objects(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """The SDK types these fields as dicts: returning the JSON text would break its callers."""
    objects = {
        "Data": {"order": 7, "nested": {"a": [1, 2]}},
        "Apn": {"aps": {"badge": 1}},
        "Gcm": {"priority": "high"},
        "Fcm": {"notification": {"title": "x"}},
        "Sms": {"body": "text", "media_urls": ["https://example.com/a.png"]},
        "FacebookMessenger": {"text": "hi"},
        "Alexa": {"display": "hi"},
    }
    response = await send(
        api,
        service_sid,
        Identity="u",
        **{name: json.dumps(value) for name, value in objects.items()},
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["data"] == objects["Data"]
    assert body["apn"] == objects["Apn"]
    assert body["gcm"] == objects["Gcm"]
    assert body["fcm"] == objects["Fcm"]
    assert body["sms"] == objects["Sms"]
    assert body["facebook_messenger"] == objects["FacebookMessenger"]
    assert body["alexa"] == objects["Alexa"]
    assert body["body"] is None


async def test_a_data_only_notification_is_content_enough(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await send(api, service_sid, Identity="u", Data='{"silent": true}')

    assert response.status_code == 201, response.text
    assert response.json()["data"] == {"silent": True}


async def test_direct_notification_echoes_empty_targets(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await send(api, service_sid, ToBinding=to_binding("sms", SMS), Body="x")

    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["identities"], body["tags"], body["segments"]) == ([], [], [])


# --- What is stored with it -------------------------------------------------------------------


async def test_query_notification_is_stored_with_one_pending_fanout_job_and_no_deliveries(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    response = await send(api, service_sid, Identity="alice", Tag="vip", Body="x", Priority="low")
    assert response.status_code == 201, response.text

    stored = await stored_notification(database, response.json()["sid"])
    assert stored["targets"] == {"identities": ["alice"], "tags": ["vip"], "segments": []}
    assert stored["content"]["body"] == "x"
    assert stored["priority"] == "low"
    assert stored["ttl"] == MAX_TTL
    assert stored["status"] == "queued"
    jobs = await jobs_of(database, stored["id"])
    assert [(j["kind"], j["status"]) for j in jobs] == [("fanout", "pending")]
    assert await deliveries_of(database, stored["id"]) == []


async def test_segment_notification_is_a_query_notification(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    response = await send(api, service_sid, Segment="beta", Body="x")
    assert response.status_code == 201, response.text

    stored = await stored_notification(database, response.json()["sid"])
    assert [j["kind"] for j in await jobs_of(database, stored["id"])] == ["fanout"]
    assert await deliveries_of(database, stored["id"]) == []


async def test_direct_notification_stores_one_pending_delivery_per_address_and_no_job(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    response = await api.post(
        url(service_sid),
        data={
            "ToBinding": [to_binding("sms", SMS), to_binding("apn", APN_TOKEN)],
            "Body": "x",
        },
    )
    assert response.status_code == 201, response.text

    stored = await stored_notification(database, response.json()["sid"])
    deliveries = await deliveries_of(database, stored["id"])
    assert sorted((d["channel"], d["address"], d["status"]) for d in deliveries) == [
        ("apn", APN_TOKEN, "pending"),
        ("sms", SMS, "pending"),
    ]
    assert all(d["error_code"] is None for d in deliveries)
    assert await jobs_of(database, stored["id"]) == []


async def test_direct_addresses_are_normalised_and_duplicates_collapse(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    """Sending the same address twice (in any spelling) must not deliver twice."""
    response = await api.post(
        url(service_sid),
        data={
            "ToBinding": [
                to_binding("sms", SMS),
                to_binding("sms", SMS),
                to_binding("sms", "+1 415 555 0100"),
                to_binding("apn", APN_TOKEN.upper()),
                to_binding("apn", APN_TOKEN),
            ],
            "Body": "x",
        },
    )
    assert response.status_code == 201, response.text

    stored = await stored_notification(database, response.json()["sid"])
    deliveries = await deliveries_of(database, stored["id"])
    assert sorted((d["channel"], d["address"]) for d in deliveries) == [
        ("apn", APN_TOKEN),
        ("sms", SMS),
    ]


async def test_same_address_on_two_channels_is_two_deliveries(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    response = await api.post(
        url(service_sid),
        data={
            "ToBinding": [to_binding("sms", SMS), to_binding("facebook-messenger", SMS)],
            "Body": "x",
        },
    )
    assert response.status_code == 201, response.text

    stored = await stored_notification(database, response.json()["sid"])
    channels = sorted(d["channel"] for d in await deliveries_of(database, stored["id"]))
    assert channels == ["facebook-messenger", "sms"]


async def test_invalid_direct_address_is_accepted_and_stored_as_a_failed_delivery(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    """Twilio fails the one recipient (52001), not the whole request."""
    response = await api.post(
        url(service_sid),
        data={
            "ToBinding": [to_binding("sms", "not-a-number"), to_binding("sms", SMS)],
            "Body": "x",
        },
    )
    assert response.status_code == 201, response.text

    stored = await stored_notification(database, response.json()["sid"])
    by_address = {d["address"]: d for d in await deliveries_of(database, stored["id"])}
    assert set(by_address) == {"not-a-number", SMS}
    failed = by_address["not-a-number"]
    assert failed["status"] == "failed"
    assert failed["error_code"] == "52001"
    assert failed["error_message"]
    assert by_address[SMS]["status"] == "pending"
    assert by_address[SMS]["error_code"] is None


# --- Validation -------------------------------------------------------------------------------


async def test_more_than_20_identities_is_rejected(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    identities = [f"user{i}" for i in range(21)]
    response = await api.post(url(service_sid), data={"Identity": identities, "Body": "x"})

    assert_error(response, 400, 20001, "Identity")


async def test_20_identities_are_accepted(api: httpx.AsyncClient, service_sid: str) -> None:
    identities = [f"user{i}" for i in range(20)]
    response = await api.post(url(service_sid), data={"Identity": identities, "Body": "x"})

    assert response.status_code == 201, response.text
    assert response.json()["identities"] == identities


async def test_more_than_5_tags_is_rejected(api: httpx.AsyncClient, service_sid: str) -> None:
    response = await api.post(
        url(service_sid), data={"Tag": [f"t{i}" for i in range(6)], "Body": "x"}
    )

    assert_error(response, 400, 20001, "Tag")


async def test_more_than_10000_to_bindings_is_rejected(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    # Short distinct items keep the body under the 1 MB limit, so the count is what fails.
    items = [to_binding("sms", f"+1{i}") for i in range(10_001)]
    response = await api.post(url(service_sid), data={"ToBinding": items, "Body": "x"})

    assert_error(response, 400, 20001, "ToBinding", "10000")


async def test_10000_to_bindings_are_accepted_as_10000_deliveries(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    """Twilio's passthrough promise: 10,000 phone numbers in one request."""
    items = [
        json.dumps({"binding_type": "sms", "address": f"+1415555{i:04d}"}, separators=(",", ":"))
        for i in range(10_000)
    ]
    response = await api.post(url(service_sid), data={"ToBinding": items, "Body": "x"})
    assert response.status_code == 201, response.text

    stored = await stored_notification(database, response.json()["sid"])
    counts = await rows(
        database,
        select(delivery.c.status, func.count().label("n"))
        .where(delivery.c.notification_id == stored["id"])
        .group_by(delivery.c.status),
    )
    assert counts == [{"status": "pending", "n": 10_000}]


@pytest.mark.parametrize(
    "item",
    [
        pytest.param("not json", id="not-json"),
        pytest.param('["sms", "+14155550100"]', id="json-array"),
        pytest.param('{"address": "+14155550100"}', id="missing-binding-type"),
        pytest.param('{"binding_type": "pigeon", "address": "x"}', id="unknown-type"),
        pytest.param('{"binding_type": "sms"}', id="missing-address"),
        pytest.param('{"binding_type": "sms", "address": 14155550100}', id="address-not-string"),
    ],
)
async def test_malformed_to_binding_is_rejected_naming_to_binding(
    api: httpx.AsyncClient, service_sid: str, item: str
) -> None:
    response = await send(api, service_sid, ToBinding=item, Body="x")

    assert_error(response, 400, 20001, "ToBinding")


@pytest.mark.parametrize("query", [{"Identity": "alice"}, {"Tag": "vip"}, {"Segment": "beta"}])
async def test_to_binding_with_a_query_target_is_rejected(
    api: httpx.AsyncClient, service_sid: str, query: dict[str, str]
) -> None:
    response = await send(api, service_sid, ToBinding=to_binding("sms", SMS), Body="x", **query)

    assert_error(
        response,
        400,
        20001,
        "Direct notifications and query notifications can not be requested together",
    )


async def test_notification_without_recipients_is_rejected(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await send(api, service_sid, Body="x")

    assert_error(response, 400, 20001, "recipients")


async def test_notification_without_content_is_rejected(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await send(api, service_sid, Identity="alice")

    assert_error(response, 400, 20001, "content")


@pytest.mark.parametrize("priority", ["urgent", "", "normal", "10"])
async def test_priority_other_than_high_or_low_is_rejected(
    api: httpx.AsyncClient, service_sid: str, priority: str
) -> None:
    response = await send(api, service_sid, Identity="alice", Body="x", Priority=priority)

    assert_error(response, 400, 20001, "Priority")


@pytest.mark.parametrize("ttl", ["-1", "2419201", "abc", "1.5", ""])
async def test_ttl_outside_zero_to_four_weeks_is_rejected(
    api: httpx.AsyncClient, service_sid: str, ttl: str
) -> None:
    response = await send(api, service_sid, Identity="alice", Body="x", Ttl=ttl)

    assert_error(response, 400, 20001, "Ttl")


@pytest.mark.parametrize("data", ["[1]", "nope", '"text"', "42", "null", "{"])
async def test_data_that_is_not_a_json_object_is_rejected(
    api: httpx.AsyncClient, service_sid: str, data: str
) -> None:
    response = await send(api, service_sid, Identity="alice", Data=data)

    assert_error(response, 400, 20001, "Data", "JSON object")


@pytest.mark.parametrize("name", ["Data", "Apn"])
async def test_twi_keys_are_reserved_in_data_and_apn(
    api: httpx.AsyncClient, service_sid: str, name: str
) -> None:
    response = await send(
        api, service_sid, Identity="alice", Body="x", **{name: '{"twi_body": "forged"}'}
    )

    assert_error(response, 400, 20001, name, "twi_")


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Gcm", "to"),
        ("Gcm", "registration_ids"),
        ("Gcm", "notification_key"),
        ("Fcm", "to"),
        ("Fcm", "condition"),
        ("Fcm", "registration_ids"),
    ],
)
async def test_routing_keys_are_refused_in_push_overrides(
    api: httpx.AsyncClient, service_sid: str, name: str, key: str
) -> None:
    """Those keys would redirect the push to devices the caller did not target."""
    response = await send(
        api, service_sid, Identity="alice", Body="x", **{name: json.dumps({key: "x"})}
    )

    assert_error(response, 400, 20001, name, key)


@pytest.mark.parametrize(
    "media_urls",
    [
        pytest.param("https://example.com/a.png", id="string-not-list"),
        pytest.param(["ftp://example.com/a.png"], id="not-http"),
        pytest.param([42], id="not-string"),
        pytest.param(["https://example.com/a.png"] * 11, id="more-than-10"),
    ],
)
async def test_sms_media_urls_must_be_a_list_of_urls(
    api: httpx.AsyncClient, service_sid: str, media_urls: object
) -> None:
    sms = json.dumps({"body": "x", "media_urls": media_urls})
    response = await send(api, service_sid, Identity="alice", Sms=sms)

    assert_error(response, 400, 20001, "Sms", "media_urls")


@pytest.mark.parametrize(
    "callback", ["ftp://example.com/cb", "example.com/cb", "javascript:alert(1)", "https://"]
)
async def test_delivery_callback_url_must_be_http_or_https(
    api: httpx.AsyncClient, service_sid: str, callback: str
) -> None:
    response = await send(
        api, service_sid, Identity="alice", Body="x", DeliveryCallbackUrl=callback
    )

    assert_error(response, 400, 20001, "DeliveryCallbackUrl")


async def test_delivery_callback_url_is_stored(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    callback = "https://example.com/callback?x=1"
    response = await send(
        api, service_sid, Identity="alice", Body="x", DeliveryCallbackUrl=callback
    )
    assert response.status_code == 201, response.text

    stored = await stored_notification(database, response.json()["sid"])
    assert stored["delivery_callback_url"] == callback


async def test_unknown_service_is_404(api: httpx.AsyncClient) -> None:
    response = await send(api, "IS" + "0" * 32, Identity="alice", Body="x")

    assert_error(response, 404, 20404)


async def test_another_accounts_service_is_404(
    other_api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    """Existence must not leak across accounts, and nothing may be queued on their service."""
    response = await send(other_api, service_sid, Identity="alice", Body="x")

    assert_error(response, 404, 20404)
    assert await notification_count(database, service_sid) == 0


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"Identity": "alice"}, id="no-content"),
        pytest.param({"Body": "x"}, id="no-recipients"),
        pytest.param({"Identity": "alice", "Body": "x", "Ttl": "-1"}, id="bad-ttl"),
        pytest.param({"Identity": "alice", "Data": "[1]"}, id="bad-data"),
        pytest.param(
            {"ToBinding": to_binding("sms", SMS), "Tag": "vip", "Body": "x"}, id="mixed-targets"
        ),
        pytest.param({"ToBinding": '{"address": "x"}', "Body": "x"}, id="bad-to-binding"),
    ],
)
async def test_a_rejected_notification_writes_no_rows(
    api: httpx.AsyncClient, service_sid: str, database: Database, params: dict[str, str]
) -> None:
    before = await notification_count(database, service_sid)

    response = await send(api, service_sid, **params)

    assert response.status_code == 400, response.text
    assert await notification_count(database, service_sid) == before


async def test_an_accepted_notification_writes_exactly_one_row(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    """The counterpart of the test above: the count does move when a notification is stored."""
    before = await notification_count(database, service_sid)

    response = await send(api, service_sid, Identity="alice", Body="x")

    assert response.status_code == 201, response.text
    assert await notification_count(database, service_sid) == before + 1
