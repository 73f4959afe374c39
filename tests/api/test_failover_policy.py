"""The `Failover` policy over the API: a service default, a per-notification override or `off`,
what is stored with the notification, and 400s that say what is wrong.

    Failover={"channels": ["push", "sms"], "wait": 120}
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from assertions import assert_error
from clarion.store.database import Database
from clarion.store.tables import failover_chain, notification

PUSH_THEN_SMS = {"channels": ["push", "sms"], "wait": 120}
APN_TOKEN = "ab" * 32


async def set_default(api: httpx.AsyncClient, service_sid: str, value: str) -> httpx.Response:
    return await api.post(f"/v1/Services/{service_sid}", data={"Failover": value})


async def send(api: httpx.AsyncClient, service_sid: str, **params: str) -> httpx.Response:
    return await api.post(f"/v1/Services/{service_sid}/Notifications", data=params)


async def stored_policy(database: Database, response: httpx.Response) -> Any:
    assert response.status_code == 201, response.text
    sid = response.json()["sid"]
    return await database.read(
        lambda conn: conn.scalar(select(notification.c.failover).where(notification.c.sid == sid))
    )


# --- The service default ----------------------------------------------------------------------


async def test_a_service_has_no_failover_unless_asked(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    assert (await api.get(f"/v1/Services/{service_sid}")).json()["failover"] is None


async def test_a_service_default_is_stored_with_its_wait_filled_in(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await set_default(api, service_sid, json.dumps({"channels": ["push", "sms"]}))

    assert response.status_code == 200, response.text
    assert response.json()["failover"] == {"channels": ["push", "sms"], "wait": 120}
    fetched = (await api.get(f"/v1/Services/{service_sid}")).json()
    assert fetched["failover"] == {"channels": ["push", "sms"], "wait": 120}


async def test_a_service_can_be_created_with_a_default(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/Services",
        data={"FriendlyName": "f", "Failover": json.dumps({"channels": ["sms"], "wait": 5})},
    )

    assert response.status_code == 201, response.text
    assert response.json()["failover"] == {"channels": ["sms"], "wait": 5}


@pytest.mark.parametrize("cleared", ["", "off"])
async def test_an_empty_value_or_off_clears_the_default(
    api: httpx.AsyncClient, service_sid: str, cleared: str
) -> None:
    await set_default(api, service_sid, json.dumps(PUSH_THEN_SMS))

    response = await set_default(api, service_sid, cleared)

    assert response.json()["failover"] is None


async def test_an_invalid_default_changes_nothing(api: httpx.AsyncClient, service_sid: str) -> None:
    await set_default(api, service_sid, json.dumps(PUSH_THEN_SMS))

    response = await set_default(api, service_sid, json.dumps({"channels": ["pigeon"]}))

    assert_error(response, 400, 20001, "Failover", "pigeon")
    fetched = (await api.get(f"/v1/Services/{service_sid}")).json()
    assert fetched["failover"] == PUSH_THEN_SMS


# --- What a notification is sent with ---------------------------------------------------------


async def test_a_notification_gets_the_service_default(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    await set_default(api, service_sid, json.dumps(PUSH_THEN_SMS))

    response = await send(api, service_sid, Identity="alice", Body="hi")

    assert await stored_policy(database, response) == PUSH_THEN_SMS


async def test_a_notification_of_a_service_without_default_has_no_failover(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    response = await send(api, service_sid, Identity="alice", Body="hi")

    assert await stored_policy(database, response) is None


async def test_a_notification_policy_overrides_the_default(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    await set_default(api, service_sid, json.dumps(PUSH_THEN_SMS))
    own = {"channels": ["push", "messenger", "sms"], "wait": 30}

    response = await send(api, service_sid, Identity="alice", Body="hi", Failover=json.dumps(own))

    assert await stored_policy(database, response) == own


async def test_failover_off_turns_the_default_off_for_one_notification(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    await set_default(api, service_sid, json.dumps(PUSH_THEN_SMS))

    response = await send(api, service_sid, Tag="all", Body="hi", Failover="off")

    assert await stored_policy(database, response) is None


async def test_the_201_keeps_twilios_shape(api: httpx.AsyncClient, service_sid: str) -> None:
    response = await send(
        api, service_sid, Identity="alice", Body="hi", Failover=json.dumps(PUSH_THEN_SMS)
    )

    assert response.status_code == 201, response.text
    assert "failover" not in response.json()


async def test_a_direct_notification_ignores_the_default(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    await set_default(api, service_sid, json.dumps(PUSH_THEN_SMS))
    to = json.dumps({"binding_type": "apn", "address": APN_TOKEN})

    response = await send(api, service_sid, ToBinding=to, Body="hi")

    assert await stored_policy(database, response) is None
    sid = response.json()["sid"]
    chains = await database.read(
        lambda conn: conn.execute(
            select(failover_chain.c.id)
            .join(notification, notification.c.id == failover_chain.c.notification_id)
            .where(notification.c.sid == sid)
        ).all()
    )
    assert chains == []


async def test_a_direct_notification_cannot_ask_for_failover(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    to = json.dumps({"binding_type": "apn", "address": APN_TOKEN})

    response = await send(
        api, service_sid, ToBinding=to, Body="hi", Failover=json.dumps(PUSH_THEN_SMS)
    )

    assert_error(response, 400, 20001, "Failover", "ToBinding", "no identity")


async def test_a_direct_notification_may_say_off(
    api: httpx.AsyncClient, service_sid: str, database: Database
) -> None:
    to = json.dumps({"binding_type": "apn", "address": APN_TOKEN})

    response = await send(api, service_sid, ToBinding=to, Body="hi", Failover="off")

    assert await stored_policy(database, response) is None


# --- Invalid policies -------------------------------------------------------------------------

INVALID = {
    "not JSON": ("push, sms", "JSON object"),
    "empty": ("", "JSON object"),
    "a list": ('["push", "sms"]', "JSON object"),
    "an unknown key": ('{"channels": ["sms"], "delay": 5}', "unknown key 'delay'"),
    "no channels": ('{"wait": 60}', "'channels' must be a list of 1 to 5"),
    "empty channels": ('{"channels": []}', "'channels' must be a list of 1 to 5"),
    "six groups": (
        '{"channels": ["push", "sms", "messenger", "email", "webpush", "alexa"]}',
        "'channels' must be a list of 1 to 5",
    ),
    "an unknown group": ('{"channels": ["push", "fax"]}', '"fax", which is not one of push'),
    "a group that is not a string": ('{"channels": [1]}', "1, which is not one of"),
    "a group twice": ('{"channels": ["sms", "sms"]}', "lists sms twice"),
    "push and one of its types": ('{"channels": ["push", "fcm"]}', "('push' and 'fcm')"),
    "messenger under both names": (
        '{"channels": ["messenger", "facebook-messenger"]}',
        "lists facebook-messenger twice",
    ),
    "wait 0": ('{"channels": ["sms"], "wait": 0}', "'wait' must be a whole number"),
    "wait over a day": ('{"channels": ["sms"], "wait": 86401}', "from 1 to 86400"),
    "wait as text": ('{"channels": ["sms"], "wait": "60"}', "'wait' must be a whole number"),
    "wait fractional": ('{"channels": ["sms"], "wait": 1.5}', "'wait' must be a whole number"),
    "wait as a boolean": ('{"channels": ["sms"], "wait": true}', "'wait' must be a whole number"),
}


@pytest.mark.parametrize(("value", "fragment"), INVALID.values(), ids=INVALID.keys())
async def test_an_invalid_notification_policy_is_a_400_saying_why(
    api: httpx.AsyncClient, service_sid: str, value: str, fragment: str
) -> None:
    response = await send(api, service_sid, Identity="alice", Body="hi", Failover=value)

    assert_error(response, 400, 20001, "Parameter 'Failover' is invalid", fragment)


# On a service, an empty value clears the default.
INVALID_DEFAULT = {name: case for name, case in INVALID.items() if name != "empty"}


@pytest.mark.parametrize(
    ("value", "fragment"), INVALID_DEFAULT.values(), ids=INVALID_DEFAULT.keys()
)
async def test_an_invalid_service_default_is_a_400_saying_why(
    api: httpx.AsyncClient, service_sid: str, value: str, fragment: str
) -> None:
    response = await set_default(api, service_sid, value)

    assert_error(response, 400, 20001, "Parameter 'Failover' is invalid", fragment)


async def test_every_binding_type_and_group_name_is_a_valid_group(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    groups = ("push", "messenger", "apn", "fcm", "gcm", "sms", "facebook-messenger", "alexa")
    for group in (*groups, "webpush", "email"):
        response = await set_default(api, service_sid, json.dumps({"channels": [group]}))
        assert response.status_code == 200, (group, response.text)


# --- Deliveries show their place in the chain -------------------------------------------------


async def test_delivery_records_carry_the_failover_fields(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    to = json.dumps({"binding_type": "apn", "address": APN_TOKEN})
    sid = (await send(api, service_sid, ToBinding=to, Body="hi")).json()["sid"]

    listed = await api.get(f"/v1/Services/{service_sid}/Notifications/{sid}/Deliveries")

    (row,) = listed.json()["deliveries"]
    assert (row["failover_of"], row["failover_step"], row["failover_reason"]) == (None, None, None)


async def test_a_fetched_notification_shows_its_policy_and_identity_counts(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    sid = (
        await send(
            api, service_sid, Identity="alice", Body="hi", Failover=json.dumps(PUSH_THEN_SMS)
        )
    ).json()["sid"]

    fetched = (await api.get(f"/v1/Services/{service_sid}/Notifications/{sid}")).json()

    assert fetched["failover"] == {
        **PUSH_THEN_SMS,
        "identities": {  # not fanned out yet: no worker runs in these tests
            "total": 0,
            "waiting": 0,
            "confirmed": 0,
            "exhausted": 0,
            "by_channel": {
                "push": {"reached": 0, "confirmed": 0},
                "sms": {"reached": 0, "confirmed": 0},
            },
        },
    }


async def test_a_fetched_notification_without_failover_says_null(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    sid = (await send(api, service_sid, Identity="alice", Body="hi")).json()["sid"]

    fetched = (await api.get(f"/v1/Services/{service_sid}/Notifications/{sid}")).json()

    assert fetched["failover"] is None
