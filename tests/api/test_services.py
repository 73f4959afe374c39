"""`/v1/Services`: defaults, every setting, credential references, validation, CRUD, isolation."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from assertions import assert_error
from clarion.store.database import Database
from clarion.store.tables import binding

SID = re.compile(r"IS[0-9a-f]{32}")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
CREDENTIAL_FIELDS = (
    "apn_credential_sid",
    "gcm_credential_sid",
    "fcm_credential_sid",
    "sms_credential_sid",
    "facebook_messenger_credential_sid",
    "webpush_credential_sid",
    "email_credential_sid",
)
FIELDS = {
    # The spec's fields…
    "sid",
    "account_sid",
    "friendly_name",
    "date_created",
    "date_updated",
    "apn_credential_sid",
    "gcm_credential_sid",
    "fcm_credential_sid",
    "messaging_service_sid",
    "facebook_messenger_page_id",
    "default_apn_notification_protocol_version",
    "default_gcm_notification_protocol_version",
    "default_fcm_notification_protocol_version",
    "default_alexa_notification_protocol_version",
    "log_enabled",
    "url",
    "links",
    "alexa_skill_id",
    "delivery_callback_url",
    "delivery_callback_enabled",
    # …and the extension channels' credentials.
    "sms_credential_sid",
    "facebook_messenger_credential_sid",
    "webpush_credential_sid",
    "email_credential_sid",
    # …and the default failover policy.
    "failover",
}


def _p8() -> str:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


def credential_form(kind: str) -> dict[str, str]:
    """A valid credential of `kind` (token APNs and EC keys keep key generation fast)."""
    forms: dict[str, dict[str, str]] = {
        "apn": {
            "Type": "apn",
            "PrivateKey": _p8(),
            "KeyId": "ABC123DEFG",
            "TeamId": "TEAM123456",
            "BundleId": "com.example.app",
        },
        "fcm": {
            "Type": "fcm",
            "Secret": json.dumps(
                {
                    "type": "service_account",
                    "project_id": "clarion-test",
                    "private_key": _p8(),
                    "client_email": "sdk@clarion-test.iam.gserviceaccount.com",
                }
            ),
        },
        "gcm": {"Type": "gcm", "ApiKey": "AIza" + secrets.token_hex(8)},
        "twilio-sms": {
            "Type": "twilio-sms",
            "AccountSid": "AC" + secrets.token_hex(16),
            "AuthToken": secrets.token_hex(16),
            "From": "+14155550100",
        },
        "smpp": {
            "Type": "smpp",
            "Host": "smpp.example.com",
            "SystemId": "clarion",
            "Password": "secret",
            "SourceAddr": "CLARION",
        },
        "messenger": {"Type": "messenger", "PageId": "1234567890", "PageAccessToken": "EAAB"},
        "webpush": {"Type": "webpush", "Subject": "mailto:ops@example.com"},
        "smtp": {"Type": "smtp", "Host": "smtp.example.com", "From": "notify@example.com"},
    }
    return forms[kind]


async def new_credential(api: httpx.AsyncClient, kind: str) -> str:
    response = await api.post("/v1/Credentials", data=credential_form(kind))
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])


async def create(api: httpx.AsyncClient, form: dict[str, str] | None = None) -> dict[str, Any]:
    response = await api.post("/v1/Services", data=form or {})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def not_found_body(sid: str) -> dict[str, Any]:
    return {
        "code": 20404,
        "message": f"The requested resource /Services/{sid} was not found",
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    }


# --- create ---------------------------------------------------------------------------------


async def test_create_with_no_parameters_applies_twilio_defaults(
    api: httpx.AsyncClient, account: Any
) -> None:
    body = await create(api)
    assert set(body) == FIELDS
    sid = body["sid"]
    assert SID.fullmatch(sid)
    assert body["account_sid"] == account.sid
    assert body["friendly_name"] is None
    assert TIMESTAMP.fullmatch(body["date_created"])
    assert body["date_updated"] == body["date_created"]
    for channel in ("apn", "gcm", "fcm", "alexa"):
        assert body[f"default_{channel}_notification_protocol_version"] == "3"
    assert body["log_enabled"] is True
    assert body["delivery_callback_enabled"] is False
    assert body["delivery_callback_url"] is None
    assert body["messaging_service_sid"] is None
    assert body["facebook_messenger_page_id"] is None
    assert body["alexa_skill_id"] is None
    for name in CREDENTIAL_FIELDS:
        assert body[name] is None
    base = f"http://testserver/v1/Services/{sid}"
    assert body["url"] == base
    assert body["links"] == {
        "bindings": f"{base}/Bindings",
        "notifications": f"{base}/Notifications",
        "segments": f"{base}/Segments",
        "users": f"{base}/Users",
    }


async def test_create_accepts_every_setting_of_the_spec(api: httpx.AsyncClient) -> None:
    apn = await new_credential(api, "apn")
    gcm = await new_credential(api, "gcm")
    fcm = await new_credential(api, "fcm")
    messaging_service = "MG" + secrets.token_hex(16)
    body = await create(
        api,
        {
            "FriendlyName": "Shop app",
            "ApnCredentialSid": apn,
            "GcmCredentialSid": gcm,
            "FcmCredentialSid": fcm,
            "MessagingServiceSid": messaging_service,
            "FacebookMessengerPageId": "4242424242",
            "DefaultApnNotificationProtocolVersion": "4",
            "DefaultGcmNotificationProtocolVersion": "5",
            "DefaultFcmNotificationProtocolVersion": "6",
            "DefaultAlexaNotificationProtocolVersion": "7",
            "LogEnabled": "false",
            "AlexaSkillId": "amzn1.ask.skill.1234",
            "DeliveryCallbackUrl": "https://example.com/callbacks?x=1",
            "DeliveryCallbackEnabled": "true",
        },
    )
    expected = {
        "friendly_name": "Shop app",
        "apn_credential_sid": apn,
        "gcm_credential_sid": gcm,
        "fcm_credential_sid": fcm,
        "messaging_service_sid": messaging_service,
        "facebook_messenger_page_id": "4242424242",
        "default_apn_notification_protocol_version": "4",
        "default_gcm_notification_protocol_version": "5",
        "default_fcm_notification_protocol_version": "6",
        "default_alexa_notification_protocol_version": "7",
        "log_enabled": False,
        "alexa_skill_id": "amzn1.ask.skill.1234",
        "delivery_callback_url": "https://example.com/callbacks?x=1",
        "delivery_callback_enabled": True,
    }
    assert {name: body[name] for name in expected} == expected
    fetched = await api.get(f"/v1/Services/{body['sid']}")
    assert fetched.json() == body


@pytest.mark.parametrize(
    ("parameter", "field", "kind"),
    [
        ("SmsCredentialSid", "sms_credential_sid", "twilio-sms"),
        ("SmsCredentialSid", "sms_credential_sid", "smpp"),
        ("FacebookMessengerCredentialSid", "facebook_messenger_credential_sid", "messenger"),
        ("WebpushCredentialSid", "webpush_credential_sid", "webpush"),
        ("EmailCredentialSid", "email_credential_sid", "smtp"),
        ("GcmCredentialSid", "gcm_credential_sid", "fcm"),  # GCM bindings are sent through FCM
    ],
)
async def test_extension_credential_settings_accept_their_types(
    api: httpx.AsyncClient, parameter: str, field: str, kind: str
) -> None:
    credential_sid = await new_credential(api, kind)
    body = await create(api, {parameter: credential_sid})
    assert body[field] == credential_sid


async def test_credential_reference_with_upper_case_hex_is_stored_normalised(
    api: httpx.AsyncClient,
) -> None:
    credential_sid = await new_credential(api, "gcm")
    body = await create(api, {"GcmCredentialSid": "CR" + credential_sid[2:].upper()})
    assert body["gcm_credential_sid"] == credential_sid


# --- credential references ------------------------------------------------------------------


@pytest.mark.parametrize(
    "parameter",
    [
        "ApnCredentialSid",
        "GcmCredentialSid",
        "FcmCredentialSid",
        "SmsCredentialSid",
        "FacebookMessengerCredentialSid",
        "WebpushCredentialSid",
        "EmailCredentialSid",
    ],
)
async def test_unknown_credential_is_rejected_with_52002(
    api: httpx.AsyncClient, parameter: str
) -> None:
    missing = "CR" + secrets.token_hex(16)
    response = await api.post("/v1/Services", data={parameter: missing})
    assert_error(response, 400, 52002, parameter, missing)


async def test_another_accounts_credential_is_rejected_like_an_unknown_one(
    api: httpx.AsyncClient, other_api: httpx.AsyncClient
) -> None:
    theirs = await new_credential(other_api, "apn")
    response = await api.post("/v1/Services", data={"ApnCredentialSid": theirs})
    assert_error(response, 400, 52002, "ApnCredentialSid")
    assert response.json()["message"] == (
        f"Parameter 'ApnCredentialSid' is invalid: credential {theirs} does not exist"
    )


@pytest.mark.parametrize(
    ("parameter", "kind"),
    [
        ("ApnCredentialSid", "gcm"),
        ("FcmCredentialSid", "gcm"),
        ("GcmCredentialSid", "apn"),
        ("SmsCredentialSid", "smtp"),
        ("EmailCredentialSid", "twilio-sms"),
        ("WebpushCredentialSid", "fcm"),
        ("FacebookMessengerCredentialSid", "smpp"),
    ],
)
async def test_credential_of_the_wrong_type_is_rejected_with_52003(
    api: httpx.AsyncClient, parameter: str, kind: str
) -> None:
    credential_sid = await new_credential(api, kind)
    response = await api.post("/v1/Services", data={parameter: credential_sid})
    assert_error(response, 400, 52003, parameter, kind)


async def test_malformed_credential_sid_is_rejected_with_20001(api: httpx.AsyncClient) -> None:
    for value in ("CR123", "IS" + "0" * 32, "CR" + "g" * 32):
        response = await api.post("/v1/Services", data={"ApnCredentialSid": value})
        assert_error(response, 400, 20001, "ApnCredentialSid")


async def test_update_validates_credential_references_and_changes_nothing_on_error(
    api: httpx.AsyncClient,
) -> None:
    created = await create(api, {"FriendlyName": "before"})
    url = f"/v1/Services/{created['sid']}"
    gcm = await new_credential(api, "gcm")
    unknown = await api.post(
        url, data={"FriendlyName": "after", "FcmCredentialSid": "CR" + secrets.token_hex(16)}
    )
    assert_error(unknown, 400, 52002, "FcmCredentialSid")
    wrong_type = await api.post(url, data={"FriendlyName": "after", "ApnCredentialSid": gcm})
    assert_error(wrong_type, 400, 52003, "ApnCredentialSid")
    assert (await api.get(url)).json() == created


async def test_empty_credential_sid_clears_the_reference(api: httpx.AsyncClient) -> None:
    apn = await new_credential(api, "apn")
    smtp = await new_credential(api, "smtp")
    created = await create(api, {"ApnCredentialSid": apn, "EmailCredentialSid": smtp})
    response = await api.post(f"/v1/Services/{created['sid']}", data={"ApnCredentialSid": ""})
    assert response.status_code == 200, response.text
    assert response.json()["apn_credential_sid"] is None
    assert response.json()["email_credential_sid"] == smtp


async def test_deleting_a_credential_clears_it_from_services(api: httpx.AsyncClient) -> None:
    fcm = await new_credential(api, "fcm")
    created = await create(api, {"FcmCredentialSid": fcm})
    assert (await api.delete(f"/v1/Credentials/{fcm}")).status_code == 204
    fetched = await api.get(f"/v1/Services/{created['sid']}")
    assert fetched.status_code == 200
    assert fetched.json()["fcm_credential_sid"] is None


# --- validation of other settings -----------------------------------------------------------


async def test_messaging_service_sid_must_be_mg_followed_by_32_hex_digits(
    api: httpx.AsyncClient,
) -> None:
    for value in ("MG123", "IS" + "a" * 32, "MG" + "a" * 33, "MG" + "x" * 32):
        response = await api.post("/v1/Services", data={"MessagingServiceSid": value})
        assert_error(response, 400, 20001, "MessagingServiceSid")
    valid = "MG" + secrets.token_hex(16)
    assert (await create(api, {"MessagingServiceSid": valid}))["messaging_service_sid"] == valid


async def test_empty_messaging_service_sid_clears_it(api: httpx.AsyncClient) -> None:
    created = await create(api, {"MessagingServiceSid": "MG" + secrets.token_hex(16)})
    response = await api.post(f"/v1/Services/{created['sid']}", data={"MessagingServiceSid": ""})
    assert response.json()["messaging_service_sid"] is None


@pytest.mark.parametrize(
    "url", ["ftp://example.com/cb", "example.com/cb", "https://", "javascript:alert(1)", "/cb"]
)
async def test_delivery_callback_url_must_be_absolute_http_or_https(
    api: httpx.AsyncClient, url: str
) -> None:
    response = await api.post("/v1/Services", data={"DeliveryCallbackUrl": url})
    assert_error(response, 400, 20001, "DeliveryCallbackUrl")


async def test_delivery_callback_url_accepts_http_and_clears_with_empty_string(
    api: httpx.AsyncClient,
) -> None:
    created = await create(api, {"DeliveryCallbackUrl": "http://10.0.0.5:8080/cb"})
    assert created["delivery_callback_url"] == "http://10.0.0.5:8080/cb"
    cleared = await api.post(f"/v1/Services/{created['sid']}", data={"DeliveryCallbackUrl": ""})
    assert cleared.json()["delivery_callback_url"] is None


async def test_friendly_name_is_limited_to_64_characters(api: httpx.AsyncClient) -> None:
    assert (await create(api, {"FriendlyName": "é" * 64}))["friendly_name"] == "é" * 64
    response = await api.post("/v1/Services", data={"FriendlyName": "x" * 65})
    assert_error(response, 400, 20001, "FriendlyName", "64")


@pytest.mark.parametrize(("given", "expected"), [("TRUE", True), ("False", False), ("tRuE", True)])
async def test_booleans_are_parsed_case_insensitively(
    api: httpx.AsyncClient, given: str, expected: bool
) -> None:
    body = await create(api, {"LogEnabled": given, "DeliveryCallbackEnabled": given})
    assert body["log_enabled"] is expected
    assert body["delivery_callback_enabled"] is expected


@pytest.mark.parametrize("value", ["yes", "1", ""])
async def test_non_boolean_flags_are_rejected(api: httpx.AsyncClient, value: str) -> None:
    response = await api.post("/v1/Services", data={"LogEnabled": value})
    assert_error(response, 400, 20001, "LogEnabled")


# --- list -----------------------------------------------------------------------------------


async def test_list_filters_by_exact_friendly_name(api: httpx.AsyncClient) -> None:
    alpha = [(await create(api, {"FriendlyName": "alpha"}))["sid"] for _ in range(2)]
    beta = (await create(api, {"FriendlyName": "beta"}))["sid"]
    await create(api, {"FriendlyName": "alpha2"})

    filtered = await api.get("/v1/Services", params={"FriendlyName": "alpha"})
    assert filtered.status_code == 200
    body = filtered.json()
    assert [item["sid"] for item in body["services"]] == alpha
    assert body["meta"]["key"] == "services"
    assert body["meta"]["url"] == (
        "http://testserver/v1/Services?FriendlyName=alpha&PageSize=50&Page=0"
    )
    everything = (await api.get("/v1/Services")).json()["services"]
    assert beta in [item["sid"] for item in everything]
    assert len(everything) == 4


async def test_list_pages_keep_the_filter_in_next_page_url(api: httpx.AsyncClient) -> None:
    wanted = [(await create(api, {"FriendlyName": "paged"}))["sid"] for _ in range(3)]
    await create(api, {"FriendlyName": "other"})
    response = await api.get("/v1/Services", params={"FriendlyName": "paged", "PageSize": 2})
    seen: list[str] = []
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [item["sid"] for item in body["services"]]
        next_url = body["meta"]["next_page_url"]
        if next_url is None:
            break
        assert "FriendlyName=paged" in next_url
        assert next_url.startswith("http://testserver/v1/Services?")
        response = await api.get(next_url)
    assert seen == wanted


async def test_list_items_have_the_fetch_shape(api: httpx.AsyncClient) -> None:
    created = await create(api, {"FriendlyName": "one"})
    assert (await api.get("/v1/Services")).json()["services"] == [created]


# --- update ---------------------------------------------------------------------------------


async def test_update_changes_only_the_given_settings(api: httpx.AsyncClient) -> None:
    gcm = await new_credential(api, "gcm")
    created = await create(
        api,
        {
            "FriendlyName": "before",
            "GcmCredentialSid": gcm,
            "DeliveryCallbackUrl": "https://example.com/cb",
            "DefaultApnNotificationProtocolVersion": "4",
        },
    )
    response = await api.post(
        f"/v1/Services/{created['sid']}",
        data={"FriendlyName": "after", "LogEnabled": "False", "DeliveryCallbackEnabled": "True"},
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    changed = {"friendly_name": "after", "log_enabled": False, "delivery_callback_enabled": True}
    assert {name: updated[name] for name in changed} == changed
    unchanged = set(FIELDS) - set(changed) - {"date_updated"}
    assert {name: updated[name] for name in unchanged} == {
        name: created[name] for name in unchanged
    }
    assert TIMESTAMP.fullmatch(updated["date_updated"])
    assert (await api.get(f"/v1/Services/{created['sid']}")).json() == updated


async def test_update_with_invalid_setting_changes_nothing(api: httpx.AsyncClient) -> None:
    created = await create(api, {"FriendlyName": "before"})
    response = await api.post(
        f"/v1/Services/{created['sid']}",
        data={"FriendlyName": "after", "DeliveryCallbackUrl": "ftp://example.com"},
    )
    assert_error(response, 400, 20001, "DeliveryCallbackUrl")
    assert (await api.get(f"/v1/Services/{created['sid']}")).json() == created


async def test_update_of_a_nonexistent_service_is_404(api: httpx.AsyncClient) -> None:
    sid = "IS" + secrets.token_hex(16)
    response = await api.post(f"/v1/Services/{sid}", data={"FriendlyName": "x"})
    assert response.status_code == 404
    assert response.json() == not_found_body(sid)


# --- delete ---------------------------------------------------------------------------------


async def test_delete_answers_204_and_removes_the_service_and_its_bindings(
    api: httpx.AsyncClient, database: Database, service_sid: str
) -> None:
    created = await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={"Identity": "alice", "BindingType": "sms", "Address": "+14155550123"},
    )
    assert created.status_code == 201, created.text
    binding_sid = created.json()["sid"]

    deleted = await api.delete(f"/v1/Services/{service_sid}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    fetched = await api.get(f"/v1/Services/{service_sid}")
    assert fetched.status_code == 404
    assert fetched.json() == not_found_body(service_sid)
    bindings = await api.get(f"/v1/Services/{service_sid}/Bindings")
    assert bindings.status_code == 404
    query = select(binding.c.id).where(binding.c.sid == binding_sid)
    assert await database.read(lambda conn: conn.scalar(query)) is None
    again = await api.delete(f"/v1/Services/{service_sid}")
    assert again.json() == not_found_body(service_sid)


async def test_deleting_a_service_keeps_its_credentials(api: httpx.AsyncClient) -> None:
    """Credentials belong to the account and may serve other services."""
    apn = await new_credential(api, "apn")
    created = await create(api, {"ApnCredentialSid": apn})
    assert (await api.delete(f"/v1/Services/{created['sid']}")).status_code == 204
    assert (await api.get(f"/v1/Credentials/{apn}")).status_code == 200


# --- isolation ------------------------------------------------------------------------------


async def test_another_accounts_service_is_indistinguishable_from_a_nonexistent_one(
    api: httpx.AsyncClient, other_api: httpx.AsyncClient
) -> None:
    theirs = await create(other_api, {"FriendlyName": "theirs"})
    missing = "IS" + secrets.token_hex(16)
    for sid in (theirs["sid"], missing):
        responses = [
            await api.get(f"/v1/Services/{sid}"),
            await api.post(f"/v1/Services/{sid}", data={"FriendlyName": "mine"}),
            await api.delete(f"/v1/Services/{sid}"),
        ]
        for response in responses:
            assert response.status_code == 404
            assert response.json() == not_found_body(sid)
    assert (await other_api.get(f"/v1/Services/{theirs['sid']}")).json() == theirs


async def test_list_shows_only_the_callers_services(
    api: httpx.AsyncClient, other_api: httpx.AsyncClient
) -> None:
    mine = await create(api, {"FriendlyName": "shared name"})
    await create(other_api, {"FriendlyName": "shared name"})
    for params in ({}, {"FriendlyName": "shared name"}):
        listed = (await api.get("/v1/Services", params=params)).json()["services"]
        assert [item["sid"] for item in listed] == [mine["sid"]]
