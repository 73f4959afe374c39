"""The API under a policy refusing private destinations (`clarion serve` without
CLARION_ALLOW_PRIVATE_DESTINATIONS): what is private without any DNS — a literal non-global IP,
`localhost` — is a 400 saying what to fix, wherever a tenant gives Clarion somewhere to connect.
Host names pass here; the workers check what they resolve to (tests/delivery)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from clarion.api.app import create_app
from clarion.destinations import DestinationPolicy
from clarion.store.database import Database
from clarion.vault import Vault

ADVICE = "Clarion connects only to publicly routable hosts"


@pytest.fixture
async def app_transport(database: Database, vault: Vault) -> httpx.ASGITransport:
    """The app as `clarion serve` builds it by default: private destinations refused."""
    return httpx.ASGITransport(
        app=create_app(database=database, vault=vault, destinations=DestinationPolicy())
    )


@pytest.fixture
async def permissive_api(
    database: Database, vault: Vault, api: httpx.AsyncClient
) -> AsyncIterator[httpx.AsyncClient]:
    """The same account on an app that allows private destinations."""
    transport = httpx.ASGITransport(app=create_app(database=database, vault=vault))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver", auth=api.auth
    ) as client:
        yield client


def pem(key: Any) -> str:
    return str(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def service_account(**extra: str) -> str:
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "clarion-test",
            "private_key": pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "client_email": "sender@clarion-test.iam.gserviceaccount.com",
            **extra,
        }
    )


FORMS: dict[str, dict[str, str]] = {
    "apn": {
        "Type": "apn",
        "PrivateKey": pem(ec.generate_private_key(ec.SECP256R1())),
        "KeyId": "ABC123DEFG",
        "TeamId": "DEF123GHIJ",
        "BundleId": "com.example.app",
    },
    "fcm": {"Type": "fcm", "Secret": service_account()},
    "twilio-sms": {
        "Type": "twilio-sms",
        "AccountSid": "AC" + "0" * 32,
        "AuthToken": "token",
        "From": "+14155550100",
    },
    "messenger": {"Type": "messenger", "PageId": "1234567890", "PageAccessToken": "token"},
    "smtp": {"Type": "smtp", "Host": "smtp.example.com", "From": "news@example.com"},
    "smpp": {
        "Type": "smpp",
        "Host": "smsc.example.com",
        "SystemId": "clarion",
        "Password": "secret",
        "SourceAddr": "Clarion",
    },
}


def assert_refused(response: httpx.Response, parameter: str, *fragments: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == 400
    message = body["message"]
    assert message.startswith(f"Parameter '{parameter}' is invalid"), message
    assert ADVICE in message
    assert "CLARION_ALLOW_PRIVATE_DESTINATIONS=true" in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("kind", "url", "says"),
    [
        ("apn", "https://127.0.0.1:8443", "127.0.0.1 is a loopback address"),
        ("fcm", "http://169.254.169.254", "cloud metadata"),
        ("twilio-sms", "http://10.0.0.5", "private address (RFC 1918)"),
        ("messenger", "http://[::1]:8080", "::1 is a loopback address"),
        ("apn", "https://localhost:8443", "localhost is this server itself"),
        ("fcm", "https://[fd00::5]", "unique-local"),
    ],
)
async def test_a_private_provider_url_is_refused(
    api: httpx.AsyncClient, kind: str, url: str, says: str
) -> None:
    response = await api.post("/v1/Credentials", data={**FORMS[kind], "ProviderUrl": url})
    assert_refused(response, "ProviderUrl", says)


@pytest.mark.parametrize(
    ("kind", "host", "says"),
    [
        ("smtp", "localhost", "localhost is this server itself"),
        ("smtp", "10.1.2.3", "private address (RFC 1918)"),
        ("smpp", "127.0.0.1", "loopback"),
        ("smpp", "100.64.0.7", "carrier-grade NAT"),
    ],
)
async def test_a_private_smtp_or_smpp_host_is_refused(
    api: httpx.AsyncClient, kind: str, host: str, says: str
) -> None:
    response = await api.post("/v1/Credentials", data={**FORMS[kind], "Host": host})
    assert_refused(response, "Host", says)


async def test_an_fcm_service_account_with_a_private_token_uri_is_refused(
    api: httpx.AsyncClient,
) -> None:
    secret = service_account(token_uri="http://127.0.0.1:9/token")
    response = await api.post("/v1/Credentials", data={**FORMS["fcm"], "Secret": secret})
    assert_refused(response, "Secret", "its token_uri: 127.0.0.1 is a loopback address")


@pytest.mark.parametrize("kind", sorted(FORMS))
async def test_public_destinations_are_accepted(api: httpx.AsyncClient, kind: str) -> None:
    form = dict(FORMS[kind])
    if kind not in ("smtp", "smpp"):
        form["ProviderUrl"] = "https://provider.example.com:8443"
    response = await api.post("/v1/Credentials", data=form)
    assert response.status_code == 201, response.text


async def test_a_credential_cannot_be_updated_to_a_private_destination(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post("/v1/Credentials", data=FORMS["smtp"])
    assert response.status_code == 201, response.text
    sid = response.json()["sid"]
    response = await api.post(f"/v1/Credentials/{sid}", data={"Host": "192.168.0.25"})
    assert_refused(response, "Host", "192.168.0.25")
    response = await api.get(f"/v1/Credentials/{sid}")
    assert response.status_code == 200
    assert "192.168.0.25" not in response.text


async def test_private_destinations_are_accepted_when_the_operator_allows_them(
    permissive_api: httpx.AsyncClient,
) -> None:
    response = await permissive_api.post(
        "/v1/Credentials", data={**FORMS["smpp"], "Host": "127.0.0.1"}
    )
    assert response.status_code == 201, response.text
    response = await permissive_api.post(
        "/v1/Services", data={"FriendlyName": "x", "DeliveryCallbackUrl": "http://10.0.0.5/"}
    )
    assert response.status_code == 201, response.text


# --- delivery callback URLs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5/", "http://localhost:8080/hook", "http://[::ffff:127.0.0.1]/"]
)
async def test_a_private_delivery_callback_url_is_refused_on_services(
    api: httpx.AsyncClient, url: str
) -> None:
    response = await api.post(
        "/v1/Services", data={"FriendlyName": "s", "DeliveryCallbackUrl": url}
    )
    assert_refused(response, "DeliveryCallbackUrl")

    response = await api.post("/v1/Services", data={"FriendlyName": "s"})
    assert response.status_code == 201, response.text
    sid = response.json()["sid"]
    response = await api.post(f"/v1/Services/{sid}", data={"DeliveryCallbackUrl": url})
    assert_refused(response, "DeliveryCallbackUrl")
    response = await api.post(
        f"/v1/Services/{sid}", data={"DeliveryCallbackUrl": "https://hooks.example.com/notify"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["delivery_callback_url"] == "https://hooks.example.com/notify"


async def test_a_private_delivery_callback_url_is_refused_on_notifications(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await api.post(
        f"/v1/Services/{service_sid}/Notifications",
        data={
            "Body": "hi",
            "Identity": "ada",
            "DeliveryCallbackUrl": "http://169.254.169.254/latest/meta-data/",
        },
    )
    assert_refused(response, "DeliveryCallbackUrl", "cloud metadata")


# --- web push endpoints ----------------------------------------------------------------------


def subscription(endpoint: str) -> str:
    return json.dumps(
        {
            "endpoint": endpoint,
            "keys": {
                # A valid P-256 point and 16-byte auth secret, base64url.
                "p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u"
                "-Ts1XbjhazAkj7I99e8QcYP7DkM",
                "auth": "tBHItJI5svbpez7KI4CCXg",
            },
        }
    )


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        ("https://127.0.0.1:5432/push/x", "127.0.0.1 is a loopback address"),
        ("https://192.168.1.20/push/x", "private address (RFC 1918)"),
        ("https://localhost/push/x", "localhost is this server itself"),
    ],
)
async def test_a_web_push_binding_to_a_private_endpoint_is_refused(
    api: httpx.AsyncClient, service_sid: str, endpoint: str, says: str
) -> None:
    response = await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={"Identity": "ada", "BindingType": "webpush", "Address": subscription(endpoint)},
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 52001
    assert body["message"].startswith(
        "Parameter 'Address' is invalid for binding type webpush: endpoint: "
    )
    assert says in body["message"]
    assert ADVICE in body["message"]


async def test_a_web_push_binding_to_a_public_endpoint_is_accepted(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={
            "Identity": "ada",
            "BindingType": "webpush",
            "Address": subscription("https://fcm.googleapis.com/fcm/send/abc"),
        },
    )
    assert response.status_code == 201, response.text


async def test_a_direct_web_push_to_a_private_endpoint_fails_that_recipient(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """ToBinding follows Twilio: the request is accepted, the bad recipient fails."""
    response = await api.post(
        f"/v1/Services/{service_sid}/Notifications",
        data={
            "Body": "hi",
            "ToBinding": json.dumps(
                {"binding_type": "webpush", "address": subscription("https://10.9.8.7/push/x")}
            ),
        },
    )
    assert response.status_code == 201, response.text
    sid = response.json()["sid"]
    response = await api.get(f"/v1/Services/{service_sid}/Notifications/{sid}/Deliveries")
    assert response.status_code == 200, response.text
    (delivery,) = response.json()["deliveries"]
    assert delivery["status"] == "failed"
    assert str(delivery["error_code"]) == "52001"
    assert "10.9.8.7 is a private address (RFC 1918)" in delivery["error_message"]
