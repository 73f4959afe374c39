"""`POST /v1/Services/{IS}/Notifications/{NT}/Receipts`: apps confirm pushes with their token.

Deliveries come from direct (ToBinding) notifications and are marked sent in the database, as
the delivery engine leaves them; the token is minted the way the dispatcher mints it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, insert, select, update

from assertions import assert_error
from clarion import sids
from clarion.delivery.receipts import ReceiptTokens
from clarion.store.clock import utcnow
from clarion.store.database import Database
from clarion.store.tables import delivery, delivery_event, failover_chain, notification
from clarion.vault import Vault, new_key

APN = "a0" * 32
FCM = "fcm-registration-token"
NO_AUTH = httpx.Auth()  # per request: send no Authorization header at all


async def send(api: httpx.AsyncClient, service_sid: str) -> str:
    """A notification to one APNs and one FCM address; returns its SID."""
    response = await api.post(
        f"/v1/Services/{service_sid}/Notifications",
        data={
            "ToBinding": [
                json.dumps({"binding_type": "apn", "address": APN}),
                json.dumps({"binding_type": "fcm", "address": FCM}),
            ],
            "Body": "hi",
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])


async def deliveries_of(database: Database, notification_sid: str) -> dict[str, int]:
    """The notification's delivery ids by channel."""
    rows = await database.read(
        lambda conn: conn.execute(
            select(delivery.c.channel, delivery.c.id)
            .join(notification)
            .where(notification.c.sid == notification_sid)
        ).all()
    )
    return dict(rows)


async def set_status(database: Database, delivery_id: int, status: str) -> None:
    await database.transaction(
        lambda conn: conn.execute(
            update(delivery).where(delivery.c.id == delivery_id).values(status=status)
        )
    )


async def status_of(database: Database, delivery_id: int) -> str:
    return str(
        await database.read(
            lambda conn: conn.scalar(select(delivery.c.status).where(delivery.c.id == delivery_id))
        )
    )


async def receipts_of(database: Database, delivery_id: int) -> list[Any]:
    return await database.read(
        lambda conn: list(
            conn.scalars(
                select(delivery_event.c.detail)
                .where(
                    delivery_event.c.delivery_id == delivery_id, delivery_event.c.kind == "receipt"
                )
                .order_by(delivery_event.c.id)
            )
        )
    )


async def post_receipt(
    api: httpx.AsyncClient, service_sid: str, notification_sid: str, form: dict[str, str]
) -> httpx.Response:
    return await api.post(
        f"/v1/Services/{service_sid}/Notifications/{notification_sid}/Receipts",
        data=form,
        auth=NO_AUTH,
    )


class Sent:
    """A notification whose APNs and FCM deliveries were sent, with their tokens."""

    def __init__(self, service_sid: str, notification_sid: str, ids: dict[str, int], vault: Vault):
        self.service_sid = service_sid
        self.notification_sid = notification_sid
        self.ids = ids
        self.tokens = {channel: ReceiptTokens(vault).mint(id_) for channel, id_ in ids.items()}


@pytest.fixture
async def sent(api: httpx.AsyncClient, database: Database, vault: Vault, service_sid: str) -> Sent:
    notification_sid = await send(api, service_sid)
    ids = await deliveries_of(database, notification_sid)
    for delivery_id in ids.values():
        await set_status(database, delivery_id, "sent")
    return Sent(service_sid, notification_sid, ids, vault)


async def confirm(api: httpx.AsyncClient, sent: Sent, state: str, channel: str = "apn") -> Any:
    response = await post_receipt(
        api,
        sent.service_sid,
        sent.notification_sid,
        {"Token": sent.tokens[channel], "State": state},
    )
    assert response.status_code == 201, response.text
    return response.json()


# ---------------------------------------------------------------------------------------------


