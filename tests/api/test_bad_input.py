"""Hostile and broken requests across resources: each gets a Twilio error, never a 500.

Whatever a client sends — oversized, mis-encoded, mis-typed, SQL-looking, at a route that does
not exist — the answer is `{"code", "message", "more_info", "status"}` with a 4xx status, and the
account's stored data is exactly as it was before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clarion import addresses

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ONE_MB = 1024 * 1024
SQL_INJECTION = "'; DROP TABLE binding; --"
# Characters that mean something to SQL string literals or LIKE patterns.
SQL_METACHARACTERS = [SQL_INJECTION, "%", "_", "\\", "a%b_c\\d'e\"f", "%%", "\\%"]


def assert_twilio_error(response: httpx.Response, status: int, code: int | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"code", "message", "more_info", "status"}
    assert body["status"] == status
    assert isinstance(body["code"], int)
    assert body["message"]
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{body['code']}"
    if code is not None:
        assert body["code"] == code, body


async def create_binding(
    api: httpx.AsyncClient, service_sid: str, identity: str, address: str, tags: list[str]
) -> dict[str, Any]:
    response = await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={"Identity": identity, "BindingType": "sms", "Address": address, "Tag": tags},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def stored_state(api: httpx.AsyncClient, service_sid: str) -> dict[str, Any]:
    """Everything the account can read back: compared before and after each bad request."""
    state: dict[str, Any] = {}
    for path in (
        "/v1/Services",
        "/v1/Credentials",
        f"/v1/Services/{service_sid}/Bindings",
        f"/v1/Services/{service_sid}/Users",
        f"/v1/Services/{service_sid}/Segments",
    ):
        response = await api.get(path, params={"PageSize": 1000})
        assert response.status_code == 200, response.text
        body = response.json()
        state[path] = body[body["meta"]["key"]]
    return state


@pytest.fixture
async def populated(api: httpx.AsyncClient, service_sid: str) -> str:
    """A service with a few bindings, so "nothing changed" is a claim about real rows."""
    await create_binding(api, service_sid, "alice", "+14155550101", ["vip"])
    await create_binding(api, service_sid, "bob", "+14155550102", ["eu", "beta"])
    return service_sid


# --- Body size and encoding -------------------------------------------------------------------


WRITE_PATHS = [
    "/v1/Services",
    "/v1/Services/{IS}",
    "/v1/Credentials",
    "/v1/Services/{IS}/Bindings",
    "/v1/Services/{IS}/Notifications",
    "/v1/Services/{IS}/Users",
]


async def test_body_over_one_megabyte_is_413(api: httpx.AsyncClient, service_sid: str) -> None:
    body = b"FriendlyName=" + b"a" * ONE_MB
    for path in WRITE_PATHS:
        response = await api.post(path.replace("{IS}", service_sid), content=body, headers=FORM)

        assert_twilio_error(response, 413, 20001)
        assert "1 MB" in response.json()["message"], path


async def test_chunked_body_over_one_megabyte_is_413(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """Without a Content-Length the limit must still hold while the body streams in."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"Identity=alice&BindingType=sms&Address=%2B14155550100&Tag="
        for _ in range(20):
            yield b"a" * 65536

    response = await api.post(
        f"/v1/Services/{service_sid}/Bindings", content=chunks(), headers=FORM
    )

    assert_twilio_error(response, 413, 20001)


async def test_body_of_exactly_one_megabyte_is_not_too_large(api: httpx.AsyncClient) -> None:
    """The limit is inclusive: a 1 MB body is parsed (and fails only on its content)."""
    prefix = b"FriendlyName=ok&Padding="
    body = prefix + b"a" * (ONE_MB - len(prefix))
    response = await api.post("/v1/Services", content=body, headers=FORM)

    assert response.status_code == 201, response.text


async def test_json_body_is_415(api: httpx.AsyncClient, service_sid: str) -> None:
    for path in WRITE_PATHS:
        response = await api.post(path.replace("{IS}", service_sid), json={"FriendlyName": "x"})

        assert_twilio_error(response, 415, 20001)
        assert "application/x-www-form-urlencoded" in response.json()["message"], path


