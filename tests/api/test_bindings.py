"""Bindings (`/v1/Services/{IS}/Bindings`): registering addresses, filtering, paging, isolation.

A binding is one address of one identity on one channel. These tests pin down the wire format
Twilio Notify clients rely on, the validation each binding type applies to its address, and the
rules that keep one identity's (or one tenant's) bindings out of another's hands.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from assertions import assert_error

APN_TOKEN = "a7c6" + "0123456789abcdef" * 3 + "0123456789ab"  # 64 hex digits
FCM_TOKEN = "dGVzdA:APA91bH-fcm_token.example"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def p256dh_key() -> str:
    """A real browser-style subscription key: an uncompressed P-256 public point."""
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return b64url(
        public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )


def push_subscription(
    *,
    endpoint: str = "https://push.example.com/send/abc123",
    p256dh: str | None = None,
    auth: str | None = None,
) -> str:
    """A PushSubscription as `JSON.stringify(subscription)` produces it in a browser."""
    return json.dumps(
        {
            "endpoint": endpoint,
            "expirationTime": None,
            "keys": {
                "p256dh": p256dh if p256dh is not None else p256dh_key(),
                "auth": auth if auth is not None else b64url(os.urandom(16)),
            },
        },
        indent=2,
    )


def apn_token(n: int) -> str:
    """The n-th distinct 64-hex-digit APNs token."""
    return f"{n:064x}"


async def register(
    api: httpx.AsyncClient,
    service_sid: str,
    identity: str = "alice",
    binding_type: str = "apn",
    address: str = APN_TOKEN,
    **extra: Any,
) -> httpx.Response:
    data: dict[str, Any] = {"Identity": identity, "BindingType": binding_type, "Address": address}
    data.update(extra)
    return await api.post(f"/v1/Services/{service_sid}/Bindings", data=data)


async def created(
    api: httpx.AsyncClient,
    service_sid: str,
    identity: str = "alice",
    binding_type: str = "apn",
    address: str = APN_TOKEN,
    **extra: Any,
) -> dict[str, Any]:
    response = await register(api, service_sid, identity, binding_type, address, **extra)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def list_sids(api: httpx.AsyncClient, service_sid: str, params: Any = None) -> list[str]:
    response = await api.get(f"/v1/Services/{service_sid}/Bindings", params=params)
    assert response.status_code == 200, response.text
    return [item["sid"] for item in response.json()["bindings"]]


# --- Creating each binding type -------------------------------------------------------------


@pytest.mark.parametrize(
    ("binding_type", "address", "stored"),
    [
        pytest.param("apn", APN_TOKEN, APN_TOKEN, id="apn"),
        pytest.param("apn", APN_TOKEN.upper(), APN_TOKEN, id="apn-upper-case-normalized"),
        pytest.param("fcm", FCM_TOKEN, FCM_TOKEN, id="fcm"),
        pytest.param("gcm", FCM_TOKEN, FCM_TOKEN, id="gcm"),
        pytest.param("sms", "+14155550100", "+14155550100", id="sms"),
        pytest.param("facebook-messenger", "1254598714695214", "1254598714695214", id="psid"),
        pytest.param("facebook-messenger", "+447700900123", "+447700900123", id="messenger-e164"),
        pytest.param("alexa", "amzn1.ask.account.AEXAMPLE", "amzn1.ask.account.AEXAMPLE"),
        pytest.param("email", "Ada.Lovelace@Example.COM", "Ada.Lovelace@example.com", id="email"),
    ],
)
async def test_each_binding_type_is_created_with_its_normalized_address(
    api: httpx.AsyncClient, service_sid: str, binding_type: str, address: str, stored: str
) -> None:
    """Addresses are stored canonically so that re-registering a device finds its binding."""
    body = await created(api, service_sid, "alice", binding_type, address)
    assert body["sid"].startswith("BS")
    assert len(body["sid"]) == 34
    assert body["binding_type"] == binding_type
    assert body["address"] == stored
    assert body["identity"] == "alice"


async def test_webpush_binding_stores_the_subscription_as_compact_json(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """The browser's PushSubscription is kept as endpoint plus keys, nothing else."""
    p256dh, auth = p256dh_key(), b64url(os.urandom(16))
    body = await created(
        api, service_sid, "alice", "webpush", push_subscription(p256dh=p256dh, auth=auth)
    )
    assert body["binding_type"] == "webpush"
    assert json.loads(body["address"]) == {
        "endpoint": "https://push.example.com/send/abc123",
        "keys": {"p256dh": p256dh, "auth": auth},
    }
    assert " " not in body["address"]


