"""HTTP Basic authentication: account SID + auth token, or API key SID + secret (§2.2).

Every failure looks the same — 401 with Twilio's 20003 body — so a caller learns nothing about
which part was wrong or whether an account exists.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection

from clarion.errors import ClarionError
from clarion.store import accounts
from clarion.store.database import Database
from clarion.vault import Vault

UNAUTHENTICATED = {
    "code": 20003,
    "message": "Authenticate",
    "more_info": "https://www.twilio.com/docs/errors/20003",
    "status": 401,
}


@pytest.fixture
async def anonymous(app_transport: httpx.ASGITransport) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends whatever Authorization header a test gives it, or none."""
    async with httpx.AsyncClient(transport=app_transport, base_url="http://testserver") as client:
        yield client


def basic(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def assert_unauthenticated(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == UNAUTHENTICATED
    assert response.headers["www-authenticate"].lower().startswith("basic")


async def new_api_key(database: Database, account_sid: str) -> accounts.Issued:
    def op(conn: Connection) -> accounts.Issued:
        return accounts.create_api_key(conn, account_sid=account_sid, friendly_name="ci")

    return await database.write(op)


# --- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/Services"),
        ("POST", "/v1/Services"),
        ("GET", "/v1/Credentials"),
        ("POST", "/v1/Credentials"),
        ("GET", "/v1/Services/IS00000000000000000000000000000000"),
        ("DELETE", "/v1/Credentials/CR00000000000000000000000000000000"),
        ("POST", "/v1/Services/IS00000000000000000000000000000000/Notifications"),
        ("GET", "/v1/Services/IS00000000000000000000000000000000/Bindings"),
    ],
)
async def test_request_without_authorization_header_is_401_with_twilio_body(
    anonymous: httpx.AsyncClient, method: str, path: str
) -> None:
    assert_unauthenticated(await anonymous.request(method, path))


async def test_unauthenticated_request_learns_nothing_about_existing_services(
    anonymous: httpx.AsyncClient, service_sid: str
) -> None:
    """An existing and a nonexistent service both answer 401, not 404 vs 200."""
    assert_unauthenticated(await anonymous.get(f"/v1/Services/{service_sid}"))


async def test_wrong_auth_token_is_401(anonymous: httpx.AsyncClient, account: Any) -> None:
    response = await anonymous.get("/v1/Services", headers=basic(account.sid, "0" * 32))
    assert_unauthenticated(response)


async def test_empty_auth_token_is_401(anonymous: httpx.AsyncClient, account: Any) -> None:
    assert_unauthenticated(await anonymous.get("/v1/Services", headers=basic(account.sid, "")))


async def test_another_accounts_token_is_401(
    anonymous: httpx.AsyncClient, account: Any, database: Database, vault: Vault
) -> None:
    def op(conn: Connection) -> accounts.Issued:
        return accounts.create_account(conn, vault, friendly_name="other")

    other = await database.write(op)
    response = await anonymous.get("/v1/Services", headers=basic(account.sid, other.secret))
    assert_unauthenticated(response)


async def test_unknown_account_sid_is_401(anonymous: httpx.AsyncClient, account: Any) -> None:
    unknown = "AC" + secrets.token_hex(16)
    assert_unauthenticated(
        await anonymous.get("/v1/Services", headers=basic(unknown, account.token))
    )


@pytest.mark.parametrize(
    "username",
    ["", "AC123", "US" + "0" * 32, "not-a-sid", "AC" + "g" * 32],
)
async def test_username_that_is_not_an_account_or_key_sid_is_401(
    anonymous: httpx.AsyncClient, account: Any, username: str
) -> None:
    assert_unauthenticated(
        await anonymous.get("/v1/Services", headers=basic(username, account.token))
    )


@pytest.mark.parametrize(
    "header",
    [
        "Basic !!!not-base64!!!",
        "Basic QUM=x",  # trailing garbage after padding
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),  # not UTF-8
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic",
        "Basic ",
    ],
    ids=["not-base64", "bad-padding", "not-utf8", "no-colon", "no-credentials", "empty"],
)
async def test_malformed_basic_credentials_are_401(
    anonymous: httpx.AsyncClient, header: str
) -> None:
    response = await anonymous.get("/v1/Services", headers={"Authorization": header})
    assert_unauthenticated(response)


