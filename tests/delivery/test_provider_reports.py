"""Reports a channel hears on its own connection (SMPP receipts) reach the deliveries they name,
on both engines: even when they overtake the worker's record of the send, and never another
account's delivery."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from sqlalchemy import Connection, select, update

from clarion.delivery.provider_reports import ProviderReport, ProviderReports
from clarion.store.database import Database
from clarion.store.tables import delivery, delivery_event, notification

PHONE = "+14155550199"


@pytest.fixture
async def reports(database: Database) -> AsyncIterator[ProviderReports]:
    writer = ProviderReports(database, retry_delays=(0.05, 0.1, 0.2))
    await writer.start()
    yield writer
    await writer.stop()


async def smpp_credential(api: httpx.AsyncClient) -> str:
    response = await api.post(
        "/v1/Credentials",
        data={
            "Type": "smpp",
            "Host": "127.0.0.1",
            "SystemId": "reports",
            "Password": "pw",
            "SourceAddr": "CLARION",
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])


async def sms_delivery(api: httpx.AsyncClient) -> str:
    """A notification's SMS delivery, not yet sent; returns the notification SID."""
    service = (await api.post("/v1/Services", data={"FriendlyName": "reports"})).json()["sid"]
    response = await api.post(
        f"/v1/Services/{service}/Notifications",
        data={"ToBinding": json.dumps({"binding_type": "sms", "address": PHONE}), "Body": "hi"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])


async def mark_sent(database: Database, notification_sid: str, message_id: str) -> None:
    """What the worker records once the SMSC accepted the message."""
    of_this = select(notification.c.id).where(notification.c.sid == notification_sid)
    await database.transaction(
        lambda conn: conn.execute(
            update(delivery)
            .where(delivery.c.notification_id == of_this.scalar_subquery())
            .values(status="sent", provider_ref=message_id)
        )
    )


async def state(database: Database, message_id: str) -> tuple[str, str | None, int]:
    def op(conn: Connection) -> tuple[str, str | None, int]:
        row = conn.execute(
            select(delivery.c.id, delivery.c.status, delivery.c.error_code).where(
                delivery.c.provider_ref == message_id
            )
        ).one()
        events = conn.execute(
            select(delivery_event.c.id).where(
                delivery_event.c.delivery_id == row.id,
                delivery_event.c.kind == "provider_report",
            )
        ).all()
        return row.status, row.error_code, len(events)

    return await database.read(op)


async def eventually(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(15):
        while not condition():  # noqa: ASYNC110 - the writer runs on its own schedule
            await asyncio.sleep(0.01)


def report(
    credential_sid: str, message_id: str, status: str | None, **extra: str
) -> ProviderReport:
    return ProviderReport(
        credential_sid=credential_sid,
        channel="sms",
        provider_ref=message_id,
        status=status,
        **extra,
    )


async def test_a_receipt_that_overtakes_the_send_is_applied_once_the_send_is_recorded(
    api: httpx.AsyncClient, database: Database, reports: ProviderReports
) -> None:
    credential = await smpp_credential(api)
    notification_sid = await sms_delivery(api)
    message_id = secrets.token_hex(8)

    reports.submit(report(credential, message_id, None, error_message="ENROUTE: on its way"))
    reports.submit(report(credential, message_id, "delivered"))
    await mark_sent(database, notification_sid, message_id)

    await eventually(lambda: reports.applied == 2)
    assert await state(database, message_id) == ("delivered", None, 2)


async def test_a_failed_receipt_fails_the_delivery_with_its_code(
    api: httpx.AsyncClient, database: Database, reports: ProviderReports
) -> None:
    credential = await smpp_credential(api)
    notification_sid = await sms_delivery(api)
    message_id = secrets.token_hex(8)
    await mark_sent(database, notification_sid, message_id)

    reports.submit(
        report(
            credential,
            message_id,
            "failed",
            error_code="SMPP UNDELIV err:001",
            error_message="UNDELIV: the SMSC could not deliver the message",
        )
    )

    await eventually(lambda: reports.applied == 1)
    assert await state(database, message_id) == ("failed", "SMPP UNDELIV err:001", 1)


async def test_a_report_never_touches_another_accounts_delivery(
    api: httpx.AsyncClient,
    other_api: httpx.AsyncClient,
    database: Database,
    reports: ProviderReports,
) -> None:
    others_credential = await smpp_credential(other_api)
    notification_sid = await sms_delivery(api)
    message_id = secrets.token_hex(8)
    await mark_sent(database, notification_sid, message_id)

    reports.submit(report(others_credential, message_id, "delivered"))

    await eventually(lambda: reports.dropped == 1)
    assert reports.applied == 0
    assert await state(database, message_id) == ("sent", None, 0)