async def test_body_without_content_type_is_415(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/Services", content=b"FriendlyName=x")

    assert_twilio_error(response, 415, 20001)


async def test_form_content_type_with_charset_is_accepted(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/Services",
        content=b"FriendlyName=x",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )

    assert response.status_code == 201, response.text


async def test_invalid_utf8_in_the_body_is_400(api: httpx.AsyncClient) -> None:
    for body in (
        b"FriendlyName=%ff",  # percent-encoded
        b"FriendlyName=\xff\xfe",  # raw
        b"FriendlyName=%ED%A0%80",  # an encoded UTF-16 surrogate
        b"%ff=x",  # in a parameter name
    ):
        response = await api.post("/v1/Services", content=body, headers=FORM)

        assert_twilio_error(response, 400, 20001)
        assert "UTF-8" in response.json()["message"], body


async def test_invalid_utf8_in_the_query_string_is_400(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/Services?FriendlyName=%ff")

    assert_twilio_error(response, 400, 20001)
    assert "UTF-8" in response.json()["message"]


async def test_nul_character_in_a_value_is_400(api: httpx.AsyncClient, service_sid: str) -> None:
    """PostgreSQL cannot store NUL in text; it must be refused before reaching the driver."""
    for path, body in (
        ("/v1/Services", b"FriendlyName=a%00b"),
        ("/v1/Services/{IS}", b"FriendlyName=a%00b"),
        ("/v1/Services/{IS}/Bindings", b"Identity=a%00&BindingType=sms&Address=%2B14155550100"),
        ("/v1/Services/{IS}/Bindings", b"Identity=a&BindingType=sms&Address=%2B1415555010%00"),
        ("/v1/Services/{IS}/Users", b"Identity=%00"),
        ("/v1/Services/{IS}/Notifications", b"Identity=alice&Body=hi%00"),
        ("/v1/Credentials", b"Type=fcm&Secret=%00"),
    ):
        response = await api.post(path.replace("{IS}", service_sid), content=body, headers=FORM)

        assert_twilio_error(response, 400, 20001)
        assert "NUL" in response.json()["message"], body


async def test_nul_character_in_a_filter_is_400(api: httpx.AsyncClient, service_sid: str) -> None:
    response = await api.get(f"/v1/Services/{service_sid}/Bindings?Identity=a%00")

    assert_twilio_error(response, 400, 20001)


# --- SQL metacharacters are data --------------------------------------------------------------


async def test_sql_metacharacters_in_friendly_name_are_stored_verbatim(
    api: httpx.AsyncClient,
) -> None:
    for text in SQL_METACHARACTERS:
        created = await api.post("/v1/Services", data={"FriendlyName": text})
        assert created.status_code == 201, created.text
        assert created.json()["friendly_name"] == text

        fetched = await api.get(f"/v1/Services/{created.json()['sid']}")
        assert fetched.json()["friendly_name"] == text


async def test_friendly_name_filter_matches_literally(api: httpx.AsyncClient) -> None:
    """`%` and `_` are not wildcards: the filter finds only the service named exactly that."""
    names = ["%", "_", "abc", SQL_INJECTION, "\\"]
    sids = {}
    for name in names:
        response = await api.post("/v1/Services", data={"FriendlyName": name})
        assert response.status_code == 201, response.text
        sids[name] = response.json()["sid"]

    for name in names:
        listed = await api.get("/v1/Services", params={"FriendlyName": name})
        assert listed.status_code == 200, listed.text
        assert [s["sid"] for s in listed.json()["services"]] == [sids[name]], name


async def test_sql_metacharacters_in_identity_and_tag_are_stored_verbatim(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    for index, text in enumerate(SQL_METACHARACTERS):
        binding = await create_binding(api, service_sid, text, f"+1415555020{index}", [text])
        assert binding["identity"] == text
        assert binding["tags"] == [text]

        fetched = await api.get(f"/v1/Services/{service_sid}/Bindings/{binding['sid']}")
        assert fetched.json()["identity"] == text
        assert fetched.json()["tags"] == [text]


async def test_tag_filter_with_wildcard_characters_matches_literally(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    percent = await create_binding(api, service_sid, "p", "+14155550101", ["%"])
    underscore = await create_binding(api, service_sid, "u", "+14155550102", ["_"])
    await create_binding(api, service_sid, "o", "+14155550103", ["other", "a_b", "x%y"])

    by_percent = await api.get(f"/v1/Services/{service_sid}/Bindings", params={"Tag": "%"})
    by_underscore = await api.get(f"/v1/Services/{service_sid}/Bindings", params={"Tag": "_"})

    assert [b["sid"] for b in by_percent.json()["bindings"]] == [percent["sid"]]
    assert [b["sid"] for b in by_underscore.json()["bindings"]] == [underscore["sid"]]


async def test_identity_filter_with_wildcard_characters_matches_literally(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    percent = await create_binding(api, service_sid, "%", "+14155550101", [])
    await create_binding(api, service_sid, "alice", "+14155550102", [])
    await create_binding(api, service_sid, "a", "+14155550103", [])

    for identity, expected in (("%", [percent["sid"]]), ("_", []), ("a%", [])):
        listed = await api.get(
            f"/v1/Services/{service_sid}/Bindings", params={"Identity": identity}
        )
        assert listed.status_code == 200, listed.text
        assert [b["sid"] for b in listed.json()["bindings"]] == expected, identity


async def test_sql_injection_in_a_filter_matches_nothing_and_drops_nothing(
    api: httpx.AsyncClient, populated: str
) -> None:
    before = await stored_state(api, populated)

    listed = await api.get(f"/v1/Services/{populated}/Bindings", params={"Tag": SQL_INJECTION})

    assert listed.status_code == 200, listed.text
    assert listed.json()["bindings"] == []
    assert await stored_state(api, populated) == before


async def test_user_identity_with_metacharacters_round_trips_through_the_path(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    identity = "50% off_\\'"
    created = await api.post(f"/v1/Services/{service_sid}/Users", data={"Identity": identity})
    assert created.status_code == 201, created.text

    fetched = await api.get(f"/v1/Services/{service_sid}/Users/{quote(identity, safe='')}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["identity"] == identity
    wildcard = await api.get(f"/v1/Services/{service_sid}/Users/{quote('50%', safe='')}")
    assert_twilio_error(wildcard, 404, 20404)


@pytest.mark.parametrize("identity", ["a/b", "a%2Fb", "a/Bindings", "50%", "ü/ß"])
async def test_user_url_of_an_identity_with_a_slash_or_percent_can_be_followed(
    api: httpx.AsyncClient, service_sid: str, identity: str
) -> None:
    """Clarion returns the user's `url` with the identity escaped; that URL must work, and
    must reach that user only (`a/Bindings` is not user `a`'s binding list)."""
    created = await api.post(f"/v1/Services/{service_sid}/Users", data={"Identity": identity})
    assert created.status_code == 201, created.text
    binding = await api.post(
        created.json()["links"]["bindings"],
        data={"BindingType": "sms", "Address": "+14155550100"},
    )
    assert binding.status_code == 201, binding.text

    fetched = await api.get(created.json()["url"])
    bindings = await api.get(created.json()["links"]["bindings"])

    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["identity"] == identity
    assert [b["identity"] for b in bindings.json()["bindings"]] == [identity]


# --- Oversized values -------------------------------------------------------------------------


async def test_10000_character_identity_on_binding_create_is_400(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={"Identity": "x" * 10_000, "BindingType": "sms", "Address": "+14155550100"},
    )

    assert_twilio_error(response, 400, 20001)
    assert "Identity" in response.json()["message"]


async def test_10000_character_identity_on_user_create_is_400(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await api.post(f"/v1/Services/{service_sid}/Users", data={"Identity": "x" * 10_000})

    assert_twilio_error(response, 400, 20001)


async def test_10000_character_identity_filter_is_400(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await api.get(
        f"/v1/Services/{service_sid}/Bindings", params={"Identity": "x" * 10_000}
    )

    assert_twilio_error(response, 400, 20001)


async def test_10000_character_identity_in_the_path_is_not_a_server_error(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await api.get(f"/v1/Services/{service_sid}/Users/{'x' * 10_000}")

    assert response.status_code in (400, 404), response.text
    assert_twilio_error(response, response.status_code)


async def test_overlong_friendly_name_is_400(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/Services", data={"FriendlyName": "x" * 65})

    assert_twilio_error(response, 400, 20001)
    assert "FriendlyName" in response.json()["message"]


# --- Paging parameters ------------------------------------------------------------------------

LIST_PATHS = [
    "/v1/Services",
    "/v1/Credentials",
    "/v1/Services/{IS}/Bindings",
    "/v1/Services/{IS}/Users",
    "/v1/Services/{IS}/Segments",
]


BAD_PAGE_SIZES = ["0", "1001", "-1", "99999999999999999999999", "x", "1.5", ""]
BAD_PAGE_TOKENS = ["abc", "PA", "PAx1", "PC12", "PA-1", "PA" + "9" * 30, "' OR 1=1"]


@pytest.mark.parametrize("path", LIST_PATHS)
async def test_page_size_outside_1_to_1000_is_400(
    api: httpx.AsyncClient, service_sid: str, path: str
) -> None:
    for size in BAD_PAGE_SIZES:
        response = await api.get(path.replace("{IS}", service_sid), params={"PageSize": size})

        assert_twilio_error(response, 400, 20001)
        assert "PageSize" in response.json()["message"], size


@pytest.mark.parametrize("page", ["1000000000", "99999999999999999999", "-1", "x"])
async def test_unreachable_or_malformed_page_without_token_is_400(
    api: httpx.AsyncClient, service_sid: str, page: str
) -> None:
    response = await api.get(f"/v1/Services/{service_sid}/Bindings", params={"Page": page})

    assert_twilio_error(response, 400, 20001)
    assert "Page" in response.json()["message"]


@pytest.mark.parametrize("path", LIST_PATHS)
async def test_random_page_token_is_400(
    api: httpx.AsyncClient, service_sid: str, path: str
) -> None:
    for token in BAD_PAGE_TOKENS:
        response = await api.get(path.replace("{IS}", service_sid), params={"PageToken": token})

        assert_twilio_error(response, 400, 20001)
        assert "PageToken" in response.json()["message"], token


async def test_well_formed_page_token_past_the_end_is_an_empty_page(
    api: httpx.AsyncClient, populated: str
) -> None:
    response = await api.get(
        f"/v1/Services/{populated}/Bindings", params={"PageToken": "PA" + "9" * 18}
    )

    assert response.status_code == 200, response.text
    assert response.json()["bindings"] == []


async def test_page_sizes_at_the_limits_are_accepted(
    api: httpx.AsyncClient, populated: str
) -> None:
    """The counterpart of the 400s: 1 and 1000 are valid sizes."""
    for size in (1, 1000):
        response = await api.get(f"/v1/Services/{populated}/Bindings", params={"PageSize": size})
        assert response.status_code == 200, response.text
        assert response.json()["meta"]["page_size"] == size


# --- Paths and methods ------------------------------------------------------------------------


MALFORMED_SID_PATHS = [
    "/v1/Services/IS123",
    "/v1/Services/nope",
    "/v1/Services/" + "CR" + "0" * 32,
    "/v1/Services/IS" + "g" * 32,
    "/v1/Services/IS" + "0" * 33,
    "/v1/Credentials/CRzz",
    "/v1/Credentials/" + "IS" + "0" * 32,
    "/v1/Services/{IS}/Bindings/BS123",
    "/v1/Services/{IS}/Bindings/" + "IS" + "0" * 32,
    "/v1/Services/%27%3B%20DROP%20TABLE%20binding%3B%20--",
    "/v1/Services/IS123/Bindings",
    "/v1/Services/IS123/Users/alice",
]


async def test_malformed_sid_in_the_path_is_404(api: httpx.AsyncClient, service_sid: str) -> None:
    for path in MALFORMED_SID_PATHS:
        response = await api.get(path.replace("{IS}", service_sid))

        assert_twilio_error(response, 404, 20404)
        assert "was not found" in response.json()["message"], path


async def test_malformed_sid_is_404_for_every_method(api: httpx.AsyncClient) -> None:
    for method in ("GET", "POST", "DELETE"):
        response = await api.request(
            method, "/v1/Services/IS123", content=b"FriendlyName=x", headers=FORM
        )

        assert_twilio_error(response, 404, 20404)


async def test_unknown_route_is_404_twilio_json(api: httpx.AsyncClient, service_sid: str) -> None:
    for path in (
        "/v1/Nope",
        "/v2/Services",
        "/",
        "/v1",
        "/v1/Services/{IS}/Nope",
        "/v1/Services/{IS}/Notifications/x",
    ):
        response = await api.get(path.replace("{IS}", service_sid))

        assert_twilio_error(response, 404, 20404)
        assert "was not found" in response.json()["message"], path


async def test_unknown_route_is_404_even_without_credentials(
    app_transport: httpx.ASGITransport,
) -> None:
    async with httpx.AsyncClient(transport=app_transport, base_url="http://testserver") as client:
        response = await client.get("/v1/Nope")

    assert_twilio_error(response, 404, 20404)


async def test_wrong_method_is_405_twilio_json(api: httpx.AsyncClient, service_sid: str) -> None:
    for method, path in (
        ("PUT", "/v1/Services"),
        ("DELETE", "/v1/Services"),
        ("PATCH", "/v1/Services/{IS}"),
        ("PUT", "/v1/Credentials"),
        ("GET", "/v1/Services/{IS}/Notifications"),
        ("DELETE", "/v1/Services/{IS}/Notifications"),
        ("POST", "/v1/Services/{IS}/Segments"),
    ):
        response = await api.request(method, path.replace("{IS}", service_sid))

        assert_twilio_error(response, 405, 20004)
        assert method in response.json()["message"], path


# --- Nothing changes after a bad request ------------------------------------------------------

BAD_WRITES: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("POST", "/v1/Services", b"FriendlyName=" + b"a" * (ONE_MB + 1), FORM),
    ("POST", "/v1/Services", b'{"FriendlyName": "x"}', {"Content-Type": "application/json"}),
    ("POST", "/v1/Services", b"FriendlyName=%ff", FORM),
    ("POST", "/v1/Services/{IS}", b"FriendlyName=a%00", FORM),
    (
        "POST",
        "/v1/Services/{IS}/Bindings",
        b"Identity=alice&BindingType=sms&Address=%2B14155550101&Tag=" + b"t" * 65,
        FORM,
    ),
    ("POST", "/v1/Services/{IS}/Bindings", b"Identity=alice&BindingType=sms&Address=nope", FORM),
    ("POST", "/v1/Services/{IS}/Bindings", b"Identity=carol&BindingType=pigeon&Address=x", FORM),
    ("POST", "/v1/Services/{IS}/Users", b"Identity=" + b"x" * 10_000, FORM),
    ("POST", "/v1/Services/{IS}/Notifications", b"Body=hi", FORM),
    ("DELETE", "/v1/Services/IS123", b"", {}),
    ("DELETE", "/v1/Services/{IS}/Bindings/BS123", b"", {}),
    ("PUT", "/v1/Services", b"FriendlyName=x", FORM),
    ("POST", "/v1/Nope", b"FriendlyName=x", FORM),
    ("POST", "/v1/Services/{IS}", b"FriendlyName=renamed&ApnCredentialSid=CR" + b"0" * 32, FORM),
]


async def test_a_bad_request_leaves_the_accounts_data_unchanged(
    api: httpx.AsyncClient, populated: str
) -> None:
    before = await stored_state(api, populated)
    for method, path, content, headers in BAD_WRITES:
        response = await api.request(
            method, path.replace("{IS}", populated), content=content, headers=headers
        )

        assert 400 <= response.status_code < 500, (path, response.text)
        assert_twilio_error(response, response.status_code)
        assert await stored_state(api, populated) == before, (method, path, content[:80])


# --- Random input -----------------------------------------------------------------------------

FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
form_values = st.one_of(st.text(max_size=80), st.sampled_from(["", "\x00", "%", "+14155550100"]))


@FUZZ
@given(
    identity=form_values,
    binding_type=st.one_of(st.sampled_from(addresses.BINDING_TYPES), st.text(max_size=20)),
    address=form_values,
    tags=st.lists(form_values, max_size=25),
    extra=st.dictionaries(st.text(max_size=20), form_values, max_size=3),
)
async def test_random_form_values_on_binding_create_never_cause_a_server_error(
    api: httpx.AsyncClient,
    service_sid: str,
    identity: str,
    binding_type: str,
    address: str,
    tags: list[str],
    extra: dict[str, str],
) -> None:
    data: dict[str, Any] = {
        **extra,
        "Identity": identity,
        "BindingType": binding_type,
        "Address": address,
        "Tag": tags,
    }
    response = await api.post(f"/v1/Services/{service_sid}/Bindings", data=data)

    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_twilio_error(response, response.status_code)


@FUZZ
@given(body=st.binary(max_size=300))
async def test_random_body_bytes_on_binding_create_never_cause_a_server_error(
    api: httpx.AsyncClient, service_sid: str, body: bytes
) -> None:
    response = await api.post(f"/v1/Services/{service_sid}/Bindings", content=body, headers=FORM)

    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_twilio_error(response, response.status_code)
