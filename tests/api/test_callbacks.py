"""`POST /v1/Callbacks/Sms/{CredentialSid}`: Twilio's status callbacks move SMS deliveries on.

The signatures here are made with the `twilio` SDK's own RequestValidator, so Clarion is checked
against Twilio's implementation rather than against itself.
"""

from __future__ import annotations

import json
import secrets

import httpx
import pytest
from sqlalchemy import select, update
from twilio.request_validator import RequestValidator

from assertions import assert_error
from clarion.store.database import Database
from clarion.store.tables import delivery, notification

PHONE = "+14155550123"


@pytest.fixture
async def sms_credential(api: httpx.AsyncClient) -> tuple[str, str]:
    """(credential SID, auth token) of a twilio-sms credential of the test account."""
    token = secrets.token_hex(16)
    response = await api.post(
        "/v1/Credentials",
        data={
            "Type": "twilio-sms",
            "AccountSid": "AC" + secrets.token_hex(16),
            "AuthToken": token,
            "From": "+14155550100",
        },
    )
    assert response.status_code == 201, response.text
    return response.json()["sid"], token


async def sent_sms(api: httpx.AsyncClient, database: Database, service_sid: str) -> str:
    """An SMS delivery as the engine leaves it after Twilio accepted it; returns its SM sid."""
    response = await api.post(
        f"/v1/Services/{service_sid}/Notifications",
        data={"ToBinding": json.dumps({"binding_type": "sms", "address": PHONE}), "Body": "hi"},
    )
    assert response.status_code == 201, response.text
    message_sid = "SM" + secrets.token_hex(16)
    # Only this notification's delivery: other tests share the database and the number.
    of_this = select(notification.c.id).where(notification.c.sid == response.json()["sid"])
    await database.transaction(
        lambda conn: conn.execute(
            update(delivery)
            .where(delivery.c.notification_id == of_this.scalar_subquery())
            .values(status="sent", provider_ref=message_sid)
        )
    )
    return message_sid


async def delivery_state(database: Database, message_sid: str) -> tuple[str, str | None]:
    row = await database.read(
        lambda conn: conn.execute(
            select(delivery.c.status, delivery.c.error_code).where(
                delivery.c.provider_ref == message_sid
            )
        ).one()
    )
    return row.status, row.error_code


async def post_callback(
    api: httpx.AsyncClient, credential_sid: str, token: str, form: dict[str, str]
) -> httpx.Response:
    url = f"http://testserver/v1/Callbacks/Sms/{credential_sid}"
    signature = RequestValidator(token).compute_signature(url, form)
    return await api.post(
        url, data=form, headers={"X-Twilio-Signature": signature}, auth=httpx.Auth()
    )


async def test_delivered_status_marks_the_delivery_delivered(
    api: httpx.AsyncClient, database: Database, service_sid: str, sms_credential: tuple[str, str]
) -> None:
    message_sid = await sent_sms(api, database, service_sid)

    response = await post_callback(
        api, *sms_credential, {"MessageSid": message_sid, "MessageStatus": "delivered"}
    )

    assert response.status_code == 204, response.text
    assert await delivery_state(database, message_sid) == ("delivered", None)


async def test_undelivered_status_fails_the_delivery_with_the_carrier_code(
    api: httpx.AsyncClient, database: Database, service_sid: str, sms_credential: tuple[str, str]
) -> None:
    message_sid = await sent_sms(api, database, service_sid)

    await post_callback(
        api,
        *sms_credential,
        {"MessageSid": message_sid, "MessageStatus": "undelivered", "ErrorCode": "30003"},
    )

    assert await delivery_state(database, message_sid) == ("failed", "30003")


async def test_a_late_sent_report_never_moves_a_delivered_message_back(
    api: httpx.AsyncClient, database: Database, service_sid: str, sms_credential: tuple[str, str]
) -> None:
    message_sid = await sent_sms(api, database, service_sid)

    for status in ("delivered", "sent", "undelivered"):
        await post_callback(
            api, *sms_credential, {"MessageSid": message_sid, "MessageStatus": status}
        )

    assert await delivery_state(database, message_sid) == ("delivered", None)


async def test_a_wrong_signature_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, database: Database, service_sid: str, sms_credential: tuple[str, str]
) -> None:
    message_sid = await sent_sms(api, database, service_sid)
    credential_sid, _token = sms_credential

    response = await post_callback(
        api,
        credential_sid,
        "not-the-token",
        {"MessageSid": message_sid, "MessageStatus": "delivered"},
    )

    assert_error(response, 403, 20403, "X-Twilio-Signature")
    assert await delivery_state(database, message_sid) == ("sent", None)


async def test_unknown_credentials_are_404(api: httpx.AsyncClient) -> None:
    form = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"}
    for sid in ("CR" + "0" * 32, "nope"):
        response = await post_callback(api, sid, "token", form)
        assert_error(response, 404, 20404)


async def test_an_unknown_message_is_acknowledged(
    api: httpx.AsyncClient, sms_credential: tuple[str, str]
) -> None:
    """Twilio retries what fails; a message Clarion did not send is not worth retrying."""
    response = await post_callback(
        api, *sms_credential, {"MessageSid": "SM" + "1" * 32, "MessageStatus": "delivered"}
    )

    assert response.status_code == 204


async def test_a_callback_without_message_sid_is_a_400(
    api: httpx.AsyncClient, sms_credential: tuple[str, str]
) -> None:
    response = await post_callback(api, *sms_credential, {"MessageStatus": "delivered"})

    assert_error(response, 400, 20001, "MessageSid")


async def test_another_accounts_message_is_not_touched(
    api: httpx.AsyncClient,
    other_api: httpx.AsyncClient,
    database: Database,
    service_sid: str,
) -> None:
    """A credential only reports on deliveries of its own account."""
    message_sid = await sent_sms(api, database, service_sid)
    token = secrets.token_hex(16)
    other = await other_api.post(
        "/v1/Credentials",
        data={
            "Type": "twilio-sms",
            "AccountSid": "AC" + secrets.token_hex(16),
            "AuthToken": token,
            "From": "+14155550100",
        },
    )

    await post_callback(
        api, other.json()["sid"], token, {"MessageSid": message_sid, "MessageStatus": "delivered"}
    )

    assert await delivery_state(database, message_sid) == ("sent", None)