async def test_a_delivered_receipt_marks_the_sent_delivery_delivered(
    api: httpx.AsyncClient, database: Database, sent: Sent
) -> None:
    body = await confirm(api, sent, "delivered")

    delivery_id = sent.ids["apn"]
    assert body["delivery_sid"] == sids.row_sid(sids.DELIVERY, delivery_id)
    assert body["state"] == "delivered"
    assert body["date_created"].endswith("Z")
    assert await status_of(database, delivery_id) == "delivered"
    assert await receipts_of(database, delivery_id) == [{"state": "delivered"}]
    assert await status_of(database, sent.ids["fcm"]) == "sent"  # its own delivery only


async def test_the_deliveries_api_shows_the_receipt(
    api: httpx.AsyncClient, database: Database, sent: Sent
) -> None:
    url = f"/v1/Services/{sent.service_sid}/Notifications/{sent.notification_sid}/Deliveries"
    before = {row["channel"]: row for row in (await api.get(url)).json()["deliveries"]}
    assert (before["apn"]["receipt_state"], before["apn"]["date_confirmed"]) == (None, None)

    delivered = await confirm(api, sent, "delivered")
    await confirm(api, sent, "opened")

    rows = {row["channel"]: row for row in (await api.get(url)).json()["deliveries"]}
    apn = rows["apn"]
    assert (apn["status"], apn["receipt_state"]) == ("delivered", "opened")
    assert apn["date_confirmed"] == delivered["date_created"]
    assert (rows["fcm"]["receipt_state"], rows["fcm"]["date_confirmed"]) == (None, None)
    fetched = (await api.get(apn["url"])).json()
    assert fetched == apn


async def test_opened_implies_delivered(
    api: httpx.AsyncClient, database: Database, sent: Sent
) -> None:
    await confirm(api, sent, "opened", channel="fcm")

    assert await status_of(database, sent.ids["fcm"]) == "delivered"
    assert await receipts_of(database, sent.ids["fcm"]) == [{"state": "opened"}]


async def test_the_same_receipt_twice_gets_the_same_answer_and_is_recorded_once(
    api: httpx.AsyncClient, database: Database, sent: Sent
) -> None:
    first = await confirm(api, sent, "delivered")
    second = await confirm(api, sent, "delivered")
    await confirm(api, sent, "opened")
    await confirm(api, sent, "opened")

    assert second == first
    assert await receipts_of(database, sent.ids["apn"]) == [
        {"state": "delivered"},
        {"state": "opened"},
    ]


async def test_status_never_moves_backwards(
    api: httpx.AsyncClient, database: Database, sent: Sent
) -> None:
    await confirm(api, sent, "opened")
    await confirm(api, sent, "delivered")

    assert await status_of(database, sent.ids["apn"]) == "delivered"


@pytest.mark.parametrize("status", ["failed", "expired"])
async def test_a_late_receipt_is_recorded_without_changing_a_final_status(
    api: httpx.AsyncClient, database: Database, sent: Sent, status: str
) -> None:
    await set_status(database, sent.ids["apn"], status)

    body = await confirm(api, sent, "delivered")

    assert body["state"] == "delivered"
    assert await status_of(database, sent.ids["apn"]) == status
    assert await receipts_of(database, sent.ids["apn"]) == [{"state": "delivered"}]


async def test_a_receipt_stops_the_failover_chain_of_its_delivery(
    api: httpx.AsyncClient, database: Database, sent: Sent
) -> None:
    """As fan-out leaves an identity's first group: its push sent, its chain waiting on it."""
    delivery_id = sent.ids["apn"]

    def chain(conn: Connection) -> int:
        notification_id = conn.scalar(
            update(delivery)
            .where(delivery.c.id == delivery_id)
            .values(identity="alice", failover_step=0)
            .returning(delivery.c.notification_id)
        )
        now = utcnow()
        return int(
            conn.scalar(
                insert(failover_chain)
                .values(
                    notification_id=notification_id,
                    identity="alice",
                    step=0,
                    status="waiting",
                    deadline=now,
                    date_created=now,
                    date_updated=now,
                )
                .returning(failover_chain.c.id)
            )
        )

    chain_id = await database.transaction(chain)

    await confirm(api, sent, "delivered")

    status, confirmed_step = await database.read(
        lambda conn: conn.execute(
            select(failover_chain.c.status, failover_chain.c.confirmed_step).where(
                failover_chain.c.id == chain_id
            )
        ).one()
    )
    assert (status, confirmed_step) == ("confirmed", 0)


