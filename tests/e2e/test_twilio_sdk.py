"""The unmodified official `twilio` SDK against a real `clarion serve`: the compatibility promise.

Everything here goes through `client.notify.v1` exactly as an existing Twilio Notify user's code
does; the only change such code needs is `client.notify.base_url`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client
from twilio.rest.notify.v1 import V1
from twilio.rest.notify.v1.service import ServiceContext

if TYPE_CHECKING:  # the fixtures' types; conftest modules are not imported by tests
    from conftest import ClarionCli, ClarionServer

MISSING_SERVICE = "IS" + "0" * 32


def _client(
    server: ClarionServer, username: str, password: str, account_sid: str | None = None
) -> Client:
    # `environment={}`: no TWILIO_EDGE/TWILIO_REGION from the host may rewrite the URL.
    client = Client(username, password, account_sid, environment={})
    client.notify.base_url = server.base_url
    return client


@pytest.fixture(scope="module")
def notify(clarion_server: ClarionServer) -> V1:
    """`client.notify.v1` of the account `clarion serve` announced."""
    client = _client(clarion_server, clarion_server.account_sid, clarion_server.auth_token)
    return client.notify.v1


@pytest.fixture
def service(notify: V1) -> Iterator[ServiceContext]:
    created = notify.services.create(friendly_name="sdk test")
    yield notify.services(created.sid)
    with contextlib.suppress(TwilioRestException):  # the test may have deleted it already
        notify.services(created.sid).delete()


def _unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def rsa_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def fcm_service_account(rsa_key_pem: str) -> str:
    """A service-account JSON shaped like the one the Firebase console downloads."""
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "clarion-e2e",
            "private_key_id": secrets.token_hex(20),
            "private_key": rsa_key_pem,
            "client_email": "push@clarion-e2e.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


@pytest.fixture(scope="module")
def apn_certificate(rsa_key_pem: str) -> tuple[str, str]:
    """A self-signed push certificate and its private key, both PEM."""
    key = serialization.load_pem_private_key(rsa_key_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Apple Push Services: com.example")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), rsa_key_pem


# Credentials


def test_fcm_credential_is_created_from_a_service_account_and_fetched(
    notify: V1, fcm_service_account: str
) -> None:
    created = notify.credentials.create(type="fcm", friendly_name="fcm", secret=fcm_service_account)
    fetched = notify.credentials(created.sid).fetch()
    assert created.sid.startswith("CR")
    assert (fetched.sid, fetched.type, fetched.friendly_name) == (created.sid, "fcm", "fcm")
    assert isinstance(fetched.date_created, dt.datetime)
    assert fetched.url == f"{notify.domain.base_url}/v1/Credentials/{created.sid}"


def test_apn_credential_is_created_from_a_certificate_and_key(
    notify: V1, apn_certificate: tuple[str, str]
) -> None:
    certificate, key = apn_certificate
    created = notify.credentials.create(
        type="apn", friendly_name="apn", certificate=certificate, private_key=key, sandbox=True
    )
    assert (created.type, created.sandbox) == ("apn", "True")


def test_gcm_credential_is_created_from_an_api_key(notify: V1) -> None:
    created = notify.credentials.create(type="gcm", friendly_name="gcm", api_key="AIza-legacy")
    assert created.type == "gcm"
    assert created.sandbox is None


def test_credential_update_changes_only_what_is_given(
    notify: V1, apn_certificate: tuple[str, str]
) -> None:
    certificate, key = apn_certificate
    created = notify.credentials.create(
        type="apn", friendly_name="before", certificate=certificate, private_key=key, sandbox=True
    )
    renamed = notify.credentials(created.sid).update(friendly_name="after")
    unsandboxed = notify.credentials(created.sid).update(sandbox=False)
    assert (renamed.friendly_name, renamed.sandbox) == ("after", "True")
    assert (unsandboxed.friendly_name, unsandboxed.sandbox) == ("after", "False")
    assert isinstance(unsandboxed.date_updated, dt.datetime)


def test_credential_list_walks_every_page_once(notify: V1) -> None:
    created = {
        notify.credentials.create(type="gcm", friendly_name=f"page {n}", api_key="k").sid
        for n in range(5)
    }
    listed = [credential.sid for credential in notify.credentials.list(page_size=2)]
    assert len(listed) == len(set(listed))
    assert created <= set(listed)


def test_deleted_credential_is_gone(notify: V1) -> None:
    created = notify.credentials.create(type="gcm", api_key="k")
    assert notify.credentials(created.sid).delete() is True
    with pytest.raises(TwilioRestException) as raised:
        notify.credentials(created.sid).fetch()
    assert (raised.value.status, raised.value.code) == (404, 20404)


def test_invalid_fcm_secret_is_rejected_with_its_notify_code(notify: V1) -> None:
    with pytest.raises(TwilioRestException) as raised:
        notify.credentials.create(type="fcm", secret="AAAA-legacy-server-key")
    assert (raised.value.status, raised.value.code) == (400, 52101)
    assert "service-account JSON" in raised.value.msg


# Services


def test_service_is_created_with_credentials_and_fetched(
    notify: V1, fcm_service_account: str, apn_certificate: tuple[str, str]
) -> None:
    certificate, key = apn_certificate
    apn = notify.credentials.create(type="apn", certificate=certificate, private_key=key)
    fcm = notify.credentials.create(type="fcm", secret=fcm_service_account)
    created = notify.services.create(
        friendly_name="with credentials", apn_credential_sid=apn.sid, fcm_credential_sid=fcm.sid
    )
    fetched = notify.services(created.sid).fetch()
    assert created.sid.startswith("IS")
    assert (fetched.apn_credential_sid, fetched.fcm_credential_sid) == (apn.sid, fcm.sid)
    assert fetched.friendly_name == "with credentials"
    assert fetched.log_enabled is True
    assert fetched.default_apn_notification_protocol_version == "3"
    assert isinstance(fetched.date_created, dt.datetime)
    assert isinstance(fetched.links, dict)
    assert fetched.links["bindings"] == f"{fetched.url}/Bindings"


def test_service_update_changes_only_what_is_given(notify: V1, service: ServiceContext) -> None:
    updated = service.update(friendly_name="renamed", log_enabled=False)
    fetched = service.fetch()
    assert (updated.friendly_name, updated.log_enabled) == ("renamed", False)
    assert (fetched.friendly_name, fetched.log_enabled) == ("renamed", False)
    assert fetched.default_fcm_notification_protocol_version == "3"


def test_service_list_and_stream_walk_every_page_once(notify: V1) -> None:
    name = _unique("paged")
    created = [notify.services.create(friendly_name=name).sid for _ in range(5)]
    listed = [s.sid for s in notify.services.list(friendly_name=name, page_size=2)]
    streamed = [s.sid for s in notify.services.stream(friendly_name=name, page_size=2)]
    assert sorted(listed) == sorted(created)
    assert sorted(streamed) == sorted(created)


def test_service_page_reports_its_size_and_next_page(notify: V1) -> None:
    name = _unique("page")
    for _ in range(3):
        notify.services.create(friendly_name=name)
    first = notify.services.page(friendly_name=name, page_size=2)
    second = first.next_page()
    assert len(list(first)) == 2
    assert len(list(second)) == 1
    assert second.next_page() is None


def test_deleted_service_is_gone(notify: V1, service: ServiceContext) -> None:
    assert service.delete() is True
    with pytest.raises(TwilioRestException) as raised:
        service.fetch()
    assert (raised.value.status, raised.value.code) == (404, 20404)


# Bindings

APN_TOKEN = "a1" * 32


def test_binding_is_created_with_tags_and_fetched(service: ServiceContext) -> None:
    created = service.bindings.create(
        identity="alice", binding_type="apn", address=APN_TOKEN, tag=["vip", "eu"]
    )
    fetched = service.bindings(created.sid).fetch()
    assert created.sid.startswith("BS")
    assert (fetched.identity, fetched.binding_type, fetched.address) == ("alice", "apn", APN_TOKEN)
    assert sorted(fetched.tags) == ["eu", "vip"]
    assert fetched.notification_protocol_version == "3"
    assert isinstance(fetched.date_created, dt.datetime)
    assert isinstance(fetched.links, dict)
    assert fetched.links["user"].endswith("/Users/alice")


def test_binding_accepts_a_single_tag_as_a_string(service: ServiceContext) -> None:
    created = service.bindings.create(
        identity="bob", binding_type="sms", address="+14155550100", tag="solo"
    )
    assert created.tags == ["solo"]


def test_binding_list_filters_by_identity_and_tag(service: ServiceContext) -> None:
    alice = service.bindings.create(
        identity="alice", binding_type="sms", address="+14155550101", tag=["vip"]
    )
    bob = service.bindings.create(
        identity="bob", binding_type="sms", address="+14155550102", tag=["vip", "eu"]
    )
    service.bindings.create(identity="carol", binding_type="sms", address="+14155550103")

    by_identity = service.bindings.list(identity=["alice", "bob"])
    by_tag = service.bindings.list(tag="eu")
    by_both = service.bindings.list(identity=["alice"], tag=["vip"])
    assert sorted(b.sid for b in by_identity) == sorted([alice.sid, bob.sid])
    assert [b.sid for b in by_tag] == [bob.sid]
    assert [b.sid for b in by_both] == [alice.sid]


def test_deleted_binding_is_gone(service: ServiceContext) -> None:
    created = service.bindings.create(identity="dave", binding_type="fcm", address="fcm-token:1")
    assert service.bindings(created.sid).delete() is True
    with pytest.raises(TwilioRestException) as raised:
        service.bindings(created.sid).fetch()
    assert (raised.value.status, raised.value.code) == (404, 20404)
    assert service.bindings.list(identity=["dave"]) == []


# Notifications


def test_notification_to_identities_carries_data_and_channel_overrides(
    service: ServiceContext,
) -> None:
    service.bindings.create(identity="alice", binding_type="apn", address=APN_TOKEN)
    notification = service.notifications.create(
        identity=["alice"],
        body="Hello",
        title="Greeting",
        data={"order": "42", "nested": {"a": 1}},
        apn={"aps": {"badge": 3}},
        fcm={"notification": {"color": "#ff0000"}},
        ttl=60,
        priority="low",
    )
    assert notification.sid.startswith("NT")
    assert notification.identities == ["alice"]
    assert notification.data == {"order": "42", "nested": {"a": 1}}
    assert notification.apn == {"aps": {"badge": 3}}
    assert notification.fcm == {"notification": {"color": "#ff0000"}}
    assert (notification.body, notification.title) == ("Hello", "Greeting")
    assert (notification.priority, notification.ttl) == ("low", 60)
    assert isinstance(notification.date_created, dt.datetime)


def test_notification_to_a_tag_defaults_to_high_priority_and_four_weeks(
    service: ServiceContext,
) -> None:
    notification = service.notifications.create(tag="vip", body="Sale")
    assert notification.tags == ["vip"]
    assert notification.identities == []
    assert (notification.priority, notification.ttl) == ("high", 2_419_200)


def test_notification_to_binding_passes_an_address_through(service: ServiceContext) -> None:
    notification = service.notifications.create(
        to_binding=[json.dumps({"binding_type": "sms", "address": "+14155550199"})],
        body="Your code is 1234",
    )
    assert notification.sid.startswith("NT")
    assert (notification.identities, notification.tags) == ([], [])
    assert notification.body == "Your code is 1234"


def test_notification_data_with_reserved_keys_is_rejected(service: ServiceContext) -> None:
    with pytest.raises(TwilioRestException) as raised:
        service.notifications.create(identity=["alice"], data={"twi_body": "forged"})
    assert (raised.value.status, raised.value.code) == (400, 20001)
    assert "twi_" in raised.value.msg


# Errors and authentication


def test_missing_service_raises_404_with_code_20404(notify: V1) -> None:
    with pytest.raises(TwilioRestException) as raised:
        notify.services(MISSING_SERVICE).fetch()
    assert (raised.value.status, raised.value.code) == (404, 20404)
    assert f"/Services/{MISSING_SERVICE}" in raised.value.msg


def test_bad_parameter_raises_400_with_code_20001(service: ServiceContext) -> None:
    with pytest.raises(TwilioRestException) as raised:
        service.bindings.create(identity="alice", binding_type="pigeon", address="loft 3")
    assert (raised.value.status, raised.value.code) == (400, 20001)
    assert "BindingType" in raised.value.msg


def test_wrong_auth_token_raises_401_with_code_20003(clarion_server: ClarionServer) -> None:
    client = _client(clarion_server, clarion_server.account_sid, "not-the-token")
    with pytest.raises(TwilioRestException) as raised:
        client.notify.v1.services.create(friendly_name="refused")
    assert (raised.value.status, raised.value.code) == (401, 20003)


@pytest.fixture(scope="module")
def api_key(clarion_server: ClarionServer, clarion_cli: ClarionCli) -> dict[str, str]:
    """`clarion accounts keys create` in its own process, next to the running server."""
    result = clarion_cli(
        "accounts",
        "keys",
        "create",
        "--account",
        clarion_server.account_sid,
        "--friendly-name",
        "k",
    )
    assert result.returncode == 0, result.stderr
    issued: dict[str, str] = json.loads(result.stdout)
    assert issued["sid"].startswith("SK")
    return issued


def test_api_key_client_acts_for_its_account(
    clarion_server: ClarionServer, api_key: dict[str, str]
) -> None:
    client = _client(clarion_server, api_key["sid"], api_key["secret"], clarion_server.account_sid)
    created = client.notify.v1.services.create(friendly_name="via api key")
    assert created.account_sid == clarion_server.account_sid
    assert client.notify.v1.services(created.sid).fetch().friendly_name == "via api key"


def test_api_key_with_wrong_secret_is_refused(
    clarion_server: ClarionServer, api_key: dict[str, str]
) -> None:
    client = _client(clarion_server, api_key["sid"], "wrong-secret", clarion_server.account_sid)
    with pytest.raises(TwilioRestException) as raised:
        client.notify.v1.services.create(friendly_name="refused")
    assert (raised.value.status, raised.value.code) == (401, 20003)
