"""`/v1/Credentials`: every credential type, write-only secrets, validation, CRUD and isolation.

Keys and certificates are generated here with `cryptography`, so validation is exercised with
the same kind of material an operator uploads (PEM certificates, .p8 keys, service-account JSON,
VAPID key pairs).
"""

from __future__ import annotations

import base64
import functools
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from assertions import assert_error
from clarion.store.database import Database
from clarion.store.tables import credential
from clarion.vault import Vault

SID = re.compile(r"CR[0-9a-f]{32}")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
FIELDS = {
    "sid",
    "account_sid",
    "friendly_name",
    "type",
    "sandbox",
    "date_created",
    "date_updated",
    "url",
    "settings",
}


# --- key material -------------------------------------------------------------------------


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@functools.cache
def apn_certificate(label: str = "first") -> tuple[str, str]:
    """A self-signed push certificate and its RSA key, as PEM (what a .p12 export yields)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: com.example.{label}")]
    )
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def p8_key() -> str:
    """An APNs token-signing key: P-256 in PKCS#8, the content of Apple's .p8 file."""
    return _pem_key(ec.generate_private_key(ec.SECP256R1()))


def service_account(project_id: str = "clarion-test") -> str:
    """A Firebase service-account JSON with a real (EC, for speed) private key."""
    return json.dumps(
        {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": secrets.token_hex(20),
            "private_key": _pem_key(ec.generate_private_key(ec.SECP256R1())),
            "client_email": f"firebase-adminsdk@{project_id}.iam.gserviceaccount.com",
            "client_id": "123456789012345678901",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def vapid_pair() -> tuple[str, str]:
    """(private, public) VAPID keys, base64url, as `web-push generate-vapid-keys` prints them."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = _b64url(key.private_numbers().private_value.to_bytes(32, "big"))
    public = _b64url(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    return private, public


def _b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


# --- one valid credential of each type ------------------------------------------------------


@dataclass(frozen=True)
class Case:
    form: dict[str, str]
    secret: dict[str, str]  # what the vault must hold
    settings: dict[str, str]  # what the response shows
    hidden: list[str] = field(default_factory=list)  # extra strings that must never be shown


def case(name: str) -> Case:
    if name == "apn-certificate":
        certificate, key = apn_certificate()
        return Case(
            {"Type": "apn", "Certificate": certificate, "PrivateKey": key, "Sandbox": "True"},
            {"Certificate": certificate, "PrivateKey": key},
            {},
        )
    if name == "apn-token":
        key = p8_key()
        return Case(
            {
                "Type": "apn",
                "PrivateKey": key,
                "KeyId": "ABC123DEFG",
                "TeamId": "TEAM123456",
                "BundleId": "com.example.app",
            },
            {"PrivateKey": key},
            {"key_id": "ABC123DEFG", "team_id": "TEAM123456", "bundle_id": "com.example.app"},
        )
    if name == "fcm":
        account = service_account()
        parsed = json.loads(account)
        return Case(
            {"Type": "fcm", "Secret": account},
            {"Secret": account},
            {"project_id": "clarion-test"},
            hidden=[parsed["private_key"], parsed["private_key_id"]],
        )
    if name == "gcm":
        api_key = "AIza" + secrets.token_urlsafe(26)
        return Case({"Type": "gcm", "ApiKey": api_key}, {"ApiKey": api_key}, {})
    if name == "twilio-sms":
        token = secrets.token_hex(16)
        account_sid = "AC" + secrets.token_hex(16)
        return Case(
            {
                "Type": "twilio-sms",
                "AccountSid": account_sid,
                "AuthToken": token,
                "From": "+14155550100",
            },
            {"AuthToken": token},
            {"account_sid": account_sid, "from": "+14155550100"},
        )
    if name == "smpp":
        password = secrets.token_hex(4)
        return Case(
            {
                "Type": "smpp",
                "Host": "smpp.example.com",
                "SystemId": "clarion",
                "Password": password,
                "SourceAddr": "CLARION",
            },
            {"Password": password},
            {
                "host": "smpp.example.com",
                "port": "2775",
                "system_id": "clarion",
                "source_addr": "CLARION",
            },
        )
    if name == "messenger":
        token = "EAAB" + secrets.token_urlsafe(40)
        app_secret = secrets.token_hex(16)
        return Case(
            {
                "Type": "messenger",
                "PageId": "1234567890",
                "PageAccessToken": token,
                "AppSecret": app_secret,
            },
            {"PageAccessToken": token, "AppSecret": app_secret},
            {"page_id": "1234567890"},
        )
    if name == "webpush":
        private, public = vapid_pair()
        return Case(
            {
                "Type": "webpush",
                "Subject": "mailto:ops@example.com",
                "VapidPrivateKey": private,
                "VapidPublicKey": public,
            },
            {"VapidPrivateKey": private},
            {"subject": "mailto:ops@example.com", "vapid_public_key": public},
        )
    if name == "smtp":
        password = secrets.token_urlsafe(18)
        return Case(
            {
                "Type": "smtp",
                "Host": "smtp.example.com",
                "Username": "mailer",
                "Password": password,
                "From": "notify@example.com",
            },
            {"Password": password},
            {
                "host": "smtp.example.com",
                "port": "587",
                "security": "starttls",
                "username": "mailer",
                "from": "notify@example.com",
            },
        )
    raise AssertionError(name)


CASES = [
    "apn-certificate",
    "apn-token",
    "fcm",
    "gcm",
    "twilio-sms",
    "smpp",
    "messenger",
    "webpush",
    "smtp",
]


def assert_hidden(text: str, values: list[str]) -> None:
    """None of `values`, nor any long line of them, appears in `text` raw or JSON-escaped."""
    for value in values:
        fragments = [value, json.dumps(value)[1:-1]]
        fragments += [
            line for line in value.splitlines() if len(line) >= 16 and not line.startswith("-----")
        ]
        for fragment in fragments:
            assert fragment not in text, f"secret material leaked: {fragment[:20]}…"


async def create(api: httpx.AsyncClient, form: dict[str, str]) -> dict[str, Any]:
    response = await api.post("/v1/Credentials", data=form)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def stored_secret(database: Database, sid: str) -> str | None:
    sealed: str | None = await database.read(
        lambda conn: conn.scalar(select(credential.c.secret_sealed).where(credential.c.sid == sid))
    )
    return sealed


async def opened_secret(database: Database, vault: Vault, sid: str) -> dict[str, str]:
    sealed = await stored_secret(database, sid)
    assert sealed is not None
    opened: dict[str, str] = json.loads(vault.open(sealed))
    return opened


def not_found_body(sid: str) -> dict[str, Any]:
    return {
        "code": 20404,
        "message": f"The requested resource /Credentials/{sid} was not found",
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    }


# --- create ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
async def test_create_answers_201_with_twilio_shape_and_public_settings(
    api: httpx.AsyncClient, account: Any, name: str
) -> None:
    """Each type is accepted and shown with Twilio's fields plus its non-secret settings."""
    example = case(name)
    response = await api.post("/v1/Credentials", data={**example.form, "FriendlyName": name})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == FIELDS
    assert SID.fullmatch(body["sid"])
    assert body["account_sid"] == account.sid
    assert body["friendly_name"] == name
    assert body["type"] == example.form["Type"]
    assert TIMESTAMP.fullmatch(body["date_created"])
    assert TIMESTAMP.fullmatch(body["date_updated"])
    assert body["url"] == f"http://testserver/v1/Credentials/{body['sid']}"
    assert body["settings"] == example.settings


async def test_apn_sandbox_is_rendered_as_capitalised_string(api: httpx.AsyncClient) -> None:
    """The spec types `sandbox` as a string; Twilio shows "True"/"False"."""
    certificate, key = apn_certificate()
    form = {"Type": "apn", "Certificate": certificate, "PrivateKey": key}
    assert (await create(api, {**form, "Sandbox": "true"}))["sandbox"] == "True"
    assert (await create(api, {**form, "Sandbox": "FALSE"}))["sandbox"] == "False"
    assert (await create(api, form))["sandbox"] is None


async def test_sandbox_is_ignored_for_non_apn_types(api: httpx.AsyncClient) -> None:
    body = await create(api, {**case("gcm").form, "Sandbox": "true"})
    assert body["sandbox"] is None


async def test_webpush_generates_a_vapid_key_pair_when_none_is_given(
    api: httpx.AsyncClient, database: Database, vault: Vault
) -> None:
    """The public key is shown (pages need it to subscribe); the private one is sealed."""
    body = await create(api, {"Type": "webpush", "Subject": "https://example.com/contact"})
    public = body["settings"]["vapid_public_key"]
    point = _b64url_decode(public)
    assert len(point) == 65  # an uncompressed P-256 point…
    assert point[0] == 4  # …starts with 0x04
    private = (await opened_secret(database, vault, body["sid"]))["VapidPrivateKey"]
    key = ec.derive_private_key(int.from_bytes(_b64url_decode(private), "big"), ec.SECP256R1())
    assert (
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        == point
    )
    assert_hidden(json.dumps(body), [private])


async def test_webpush_derives_the_public_key_from_a_given_private_key(
    api: httpx.AsyncClient,
) -> None:
    private, public = vapid_pair()
    body = await create(
        api, {"Type": "webpush", "Subject": "mailto:ops@example.com", "VapidPrivateKey": private}
    )
    assert body["settings"]["vapid_public_key"] == public


async def test_twilio_sms_accepts_a_messaging_service_instead_of_a_sender(
    api: httpx.AsyncClient,
) -> None:
    messaging_service = "MG" + secrets.token_hex(16)
    form = {**case("twilio-sms").form, "MessagingServiceSid": messaging_service}
    del form["From"]
    body = await create(api, form)
    assert body["settings"]["messaging_service_sid"] == messaging_service


# --- secrets are write-only -----------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
async def test_secrets_never_appear_in_create_fetch_list_or_update_responses(
    api: httpx.AsyncClient, name: str
) -> None:
    example = case(name)
    hidden = list(example.secret.values()) + example.hidden
    created = await api.post("/v1/Credentials", data=example.form)
    assert created.status_code == 201, created.text
    sid = created.json()["sid"]
    fetched = await api.get(f"/v1/Credentials/{sid}")
    listed = await api.get("/v1/Credentials")
    updated = await api.post(f"/v1/Credentials/{sid}", data={"FriendlyName": "renamed"})
    for response in (created, fetched, listed, updated):
        assert response.status_code in (200, 201), response.text
        assert_hidden(response.text, hidden)


@pytest.mark.parametrize("name", CASES)
async def test_secret_is_stored_sealed_and_opens_with_the_instance_key(
    api: httpx.AsyncClient, database: Database, vault: Vault, name: str
) -> None:
    example = case(name)
    sid = (await create(api, example.form))["sid"]
    sealed = await stored_secret(database, sid)
    assert sealed is not None
    assert_hidden(sealed, list(example.secret.values()) + example.hidden)
    assert json.loads(vault.open(sealed)) == example.secret


# --- validation -----------------------------------------------------------------------------


async def test_missing_type_is_rejected(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/Credentials", data={"ApiKey": "x"})
    assert_error(response, 400, 20001, "Type")


async def test_unknown_type_is_rejected(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/Credentials", data={"Type": "pigeon", "ApiKey": "x"})
    assert_error(response, 400, 20001, "Type")


async def test_friendly_name_longer_than_64_characters_is_rejected(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post(
        "/v1/Credentials", data={**case("gcm").form, "FriendlyName": "x" * 65}
    )
    assert_error(response, 400, 20001, "FriendlyName")
    accepted = await api.post(
        "/v1/Credentials", data={**case("gcm").form, "FriendlyName": "x" * 64}
    )
    assert accepted.status_code == 201, accepted.text


async def test_sandbox_must_be_a_boolean(api: httpx.AsyncClient) -> None:
    certificate, key = apn_certificate()
    response = await api.post(
        "/v1/Credentials",
        data={"Type": "apn", "Certificate": certificate, "PrivateKey": key, "Sandbox": "maybe"},
    )
    assert_error(response, 400, 20001, "Sandbox")


def _invalid_apn(variant: str) -> dict[str, str]:
    certificate, key = apn_certificate()
    other_certificate, _ = apn_certificate("second")
    token = case("apn-token").form
    rsa_key = apn_certificate()[1]
    return {
        "certificate-not-pem": {"Type": "apn", "Certificate": "not a cert", "PrivateKey": key},
        "key-not-pem": {"Type": "apn", "Certificate": certificate, "PrivateKey": "not a key"},
        "certificate-without-key": {"Type": "apn", "Certificate": certificate},
        "key-of-another-certificate": {
            "Type": "apn",
            "Certificate": other_certificate,
            "PrivateKey": key,
        },
        "nothing": {"Type": "apn"},
        "token-key-not-p256": {**token, "PrivateKey": rsa_key},
        "token-without-team-id": {k: v for k, v in token.items() if k != "TeamId"},
        "token-lowercase-key-id": {**token, "KeyId": "abc123defg"},
        "token-bad-bundle-id": {**token, "BundleId": "com example app"},
    }[variant]


@pytest.mark.parametrize(
    "variant",
    [
        "certificate-not-pem",
        "key-not-pem",
        "certificate-without-key",
        "key-of-another-certificate",
        "nothing",
        "token-key-not-p256",
        "token-without-team-id",
        "token-lowercase-key-id",
        "token-bad-bundle-id",
    ],
)
async def test_invalid_apn_material_is_rejected_with_52131(
    api: httpx.AsyncClient, variant: str
) -> None:
    response = await api.post("/v1/Credentials", data=_invalid_apn(variant))
    assert_error(response, 400, 52131)


@pytest.mark.parametrize(
    "secret",
    [
        "AAAAlegacyServerKey:APA91bH",  # FCM legacy server keys no longer work
        "{not json",
        json.dumps(["service_account"]),
        json.dumps({**json.loads(service_account()), "type": "authorized_user"}),
        json.dumps({k: v for k, v in json.loads(service_account()).items() if k != "client_email"}),
        json.dumps({**json.loads(service_account()), "private_key": "not a key"}),
    ],
    ids=["legacy-key", "not-json", "not-object", "wrong-type", "no-email", "bad-private-key"],
)
async def test_invalid_fcm_secret_is_rejected_with_52101(
    api: httpx.AsyncClient, secret: str
) -> None:
    response = await api.post("/v1/Credentials", data={"Type": "fcm", "Secret": secret})
    assert_error(response, 400, 52101, "Secret")


async def test_invalid_fcm_secret_error_does_not_echo_the_secret(api: httpx.AsyncClient) -> None:
    account = json.loads(service_account())
    account["private_key"] = "-----BEGIN PRIVATE KEY-----\nZm9vYmFyYmF6cXV4cXV1eA==\n"
    response = await api.post(
        "/v1/Credentials", data={"Type": "fcm", "Secret": json.dumps(account)}
    )
    assert_error(response, 400, 52101)
    assert_hidden(response.text, ["Zm9vYmFyYmF6cXV4cXV1eA==", account["private_key_id"]])


async def test_fcm_without_secret_and_gcm_without_api_key_are_rejected_with_52101(
    api: httpx.AsyncClient,
) -> None:
    assert_error(await api.post("/v1/Credentials", data={"Type": "fcm"}), 400, 52101, "Secret")
    assert_error(await api.post("/v1/Credentials", data={"Type": "gcm"}), 400, 52101, "ApiKey")


def _invalid_extension(variant: str) -> tuple[dict[str, str], str]:
    """An invalid form of an extension type and the parameter the error must name."""
    sms = case("twilio-sms").form
    smpp = case("smpp").form
    webpush = case("webpush").form
    smtp = case("smtp").form
    forms: dict[str, tuple[dict[str, str], str]] = {
        "sms-bad-account-sid": ({**sms, "AccountSid": "AC123"}, "AccountSid"),
        "sms-no-auth-token": ({k: v for k, v in sms.items() if k != "AuthToken"}, "AuthToken"),
        "sms-no-sender": ({k: v for k, v in sms.items() if k != "From"}, "From"),
        "sms-bad-sender": ({**sms, "From": "0800 FLOWERS"}, "From"),
        "sms-bad-messaging-service": (
            {**sms, "MessagingServiceSid": "MG" + "z" * 32},
            "MessagingServiceSid",
        ),
        "smpp-long-password": ({**smpp, "Password": "123456789"}, "Password"),
        "smpp-long-system-id": ({**smpp, "SystemId": "s" * 16}, "SystemId"),
        "smpp-bad-port": ({**smpp, "Port": "70000"}, "Port"),
        "smpp-no-host": ({k: v for k, v in smpp.items() if k != "Host"}, "Host"),
        "messenger-bad-page-id": ({**case("messenger").form, "PageId": "my-page"}, "PageId"),
        "messenger-no-token": ({"Type": "messenger", "PageId": "123"}, "PageAccessToken"),
        "webpush-http-subject": ({**webpush, "Subject": "http://example.com"}, "Subject"),
        "webpush-no-subject": ({"Type": "webpush"}, "Subject"),
        "webpush-mismatched-keys": (
            {**webpush, "VapidPublicKey": vapid_pair()[1]},
            "VapidPublicKey",
        ),
        "webpush-public-key-only": (
            {"Type": "webpush", "Subject": "mailto:a@example.com", "VapidPublicKey": "abc"},
            "VapidPrivateKey",
        ),
        "webpush-short-private-key": (
            {"Type": "webpush", "Subject": "mailto:a@example.com", "VapidPrivateKey": "abcd"},
            "VapidPrivateKey",
        ),
        "smtp-bad-security": ({**smtp, "Security": "ssl3"}, "Security"),
        "smtp-bad-from": ({**smtp, "From": "not-an-address"}, "From"),
        "smtp-password-without-username": (
            {k: v for k, v in smtp.items() if k != "Username"},
            "Username",
        ),
    }
    return forms[variant]


@pytest.mark.parametrize(
    "variant",
    [
        "sms-bad-account-sid",
        "sms-no-auth-token",
        "sms-no-sender",
        "sms-bad-sender",
        "sms-bad-messaging-service",
        "smpp-long-password",
        "smpp-long-system-id",
        "smpp-bad-port",
        "smpp-no-host",
        "messenger-bad-page-id",
        "messenger-no-token",
        "webpush-http-subject",
        "webpush-no-subject",
        "webpush-mismatched-keys",
        "webpush-public-key-only",
        "webpush-short-private-key",
        "smtp-bad-security",
        "smtp-bad-from",
        "smtp-password-without-username",
    ],
)
async def test_invalid_extension_parameters_are_rejected_with_20001_naming_the_parameter(
    api: httpx.AsyncClient, variant: str
) -> None:
    form, parameter = _invalid_extension(variant)
    response = await api.post("/v1/Credentials", data=form)
    assert_error(response, 400, 20001, parameter)


@pytest.mark.parametrize("name", CASES)
async def test_a_rate_limit_is_a_setting_of_every_type(api: httpx.AsyncClient, name: str) -> None:
    created = await api.post("/v1/Credentials", data={**case(name).form, "RateLimit": "2.5"})
    assert created.status_code == 201, created.text
    assert created.json()["settings"]["rate_limit"] == "2.5"


@pytest.mark.parametrize("value", ["0", "-1", "fast", "nan", "inf", "1e9"])
async def test_a_rate_limit_that_is_not_a_positive_rate_is_rejected(
    api: httpx.AsyncClient, value: str
) -> None:
    response = await api.post(
        "/v1/Credentials", data={**case("twilio-sms").form, "RateLimit": value}
    )
    assert_error(response, 400, 20001, "RateLimit")
    assert "messages per second" in response.json()["message"]


async def test_rejected_create_stores_nothing(api: httpx.AsyncClient) -> None:
    await api.post("/v1/Credentials", data={"Type": "fcm", "Secret": "{}"})
    listed = await api.get("/v1/Credentials")
    assert listed.json()["credentials"] == []


# --- fetch and list -------------------------------------------------------------------------


async def test_fetch_returns_what_create_returned(api: httpx.AsyncClient) -> None:
    created = await create(api, {**case("apn-token").form, "FriendlyName": "ios"})
    fetched = await api.get(f"/v1/Credentials/{created['sid']}")
    assert fetched.status_code == 200
    assert fetched.json() == created


async def test_fetch_accepts_upper_case_hex_and_json_suffix(api: httpx.AsyncClient) -> None:
    sid = (await create(api, case("gcm").form))["sid"]
    assert (await api.get(f"/v1/Credentials/CR{sid[2:].upper()}")).json()["sid"] == sid
    assert (await api.get(f"/v1/Credentials/{sid}.json")).json()["sid"] == sid


async def test_fetch_of_a_malformed_sid_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/Credentials/CR123")
    assert response.status_code == 404
    assert response.json() == not_found_body("CR123")


async def test_list_pages_follow_next_page_url_in_creation_order(api: httpx.AsyncClient) -> None:
    created = [
        (await create(api, {**case("gcm").form, "FriendlyName": f"c{i}"}))["sid"] for i in range(5)
    ]
    first = await api.get("/v1/Credentials", params={"PageSize": 2})
    assert first.status_code == 200
    meta = first.json()["meta"]
    assert meta["key"] == "credentials"
    assert meta["page"] == 0
    assert meta["page_size"] == 2
    assert meta["previous_page_url"] is None
    assert meta["first_page_url"] == "http://testserver/v1/Credentials?PageSize=2&Page=0"

    seen: list[str] = []
    pages = 0
    body = first.json()
    while True:
        pages += 1
        seen += [item["sid"] for item in body["credentials"]]
        next_url = body["meta"]["next_page_url"]
        if next_url is None:
            break
        assert next_url.startswith("http://testserver/v1/Credentials?")
        response = await api.get(next_url)
        assert response.status_code == 200, response.text
        body = response.json()
    assert seen == created
    assert pages == 3
    assert body["meta"]["page"] == 2
    assert body["meta"]["previous_page_url"] is not None


async def test_list_items_have_the_fetch_shape(api: httpx.AsyncClient) -> None:
    created = await create(api, case("smtp").form)
    listed = (await api.get("/v1/Credentials")).json()["credentials"]
    assert listed == [created]


async def test_page_size_out_of_range_is_rejected(api: httpx.AsyncClient) -> None:
    for size in ("0", "1001", "ten"):
        response = await api.get("/v1/Credentials", params={"PageSize": size})
        assert_error(response, 400, 20001, "PageSize")


# --- update ---------------------------------------------------------------------------------


async def test_update_of_friendly_name_keeps_the_secret(
    api: httpx.AsyncClient, database: Database, vault: Vault
) -> None:
    example = case("fcm")
    created = await create(api, example.form)
    response = await api.post(f"/v1/Credentials/{created['sid']}", data={"FriendlyName": "android"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["friendly_name"] == "android"
    assert body["settings"] == created["settings"]
    assert body["date_created"] == created["date_created"]
    assert TIMESTAMP.fullmatch(body["date_updated"])
    assert await opened_secret(database, vault, created["sid"]) == example.secret


async def test_update_rotates_a_secret(
    api: httpx.AsyncClient, database: Database, vault: Vault
) -> None:
    sid = (await create(api, case("gcm").form))["sid"]
    response = await api.post(f"/v1/Credentials/{sid}", data={"ApiKey": "AIza-rotated-key"})
    assert response.status_code == 200, response.text
    assert_hidden(response.text, ["AIza-rotated-key"])
    assert await opened_secret(database, vault, sid) == {"ApiKey": "AIza-rotated-key"}


async def test_update_of_fcm_secret_updates_the_shown_project(
    api: httpx.AsyncClient, database: Database, vault: Vault
) -> None:
    sid = (await create(api, case("fcm").form))["sid"]
    rotated = service_account("other-project")
    response = await api.post(f"/v1/Credentials/{sid}", data={"Secret": rotated})
    assert response.status_code == 200, response.text
    assert response.json()["settings"] == {"project_id": "other-project"}
    assert await opened_secret(database, vault, sid) == {"Secret": rotated}


async def test_partial_update_keeps_the_other_parameters(
    api: httpx.AsyncClient, database: Database, vault: Vault
) -> None:
    """Changing only the key id of a token credential keeps its key, team and bundle."""
    example = case("apn-token")
    sid = (await create(api, example.form))["sid"]
    response = await api.post(f"/v1/Credentials/{sid}", data={"KeyId": "NEWKEY0001"})
    assert response.status_code == 200, response.text
    assert response.json()["settings"] == {**example.settings, "key_id": "NEWKEY0001"}
    assert await opened_secret(database, vault, sid) == example.secret


async def test_partial_update_of_a_certificate_credential_stays_valid(
    api: httpx.AsyncClient, database: Database, vault: Vault
) -> None:
    """A new key alone must still match the stored certificate; the pair is rotated together."""
    certificate, key = apn_certificate()
    new_certificate, new_key = apn_certificate("second")
    sid = (await create(api, {"Type": "apn", "Certificate": certificate, "PrivateKey": key}))["sid"]
    lone_key = await api.post(f"/v1/Credentials/{sid}", data={"PrivateKey": new_key})
    assert_error(lone_key, 400, 52131)
    pair = await api.post(
        f"/v1/Credentials/{sid}", data={"Certificate": new_certificate, "PrivateKey": new_key}
    )
    assert pair.status_code == 200, pair.text
    assert await opened_secret(database, vault, sid) == {
        "Certificate": new_certificate,
        "PrivateKey": new_key,
    }


async def test_update_of_sandbox_flag(api: httpx.AsyncClient) -> None:
    sid = (await create(api, case("apn-certificate").form))["sid"]
    response = await api.post(f"/v1/Credentials/{sid}", data={"Sandbox": "false"})
    assert response.json()["sandbox"] == "False"


@pytest.mark.parametrize(
    ("name", "change", "code"),
    [
        ("apn-certificate", {"Certificate": "garbage"}, 52131),
        ("apn-token", {"TeamId": "team"}, 52131),
        ("fcm", {"Secret": "AAAA-legacy-key"}, 52101),
        ("webpush", {"VapidPublicKey": "BOGUS"}, 20001),
        ("smpp", {"Password": "far-too-long"}, 20001),
        ("smtp", {"Username": ""}, 20001),
    ],
)
async def test_invalid_update_leaves_the_credential_unchanged(
    api: httpx.AsyncClient,
    database: Database,
    vault: Vault,
    name: str,
    change: dict[str, str],
    code: int,
) -> None:
    example = case(name)
    created = await create(api, {**example.form, "FriendlyName": "before"})
    response = await api.post(
        f"/v1/Credentials/{created['sid']}", data={**change, "FriendlyName": "after"}
    )
    assert_error(response, 400, code)
    assert (await api.get(f"/v1/Credentials/{created['sid']}")).json() == created
    assert await opened_secret(database, vault, created["sid"]) == example.secret


async def test_update_of_a_nonexistent_credential_is_404(api: httpx.AsyncClient) -> None:
    sid = "CR" + secrets.token_hex(16)
    response = await api.post(f"/v1/Credentials/{sid}", data={"FriendlyName": "x"})
    assert response.status_code == 404
    assert response.json() == not_found_body(sid)


# --- delete ---------------------------------------------------------------------------------


async def test_delete_answers_204_then_the_credential_is_gone(
    api: httpx.AsyncClient, database: Database
) -> None:
    sid = (await create(api, case("smtp").form))["sid"]
    deleted = await api.delete(f"/v1/Credentials/{sid}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    fetched = await api.get(f"/v1/Credentials/{sid}")
    assert fetched.status_code == 404
    assert fetched.json() == not_found_body(sid)
    again = await api.delete(f"/v1/Credentials/{sid}")
    assert again.json() == not_found_body(sid)
    query = select(credential.c.id).where(credential.c.sid == sid)
    assert await database.read(lambda conn: conn.scalar(query)) is None


# --- isolation ------------------------------------------------------------------------------


async def test_another_accounts_credential_is_indistinguishable_from_a_nonexistent_one(
    api: httpx.AsyncClient, other_api: httpx.AsyncClient
) -> None:
    theirs = await create(other_api, {**case("gcm").form, "FriendlyName": "theirs"})
    missing = "CR" + secrets.token_hex(16)
    for sid in (theirs["sid"], missing):
        responses = [
            await api.get(f"/v1/Credentials/{sid}"),
            await api.post(f"/v1/Credentials/{sid}", data={"FriendlyName": "mine"}),
            await api.post(f"/v1/Credentials/{sid}", data={"ApiKey": "stolen"}),
            await api.delete(f"/v1/Credentials/{sid}"),
        ]
        for response in responses:
            assert response.status_code == 404
            assert response.json() == not_found_body(sid)
    assert (await other_api.get(f"/v1/Credentials/{theirs['sid']}")).json() == theirs


async def test_list_shows_only_the_callers_credentials(
    api: httpx.AsyncClient, other_api: httpx.AsyncClient
) -> None:
    mine = await create(api, case("gcm").form)
    await create(other_api, case("gcm").form)
    listed = (await api.get("/v1/Credentials")).json()["credentials"]
    assert [item["sid"] for item in listed] == [mine["sid"]]


# --- provider URL (extension) -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["fcm", "twilio-sms", "messenger"])
async def test_provider_url_is_a_setting_that_aims_the_channel_elsewhere(
    api: httpx.AsyncClient, name: str
) -> None:
    body = await create(api, {**case(name).form, "ProviderUrl": "https://staging.example:8443"})
    assert body["settings"]["provider_url"] == "https://staging.example:8443"


@pytest.mark.parametrize("url", ["ftp://example.com", "example.com", "https://x.example/api/v1"])
async def test_provider_url_must_be_an_http_base_url(api: httpx.AsyncClient, url: str) -> None:
    response = await api.post("/v1/Credentials", data={**case("fcm").form, "ProviderUrl": url})
    assert_error(response, 400, 20001, "ProviderUrl")