async def test_sms_address_plus_sign_survives_form_encoding(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """An E.164 '+' must be sent as %2B; a raw '+' in a form body decodes to a space."""
    raw = await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        content=b"Identity=alice&BindingType=sms&Address=%2B14155550100",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert raw.status_code == 201, raw.text
    assert raw.json()["address"] == "+14155550100"
    unescaped = await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        content=b"Identity=alice&BindingType=sms&Address=+14155550101",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(unescaped, 400, 52001, "E.164")


async def test_binding_response_has_the_twilio_shape(
    api: httpx.AsyncClient, service_sid: str, account: Any
) -> None:
    body = await created(
        api, service_sid, "alice", "apn", APN_TOKEN, Tag=["vip", "eu"], Endpoint="device-1"
    )
    sid = body["sid"]
    assert set(body) == {
        "sid",
        "account_sid",
        "service_sid",
        "credential_sid",
        "date_created",
        "date_updated",
        "notification_protocol_version",
        "endpoint",
        "identity",
        "binding_type",
        "address",
        "tags",
        "url",
        "links",
        # Extensions: whether a provider has retired the address.
        "status",
        "inactive_since",
        "inactive_reason",
    }
    assert body["status"] == "active"
    assert body["inactive_since"] is None
    assert body["inactive_reason"] is None
    assert body["account_sid"] == account.sid
    assert body["service_sid"] == service_sid
    assert body["credential_sid"] is None
    assert body["endpoint"] == "device-1"
    assert sorted(body["tags"]) == ["eu", "vip"]
    assert body["url"] == f"http://testserver/v1/Services/{service_sid}/Bindings/{sid}"
    assert body["links"] == {"user": f"http://testserver/v1/Services/{service_sid}/Users/alice"}
    for field in ("date_created", "date_updated"):
        date.fromisoformat(body[field][:10])
        assert body[field].endswith("Z")
        assert len(body[field]) == len("2024-01-01T00:00:00Z")


async def test_user_link_percent_encodes_the_identity(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """Identities are free text; the link must still be one path segment."""
    body = await created(api, service_sid, "ada lovelace/1")
    assert body["links"]["user"] == (
        f"http://testserver/v1/Services/{service_sid}/Users/ada%20lovelace%2F1"
    )


@pytest.mark.parametrize(
    ("binding_type", "address"),
    [("apn", APN_TOKEN), ("fcm", FCM_TOKEN), ("gcm", FCM_TOKEN), ("alexa", "amzn1.ask.x")],
)
async def test_push_bindings_default_to_the_services_protocol_version(
    api: httpx.AsyncClient, service_sid: str, binding_type: str, address: str
) -> None:
    body = await created(api, service_sid, "alice", binding_type, address)
    assert body["notification_protocol_version"] == "3"


async def test_protocol_version_default_follows_the_service_setting(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    updated = await api.post(
        f"/v1/Services/{service_sid}", data={"DefaultApnNotificationProtocolVersion": "4"}
    )
    assert updated.status_code == 200, updated.text
    body = await created(api, service_sid)
    assert body["notification_protocol_version"] == "4"


async def test_explicit_protocol_version_overrides_the_default(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    body = await created(api, service_sid, NotificationProtocolVersion="2")
    assert body["notification_protocol_version"] == "2"


async def test_sms_binding_has_no_protocol_version(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """Protocol versions describe push payload formats; SMS has none."""
    body = await created(api, service_sid, "alice", "sms", "+14155550100")
    assert body["notification_protocol_version"] is None


# --- Validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("binding_type", "address", "problem"),
    [
        pytest.param("apn", "not-hex-at-all", "hexadecimal", id="apn-not-hex"),
        pytest.param("apn", APN_TOKEN[:62], "64 or more", id="apn-too-short"),
        pytest.param("fcm", "token with spaces", "registration tokens", id="fcm-spaces"),
        pytest.param("gcm", "token/with/slashes", "registration tokens", id="gcm-slashes"),
        pytest.param("sms", "4155550100", "E.164", id="sms-no-plus"),
        pytest.param("sms", "+1415", "not a possible phone number", id="sms-too-short"),
        pytest.param("sms", "+1-not-a-number", "E.164", id="sms-garbage"),
        pytest.param("facebook-messenger", "alice", "E.164", id="messenger-name"),
        pytest.param("email", "nobody", "e-mail", id="email-no-at"),
        pytest.param("email", "a@b@example.com", "e-mail", id="email-two-ats"),
        pytest.param("webpush", "not json", "PushSubscription JSON", id="webpush-not-json"),
        pytest.param("webpush", '{"endpoint": "https://x"}', "PushSubscription", id="no-keys"),
        pytest.param(
            "webpush",
            push_subscription(endpoint="http://push.example.com/x"),
            "https",
            id="webpush-http-endpoint",
        ),
        pytest.param(
            "webpush",
            push_subscription(p256dh=b64url(b"\x04" + b"\x01" * 32)),
            "p256dh",
            id="webpush-short-key",
        ),
        pytest.param(
            "webpush",
            push_subscription(p256dh=b64url(b"\x04" + b"\xff" * 64)),
            "p256dh",
            id="webpush-key-not-on-curve",
        ),
        pytest.param(
            "webpush",
            push_subscription(auth=b64url(os.urandom(15))),
            "auth",
            id="webpush-short-auth",
        ),
        pytest.param(
            "webpush", push_subscription(auth="not base64!"), "auth", id="webpush-bad-auth"
        ),
    ],
)
async def test_invalid_address_is_rejected_with_52001_saying_why(
    api: httpx.AsyncClient, service_sid: str, binding_type: str, address: str, problem: str
) -> None:
    response = await register(api, service_sid, "alice", binding_type, address)
    assert_error(response, 400, 52001, "'Address'", binding_type, problem)


@pytest.mark.parametrize("missing", ["Identity", "BindingType", "Address"])
async def test_missing_required_parameter_is_named(
    api: httpx.AsyncClient, service_sid: str, missing: str
) -> None:
    data = {"Identity": "alice", "BindingType": "apn", "Address": APN_TOKEN}
    del data[missing]
    response = await api.post(f"/v1/Services/{service_sid}/Bindings", data=data)
    assert_error(response, 400, 20001, missing)


async def test_unknown_binding_type_is_rejected(api: httpx.AsyncClient, service_sid: str) -> None:
    response = await register(api, service_sid, binding_type="carrier-pigeon")
    assert_error(response, 400, 20001, "BindingType", "apn")


async def test_twenty_tags_are_accepted(api: httpx.AsyncClient, service_sid: str) -> None:
    tags = [f"tag{n:02d}" for n in range(20)]
    body = await created(api, service_sid, Tag=tags)
    assert body["tags"] == tags


async def test_more_than_twenty_tags_are_rejected(api: httpx.AsyncClient, service_sid: str) -> None:
    response = await register(api, service_sid, Tag=[f"tag{n}" for n in range(21)])
    assert_error(response, 400, 20001, "'Tag'", "20")
    assert await list_sids(api, service_sid) == []


async def test_twenty_first_binding_of_an_identity_is_rejected(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """Twilio: "Up to 20 Bindings can be created for the same Identity in a given Service"."""
    for n in range(20):
        await created(api, service_sid, "alice", "apn", apn_token(n))
    response = await register(api, service_sid, "alice", "apn", apn_token(20))
    assert_error(response, 400, 20001, "Identity", "20 bindings")
    assert len(await list_sids(api, service_sid, {"Identity": "alice"})) == 20


async def test_identity_at_its_limit_can_still_reregister_its_own_address(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """Refreshing a binding's tags does not add a binding, so the limit does not apply."""
    sids = [
        (await created(api, service_sid, "alice", "apn", apn_token(n)))["sid"] for n in range(20)
    ]
    again = await created(api, service_sid, "alice", "apn", apn_token(0), Tag="new")
    assert again["sid"] == sids[0]
    assert again["tags"] == ["new"]


# --- Re-registration ------------------------------------------------------------------------


async def test_reregistering_an_address_under_a_new_identity_moves_it(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """A device that changes hands must stop receiving the previous owner's notifications."""
    first = await created(api, service_sid, "alice", "apn", APN_TOKEN, Tag=["a1", "a2"])
    moved = await created(api, service_sid, "bob", "apn", APN_TOKEN.upper(), Tag="b1")
    assert moved["sid"] == first["sid"]
    assert moved["identity"] == "bob"
    assert moved["tags"] == ["b1"]
    assert moved["links"]["user"].endswith("/Users/bob")
    assert await list_sids(api, service_sid, {"Identity": "alice"}) == []
    assert await list_sids(api, service_sid, {"Identity": "bob"}) == [first["sid"]]
    assert await list_sids(api, service_sid, {"Tag": "a1"}) == []
    fetched = await api.get(f"/v1/Services/{service_sid}/Bindings/{first['sid']}")
    assert fetched.json()["identity"] == "bob"


async def test_same_address_on_another_channel_is_a_separate_binding(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    sms = await created(api, service_sid, "alice", "sms", "+14155550100")
    messenger = await created(api, service_sid, "alice", "facebook-messenger", "+14155550100")
    assert sms["sid"] != messenger["sid"]


# --- Credentials ----------------------------------------------------------------------------


async def gcm_credential(client: httpx.AsyncClient) -> str:
    response = await client.post("/v1/Credentials", data={"Type": "gcm", "ApiKey": "AIzaFake"})
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])


async def test_binding_credential_sid_is_kept(api: httpx.AsyncClient, service_sid: str) -> None:
    credential_sid = await gcm_credential(api)
    body = await created(api, service_sid, "alice", "gcm", FCM_TOKEN, CredentialSid=credential_sid)
    assert body["credential_sid"] == credential_sid


async def test_credential_of_another_account_is_rejected_with_52002(
    api: httpx.AsyncClient, other_api: httpx.AsyncClient, service_sid: str
) -> None:
    """Another tenant's credential is indistinguishable from one that does not exist."""
    foreign = await gcm_credential(other_api)
    response = await register(api, service_sid, "alice", "gcm", FCM_TOKEN, CredentialSid=foreign)
    assert_error(response, 400, 52002, "CredentialSid", foreign)


async def test_nonexistent_credential_is_rejected_with_52002(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    missing = "CR" + "0" * 32
    response = await register(api, service_sid, "alice", "gcm", FCM_TOKEN, CredentialSid=missing)
    assert_error(response, 400, 52002, "CredentialSid", "does not exist")


async def test_credential_of_the_wrong_type_is_rejected_with_52003(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    credential_sid = await gcm_credential(api)
    response = await register(api, service_sid, CredentialSid=credential_sid)
    assert_error(response, 400, 52003, "CredentialSid", "gcm", "apn")


async def test_malformed_credential_sid_is_rejected(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await register(api, service_sid, CredentialSid="CR123")
    assert_error(response, 400, 20001, "CredentialSid")


# --- Filters --------------------------------------------------------------------------------


@pytest.fixture
async def population(api: httpx.AsyncClient, service_sid: str) -> dict[str, str]:
    """Four bindings of three identities, by name."""
    specs = {
        "alice-apn": ("alice", "apn", APN_TOKEN, ["vip", "eu"]),
        "alice-sms": ("alice", "sms", "+14155550100", ["vip"]),
        "bob-fcm": ("bob", "fcm", FCM_TOKEN, ["eu"]),
        "carol-email": ("carol", "email", "carol@example.com", []),
    }
    return {
        name: (await created(api, service_sid, identity, kind, address, Tag=tags))["sid"]
        for name, (identity, kind, address, tags) in specs.items()
    }


async def test_list_without_filters_returns_every_binding_in_creation_order(
    api: httpx.AsyncClient, service_sid: str, population: dict[str, str]
) -> None:
    assert await list_sids(api, service_sid) == list(population.values())


async def test_identity_filter_accepts_several_identities(
    api: httpx.AsyncClient, service_sid: str, population: dict[str, str]
) -> None:
    found = await list_sids(api, service_sid, {"Identity": ["alice", "carol"]})
    assert found == [population["alice-apn"], population["alice-sms"], population["carol-email"]]


async def test_tag_filters_require_every_tag(
    api: httpx.AsyncClient, service_sid: str, population: dict[str, str]
) -> None:
    assert await list_sids(api, service_sid, {"Tag": ["vip", "eu"]}) == [population["alice-apn"]]
    assert await list_sids(api, service_sid, {"Tag": "eu"}) == [
        population["alice-apn"],
        population["bob-fcm"],
    ]


async def test_tag_all_matches_every_binding(
    api: httpx.AsyncClient, service_sid: str, population: dict[str, str]
) -> None:
    assert await list_sids(api, service_sid, {"Tag": "all"}) == list(population.values())


async def test_binding_type_names_are_built_in_tags(
    api: httpx.AsyncClient, service_sid: str, population: dict[str, str]
) -> None:
    assert await list_sids(api, service_sid, {"Tag": "sms"}) == [population["alice-sms"]]
    assert await list_sids(api, service_sid, {"Tag": ["vip", "apn"]}) == [population["alice-apn"]]
    assert await list_sids(api, service_sid, {"Tag": ["eu", "sms"]}) == []


async def test_built_in_tags_are_not_listed_in_a_bindings_tags(
    api: httpx.AsyncClient, service_sid: str, population: dict[str, str]
) -> None:
    fetched = await api.get(f"/v1/Services/{service_sid}/Bindings/{population['carol-email']}")
    assert fetched.json()["tags"] == []


async def test_five_tag_filters_are_accepted_and_six_rejected(
    api: httpx.AsyncClient, service_sid: str, population: dict[str, str]
) -> None:
    five = {"Tag": ["all", "vip", "eu", "apn", "vip"]}
    assert await list_sids(api, service_sid, five) == [population["alice-apn"]]
    response = await api.get(
        f"/v1/Services/{service_sid}/Bindings", params={"Tag": [f"t{n}" for n in range(6)]}
    )
    assert_error(response, 400, 20001, "'Tag'", "5")


async def creation_day(api: httpx.AsyncClient, service_sid: str, sid: str) -> date:
    response = await api.get(f"/v1/Services/{service_sid}/Bindings/{sid}")
    return date.fromisoformat(response.json()["date_created"][:10])


async def test_start_and_end_dates_are_inclusive_whole_days(
    api: httpx.AsyncClient, service_sid: str, population: dict[str, str]
) -> None:
    day = await creation_day(api, service_sid, population["alice-apn"])
    everyone = list(population.values())
    same_day = {"StartDate": day.isoformat(), "EndDate": day.isoformat()}
    assert await list_sids(api, service_sid, same_day) == everyone
    assert await list_sids(api, service_sid, {"StartDate": day.isoformat()}) == everyone
    assert await list_sids(api, service_sid, {"EndDate": day.isoformat()}) == everyone


async def test_dates_outside_the_range_exclude_bindings(
    api: httpx.AsyncClient, service_sid: str, population: dict[str, str]
) -> None:
    day = await creation_day(api, service_sid, population["alice-apn"])
    tomorrow, yesterday = day + timedelta(days=1), day - timedelta(days=1)
    assert await list_sids(api, service_sid, {"StartDate": tomorrow.isoformat()}) == []
    assert await list_sids(api, service_sid, {"EndDate": yesterday.isoformat()}) == []


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("StartDate", "2024-1-5"),
        ("StartDate", "2024-02-30"),
        ("EndDate", "05/01/2024"),
        ("EndDate", "2024-01-01T00:00:00Z"),
    ],
)
async def test_malformed_dates_are_rejected(
    api: httpx.AsyncClient, service_sid: str, parameter: str, value: str
) -> None:
    response = await api.get(f"/v1/Services/{service_sid}/Bindings", params={parameter: value})
    assert_error(response, 400, 20001, parameter, "YYYY-MM-DD")


# --- Pagination -----------------------------------------------------------------------------


@pytest.fixture
async def seven_bindings(api: httpx.AsyncClient, service_sid: str) -> list[str]:
    return [
        (await created(api, service_sid, f"user{n}", "apn", apn_token(n), Tag="paged"))["sid"]
        for n in range(7)
    ]


async def test_following_next_page_url_yields_every_binding_once_in_order(
    api: httpx.AsyncClient, service_sid: str, seven_bindings: list[str]
) -> None:
    url: str | None = f"/v1/Services/{service_sid}/Bindings?PageSize=3"
    seen: list[str] = []
    pages = 0
    while url is not None:
        response = await api.get(url)
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["bindings"]) <= 3
        assert body["meta"]["page"] == pages
        assert body["meta"]["page_size"] == 3
        assert body["meta"]["key"] == "bindings"
        seen += [item["sid"] for item in body["bindings"]]
        url = body["meta"]["next_page_url"]
        pages += 1
    assert pages == 3
    assert seen == seven_bindings


async def test_previous_page_url_returns_the_preceding_page(
    api: httpx.AsyncClient, service_sid: str, seven_bindings: list[str]
) -> None:
    first = (await api.get(f"/v1/Services/{service_sid}/Bindings", params={"PageSize": 3})).json()
    assert first["meta"]["previous_page_url"] is None
    second = (await api.get(first["meta"]["next_page_url"])).json()
    assert [item["sid"] for item in second["bindings"]] == seven_bindings[3:6]
    back = await api.get(second["meta"]["previous_page_url"])
    assert back.status_code == 200, back.text
    assert [item["sid"] for item in back.json()["bindings"]] == seven_bindings[:3]
    assert back.json()["meta"]["page"] == 0


async def test_page_number_selects_an_offset_page(
    api: httpx.AsyncClient, service_sid: str, seven_bindings: list[str]
) -> None:
    """The SDK's `page(page_number=…)` sends Page without a token."""
    response = await api.get(
        f"/v1/Services/{service_sid}/Bindings", params={"PageSize": 3, "Page": 2}
    )
    assert [item["sid"] for item in response.json()["bindings"]] == seven_bindings[6:]
    assert response.json()["meta"]["next_page_url"] is None


async def test_page_urls_are_absolute_on_the_requests_host_and_echo_filters(
    api: httpx.AsyncClient, service_sid: str, seven_bindings: list[str]
) -> None:
    """The SDK follows page URLs verbatim, so they must point back at this server."""
    response = await api.get(
        f"https://notify.example.org:8443/v1/Services/{service_sid}/Bindings",
        params={"Tag": "paged", "Identity": ["user1", "user2", "user3"], "PageSize": 2},
    )
    assert response.status_code == 200, response.text
    meta = response.json()["meta"]
    base = f"https://notify.example.org:8443/v1/Services/{service_sid}/Bindings?"
    for name in ("first_page_url", "next_page_url", "url"):
        assert meta[name].startswith(base), meta[name]
        query = httpx.URL(meta[name]).params
        assert query.get_list("Identity") == ["user1", "user2", "user3"]
        assert query["Tag"] == "paged"
        assert query["PageSize"] == "2"
    following = await api.get(meta["next_page_url"])
    assert [item["sid"] for item in following.json()["bindings"]] == [seven_bindings[3]]
    assert following.json()["bindings"][0]["url"].startswith("https://notify.example.org:8443/")


@pytest.mark.parametrize("size", ["0", "1001", "abc", "-1", "2.5"])
async def test_out_of_range_page_size_is_rejected(
    api: httpx.AsyncClient, service_sid: str, size: str
) -> None:
    response = await api.get(f"/v1/Services/{service_sid}/Bindings", params={"PageSize": size})
    assert_error(response, 400, 20001, "PageSize", "1 to 1000")


@pytest.mark.parametrize("size", ["1", "1000"])
async def test_page_size_bounds_are_accepted(
    api: httpx.AsyncClient, service_sid: str, size: str
) -> None:
    response = await api.get(f"/v1/Services/{service_sid}/Bindings", params={"PageSize": size})
    assert response.status_code == 200, response.text
    assert response.json()["meta"]["page_size"] == int(size)


@pytest.mark.parametrize("token", ["garbage", "PA", "PCX1", "PA-1"])
async def test_malformed_page_token_is_rejected(
    api: httpx.AsyncClient, service_sid: str, token: str
) -> None:
    response = await api.get(f"/v1/Services/{service_sid}/Bindings", params={"PageToken": token})
    assert_error(response, 400, 20001, "PageToken")


# --- Fetch and delete -----------------------------------------------------------------------


async def test_fetch_returns_the_created_binding(api: httpx.AsyncClient, service_sid: str) -> None:
    body = await created(api, service_sid, Tag="vip")
    fetched = await api.get(f"/v1/Services/{service_sid}/Bindings/{body['sid']}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == body


async def test_fetch_accepts_upper_case_sid_hex(api: httpx.AsyncClient, service_sid: str) -> None:
    """The SDK passes SIDs through as the caller wrote them."""
    sid = (await created(api, service_sid))["sid"]
    fetched = await api.get(f"/v1/Services/{service_sid}/Bindings/BS{sid[2:].upper()}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["sid"] == sid


async def test_fetch_of_unknown_or_malformed_sid_is_404(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    for sid in ("BS" + "0" * 32, "BS123", "IS" + "0" * 32):
        response = await api.get(f"/v1/Services/{service_sid}/Bindings/{sid}")
        assert_error(response, 404, 20404, f"/Services/{service_sid}/Bindings/{sid}")


async def test_delete_removes_the_binding(api: httpx.AsyncClient, service_sid: str) -> None:
    sid = (await created(api, service_sid))["sid"]
    url = f"/v1/Services/{service_sid}/Bindings/{sid}"
    deleted = await api.delete(url)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_error(await api.get(url), 404, 20404)
    assert_error(await api.delete(url), 404, 20404)
    assert await list_sids(api, service_sid) == []


async def test_deleted_address_can_be_registered_again_as_a_new_binding(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    sid = (await created(api, service_sid))["sid"]
    assert (await api.delete(f"/v1/Services/{service_sid}/Bindings/{sid}")).status_code == 204
    again = await created(api, service_sid)
    assert again["sid"] != sid


async def test_json_suffix_works_on_list_and_fetch(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """Older Twilio examples append `.json` to every resource URL."""
    sid = (await created(api, service_sid))["sid"]
    listed = await api.get(f"/v1/Services/{service_sid}/Bindings.json")
    assert listed.status_code == 200, listed.text
    assert [item["sid"] for item in listed.json()["bindings"]] == [sid]
    fetched = await api.get(f"/v1/Services/{service_sid}/Bindings/{sid}.json")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["sid"] == sid


# --- Isolation ------------------------------------------------------------------------------


async def test_other_account_cannot_see_the_service_or_its_bindings(
    api: httpx.AsyncClient, other_api: httpx.AsyncClient, service_sid: str
) -> None:
    """Another tenant gets exactly what a nonexistent resource gives: 404."""
    sid = (await created(api, service_sid))["sid"]
    assert_error(await other_api.get(f"/v1/Services/{service_sid}"), 404, 20404)
    assert_error(await other_api.get(f"/v1/Services/{service_sid}/Bindings"), 404, 20404)
    assert_error(await other_api.get(f"/v1/Services/{service_sid}/Bindings/{sid}"), 404, 20404)
    assert_error(await other_api.delete(f"/v1/Services/{service_sid}/Bindings/{sid}"), 404, 20404)
    assert_error(await register(other_api, service_sid, "mallory"), 404, 20404)
    assert await list_sids(api, service_sid) == [sid]


async def test_binding_is_not_reachable_through_another_service(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    sid = (await created(api, service_sid))["sid"]
    other = await api.post("/v1/Services", data={"FriendlyName": "second"})
    other_sid = other.json()["sid"]
    assert_error(await api.get(f"/v1/Services/{other_sid}/Bindings/{sid}"), 404, 20404)
    assert_error(await api.delete(f"/v1/Services/{other_sid}/Bindings/{sid}"), 404, 20404)
    assert await list_sids(api, other_sid) == []
    assert (await api.get(f"/v1/Services/{service_sid}/Bindings/{sid}")).status_code == 200


async def test_same_address_in_two_services_gives_independent_bindings(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """Moving an address between identities happens within one service only."""
    other_sid = (await api.post("/v1/Services", data={"FriendlyName": "second"})).json()["sid"]
    first = await created(api, service_sid, "alice")
    second = await created(api, other_sid, "bob")
    assert first["sid"] != second["sid"]
    assert await list_sids(api, service_sid, {"Identity": "alice"}) == [first["sid"]]