@pytest.mark.parametrize("scheme", ["Bearer", "Digest", "Token"])
async def test_non_basic_scheme_is_401(
    anonymous: httpx.AsyncClient, account: Any, scheme: str
) -> None:
    """Even when the rest of the header carries valid Basic credentials."""
    encoded = base64.b64encode(f"{account.sid}:{account.token}".encode()).decode()
    response = await anonymous.get("/v1/Services", headers={"Authorization": f"{scheme} {encoded}"})
    assert_unauthenticated(response)


# --- successes ------------------------------------------------------------------------------


async def test_account_sid_and_token_authenticate(
    anonymous: httpx.AsyncClient, account: Any
) -> None:
    response = await anonymous.get("/v1/Services", headers=basic(account.sid, account.token))
    assert response.status_code == 200, response.text


async def test_basic_scheme_name_is_case_insensitive(
    anonymous: httpx.AsyncClient, account: Any
) -> None:
    encoded = base64.b64encode(f"{account.sid}:{account.token}".encode()).decode()
    response = await anonymous.get("/v1/Services", headers={"Authorization": f"basic {encoded}"})
    assert response.status_code == 200, response.text


async def test_upper_case_hex_in_account_sid_is_accepted(
    anonymous: httpx.AsyncClient, account: Any
) -> None:
    """The SDKs accept such SIDs from users, and pass them through as the username."""
    username = "AC" + account.sid[2:].upper()
    response = await anonymous.post(
        "/v1/Services", data={"FriendlyName": "upper"}, headers=basic(username, account.token)
    )
    assert response.status_code == 201, response.text
    assert response.json()["account_sid"] == account.sid


async def test_api_key_authenticates_with_its_secret(
    anonymous: httpx.AsyncClient, account: Any, database: Database
) -> None:
    key = await new_api_key(database, account.sid)
    assert key.sid.startswith("SK")
    response = await anonymous.get("/v1/Services", headers=basic(key.sid, key.secret))
    assert response.status_code == 200, response.text


async def test_api_key_with_wrong_secret_is_401(
    anonymous: httpx.AsyncClient, account: Any, database: Database
) -> None:
    key = await new_api_key(database, account.sid)
    assert_unauthenticated(await anonymous.get("/v1/Services", headers=basic(key.sid, "x" * 64)))
    # The account's auth token is not the key's secret either.
    assert_unauthenticated(
        await anonymous.get("/v1/Services", headers=basic(key.sid, account.token))
    )


async def test_api_key_secret_does_not_authenticate_as_the_account(
    anonymous: httpx.AsyncClient, account: Any, database: Database
) -> None:
    key = await new_api_key(database, account.sid)
    assert_unauthenticated(
        await anonymous.get("/v1/Services", headers=basic(account.sid, key.secret))
    )


async def test_api_key_sees_the_resources_of_its_account(
    anonymous: httpx.AsyncClient,
    api: httpx.AsyncClient,
    other_api: httpx.AsyncClient,
    account: Any,
    database: Database,
) -> None:
    key = await new_api_key(database, account.sid)
    as_key = basic(key.sid, key.secret)
    service = (await api.post("/v1/Services", data={"FriendlyName": "by token"})).json()
    await other_api.post("/v1/Services", data={"FriendlyName": "other account"})

    listed = await anonymous.get("/v1/Services", headers=as_key)
    assert [item["sid"] for item in listed.json()["services"]] == [service["sid"]]
    assert (await anonymous.get(f"/v1/Services/{service['sid']}", headers=as_key)).json() == service

    created = await anonymous.post(
        "/v1/Credentials", data={"Type": "gcm", "ApiKey": "AIza-key"}, headers=as_key
    )
    assert created.status_code == 201, created.text
    assert created.json()["account_sid"] == account.sid
    fetched = await api.get(f"/v1/Credentials/{created.json()['sid']}")
    assert fetched.json() == created.json()


async def test_api_key_sid_with_upper_case_hex_is_accepted(
    anonymous: httpx.AsyncClient, account: Any, database: Database
) -> None:
    key = await new_api_key(database, account.sid)
    username = "SK" + key.sid[2:].upper()
    response = await anonymous.get("/v1/Services", headers=basic(username, key.secret))
    assert response.status_code == 200, response.text


async def test_api_key_for_unknown_account_cannot_be_created(
    database: Database,
) -> None:
    with pytest.raises(ClarionError) as raised:
        await new_api_key(database, "AC" + secrets.token_hex(16))
    assert raised.value.code == 20404