async def test_no_account_credentials_are_needed_or_looked_at(
    api: httpx.AsyncClient, sent: Sent
) -> None:
    response = await api.post(
        f"/v1/Services/{sent.service_sid}/Notifications/{sent.notification_sid}/Receipts",
        data={"Token": sent.tokens["apn"], "State": "delivered"},
        auth=("AC" + "0" * 32, "wrong"),
    )

    assert response.status_code == 201, response.text


async def test_a_token_of_another_notification_is_404(
    api: httpx.AsyncClient, database: Database, sent: Sent
) -> None:
    other = await send(api, sent.service_sid)

    response = await post_receipt(
        api, sent.service_sid, other, {"Token": sent.tokens["apn"], "State": "delivered"}
    )

    assert_error(response, 404, 20404, f"/Notifications/{other}/Receipts")
    assert await receipts_of(database, sent.ids["apn"]) == []


async def test_a_token_under_another_service_is_404(
    api: httpx.AsyncClient, other_api: httpx.AsyncClient, database: Database, sent: Sent
) -> None:
    mine = (await api.post("/v1/Services", data={"FriendlyName": "mine"})).json()["sid"]
    theirs = (await other_api.post("/v1/Services", data={"FriendlyName": "theirs"})).json()["sid"]

    for service_sid in (mine, theirs, "IS" + "0" * 32, "nope"):
        response = await post_receipt(
            api,
            service_sid,
            sent.notification_sid,
            {"Token": sent.tokens["apn"], "State": "delivered"},
        )
        assert_error(response, 404, 20404)
    assert await receipts_of(database, sent.ids["apn"]) == []


async def test_an_unknown_notification_answers_like_a_wrong_token(
    api: httpx.AsyncClient, sent: Sent
) -> None:
    """Nothing tells a caller whether a notification exists, nor whether its token was close."""
    forged = ReceiptTokens(Vault(new_key())).mint(sent.ids["apn"])
    unknown = await post_receipt(
        api, sent.service_sid, "NT" + "0" * 32, {"Token": sent.tokens["apn"], "State": "opened"}
    )
    wrong = await post_receipt(
        api, sent.service_sid, sent.notification_sid, {"Token": forged, "State": "opened"}
    )

    assert_error(unknown, 404, 20404)
    assert_error(wrong, 404, 20404)
    assert (
        unknown.json()["message"].replace("NT" + "0" * 32, sent.notification_sid)
        == (wrong.json()["message"])
    )


async def test_a_tampered_token_is_404(
    api: httpx.AsyncClient, database: Database, sent: Sent
) -> None:
    token = sent.tokens["apn"]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")

    response = await post_receipt(
        api, sent.service_sid, sent.notification_sid, {"Token": tampered, "State": "delivered"}
    )

    assert_error(response, 404, 20404)
    assert await status_of(database, sent.ids["apn"]) == "sent"


@pytest.mark.parametrize(
    ("form", "parameter"),
    [
        ({"State": "delivered"}, "Token"),
        ({"Token": "", "State": "delivered"}, "Token"),
        ({"Token": "not-a-receipt-token", "State": "delivered"}, "Token"),
        ({"Token": "A" * 32}, "State"),
        ({"Token": "A" * 32, "State": "read"}, "State"),
        ({"Token": "A" * 32, "State": ""}, "State"),
    ],
)
async def test_bad_parameters_are_a_400_naming_them(
    api: httpx.AsyncClient, sent: Sent, form: dict[str, str], parameter: str
) -> None:
    response = await post_receipt(api, sent.service_sid, sent.notification_sid, form)

    assert_error(response, 400, 20001, parameter)
