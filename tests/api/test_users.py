"""Legacy Users, UserBindings, SegmentMemberships and Segments (Notify beta, 2017-2018).

Twilio dropped these from its SDKs but still names them in every Service's `links`; apps written
against the beta API call them with an identity in the path. A user exists once created
explicitly or once its identity registers a binding.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from assertions import assert_error

APN_TOKEN = "ab" * 32


async def create_user(
    api: httpx.AsyncClient, service_sid: str, identity: str, segments: list[str] | None = None
) -> dict[str, Any]:
    response = await api.post(
        f"/v1/Services/{service_sid}/Users",
        data={"Identity": identity, "Segment": segments or []},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def register(
    api: httpx.AsyncClient, service_sid: str, identity: str, address: str = APN_TOKEN
) -> dict[str, Any]:
    response = await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={"Identity": identity, "BindingType": "apn", "Address": address},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def listed_identities(
    api: httpx.AsyncClient, service_sid: str, params: Any = None
) -> list[str]:
    response = await api.get(f"/v1/Services/{service_sid}/Users", params=params)
    assert response.status_code == 200, response.text
    assert response.json()["meta"]["key"] == "users"
    return [item["identity"] for item in response.json()["users"]]


# --- Users ----------------------------------------------------------------------------------


async def test_create_user_returns_the_legacy_user_shape(
    api: httpx.AsyncClient, service_sid: str, account: Any
) -> None:
    body = await create_user(api, service_sid, "alice", ["vip", "beta"])
    user_url = f"http://testserver/v1/Services/{service_sid}/Users/alice"
    assert body["sid"].startswith("US")
    assert len(body["sid"]) == 34
    assert body["account_sid"] == account.sid
    assert body["service_sid"] == service_sid
    assert body["identity"] == "alice"
    assert sorted(body["segments"]) == ["beta", "vip"]
    assert body["url"] == user_url
    assert body["links"] == {
        "bindings": f"{user_url}/Bindings",
        "segment_memberships": f"{user_url}/SegmentMemberships",
    }
    assert body["date_created"].endswith("Z")
    assert body["date_updated"].endswith("Z")


async def test_create_user_without_segments(api: httpx.AsyncClient, service_sid: str) -> None:
    assert (await create_user(api, service_sid, "alice"))["segments"] == []


async def test_create_user_requires_identity(api: httpx.AsyncClient, service_sid: str) -> None:
    response = await api.post(f"/v1/Services/{service_sid}/Users", data={"Segment": "vip"})
    assert_error(response, 400, 20001, "Identity")


async def test_user_may_be_in_at_most_twenty_segments(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """Twilio: "Maximum 20 Segments per User"."""
    response = await api.post(
        f"/v1/Services/{service_sid}/Users",
        data={"Identity": "alice", "Segment": [f"s{n}" for n in range(21)]},
    )
    assert_error(response, 400, 20001, "Segment", "20")


async def test_creating_an_existing_user_conflicts_with_52304(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    await create_user(api, service_sid, "alice")
    response = await api.post(f"/v1/Services/{service_sid}/Users", data={"Identity": "alice"})
    assert_error(response, 409, 52304, "alice", "already exists")


async def test_registering_a_binding_creates_the_user_implicitly(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    await register(api, service_sid, "bob")
    assert await listed_identities(api, service_sid) == ["bob"]
    fetched = await api.get(f"/v1/Services/{service_sid}/Users/bob")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["sid"].startswith("US")
    assert fetched.json()["segments"] == []


async def test_creating_a_user_implied_by_a_binding_conflicts_with_52304(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """Twilio's documented 52304 case: the user was created implicitly by create-binding."""
    await register(api, service_sid, "bob")
    response = await api.post(f"/v1/Services/{service_sid}/Users", data={"Identity": "bob"})
    assert_error(response, 409, 52304, "bob")


async def test_list_users_filters_by_identity(api: httpx.AsyncClient, service_sid: str) -> None:
    for identity in ("alice", "bob", "carol"):
        await create_user(api, service_sid, identity)
    assert await listed_identities(api, service_sid) == ["alice", "bob", "carol"]
    found = await listed_identities(api, service_sid, {"Identity": ["carol", "alice"]})
    assert found == ["alice", "carol"]
    assert await listed_identities(api, service_sid, {"Identity": "dave"}) == []


async def test_list_users_filters_by_segment(api: httpx.AsyncClient, service_sid: str) -> None:
    await create_user(api, service_sid, "alice", ["vip"])
    await create_user(api, service_sid, "bob", ["beta"])
    await create_user(api, service_sid, "carol", ["vip", "beta"])
    assert await listed_identities(api, service_sid, {"Segment": "vip"}) == ["alice", "carol"]
    assert await listed_identities(api, service_sid, {"Segment": "nobody"}) == []


async def test_list_users_pages_through_next_page_url(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    for identity in ("u1", "u2", "u3"):
        await create_user(api, service_sid, identity)
    first = (await api.get(f"/v1/Services/{service_sid}/Users", params={"PageSize": 2})).json()
    second = (await api.get(first["meta"]["next_page_url"])).json()
    assert [u["identity"] for u in first["users"] + second["users"]] == ["u1", "u2", "u3"]
    assert second["meta"]["next_page_url"] is None


async def test_fetch_user_by_identity(api: httpx.AsyncClient, service_sid: str) -> None:
    body = await create_user(api, service_sid, "alice", ["vip"])
    fetched = await api.get(f"/v1/Services/{service_sid}/Users/alice")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == body


async def test_identity_in_the_path_is_percent_decoded(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    body = await create_user(api, service_sid, "ada lovelace")
    assert body["url"].endswith("/Users/ada%20lovelace")
    fetched = await api.get(body["url"])
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["identity"] == "ada lovelace"


async def test_fetch_unknown_user_is_404(api: httpx.AsyncClient, service_sid: str) -> None:
    response = await api.get(f"/v1/Services/{service_sid}/Users/nobody")
    assert_error(response, 404, 20404, f"/Services/{service_sid}/Users/nobody")


async def test_delete_user(api: httpx.AsyncClient, service_sid: str) -> None:
    await create_user(api, service_sid, "alice", ["vip"])
    deleted = await api.delete(f"/v1/Services/{service_sid}/Users/alice")
    assert deleted.status_code == 204
    assert_error(await api.get(f"/v1/Services/{service_sid}/Users/alice"), 404, 20404)
    assert_error(await api.delete(f"/v1/Services/{service_sid}/Users/alice"), 404, 20404)
    assert await listed_identities(api, service_sid, {"Segment": "vip"}) == []


async def test_user_with_bindings_cannot_be_deleted_52306(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    """Deleting the user must not silently leave its devices receiving notifications."""
    binding = await register(api, service_sid, "alice")
    response = await api.delete(f"/v1/Services/{service_sid}/Users/alice")
    assert_error(response, 409, 52306, "alice", "Bindings")
    assert (await api.get(f"/v1/Services/{service_sid}/Users/alice")).status_code == 200
    removed = await api.delete(f"/v1/Services/{service_sid}/Bindings/{binding['sid']}")
    assert removed.status_code == 204
    assert (await api.delete(f"/v1/Services/{service_sid}/Users/alice")).status_code == 204


async def test_other_account_cannot_see_users(
    api: httpx.AsyncClient, other_api: httpx.AsyncClient, service_sid: str
) -> None:
    await create_user(api, service_sid, "alice")
    assert_error(await other_api.get(f"/v1/Services/{service_sid}/Users"), 404, 20404)
    assert_error(await other_api.get(f"/v1/Services/{service_sid}/Users/alice"), 404, 20404)
    assert_error(await other_api.delete(f"/v1/Services/{service_sid}/Users/alice"), 404, 20404)
    created = await other_api.post(f"/v1/Services/{service_sid}/Users", data={"Identity": "eve"})
    assert_error(created, 404, 20404)
    assert await listed_identities(api, service_sid) == ["alice"]


# --- UserBindings ---------------------------------------------------------------------------


async def create_user_binding(
    api: httpx.AsyncClient, service_sid: str, identity: str, address: str = APN_TOKEN
) -> httpx.Response:
    return await api.post(
        f"/v1/Services/{service_sid}/Users/{identity}/Bindings",
        data={"BindingType": "apn", "Address": address, "Tag": "vip"},
    )


async def test_create_user_binding_takes_the_identity_from_the_path(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await create_user_binding(api, service_sid, "alice")
    assert response.status_code == 201, response.text
    body = response.json()
    user_url = f"http://testserver/v1/Services/{service_sid}/Users/alice"
    assert body["sid"].startswith("BS")
    assert body["identity"] == "alice"
    assert body["tags"] == ["vip"]
    assert body["url"] == f"{user_url}/Bindings/{body['sid']}"
    assert body["links"] == {"user": user_url}
    assert await listed_identities(api, service_sid) == ["alice"]


async def test_user_binding_is_also_a_service_binding(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    sid = (await create_user_binding(api, service_sid, "alice")).json()["sid"]
    fetched = await api.get(f"/v1/Services/{service_sid}/Bindings/{sid}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["url"] == f"http://testserver/v1/Services/{service_sid}/Bindings/{sid}"


async def test_create_user_binding_validates_the_address(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await create_user_binding(api, service_sid, "alice", address="xyz")
    assert_error(response, 400, 52001, "Address")


async def test_list_user_bindings_shows_only_that_users_bindings(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    mine = (await create_user_binding(api, service_sid, "alice", "01" * 32)).json()
    await create_user_binding(api, service_sid, "bob", "02" * 32)
    response = await api.get(f"/v1/Services/{service_sid}/Users/alice/Bindings")
    assert response.status_code == 200, response.text
    assert response.json()["bindings"] == [mine]
    assert response.json()["meta"]["url"].startswith(
        f"http://testserver/v1/Services/{service_sid}/Users/alice/Bindings?"
    )


async def test_list_user_bindings_of_unknown_user_is_404(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await api.get(f"/v1/Services/{service_sid}/Users/nobody/Bindings")
    assert_error(response, 404, 20404)


async def test_fetch_and_delete_user_binding(api: httpx.AsyncClient, service_sid: str) -> None:
    body = (await create_user_binding(api, service_sid, "alice")).json()
    url = f"/v1/Services/{service_sid}/Users/alice/Bindings/{body['sid']}"
    fetched = await api.get(url)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == body
    assert (await api.delete(url)).status_code == 204
    assert_error(await api.get(url), 404, 20404)
    assert_error(await api.get(f"/v1/Services/{service_sid}/Bindings/{body['sid']}"), 404, 20404)


async def test_user_binding_is_not_reachable_under_another_user(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    sid = (await create_user_binding(api, service_sid, "alice")).json()["sid"]
    await create_user(api, service_sid, "bob")
    url = f"/v1/Services/{service_sid}/Users/bob/Bindings/{sid}"
    assert_error(await api.get(url), 404, 20404)
    assert_error(await api.delete(url), 404, 20404)
    still = await api.get(f"/v1/Services/{service_sid}/Users/alice/Bindings/{sid}")
    assert still.status_code == 200


# --- SegmentMemberships and Segments --------------------------------------------------------


def membership_url(service_sid: str, identity: str, segment: str | None = None) -> str:
    url = f"/v1/Services/{service_sid}/Users/{identity}/SegmentMemberships"
    return url if segment is None else f"{url}/{segment}"


async def test_add_segment_membership(
    api: httpx.AsyncClient, service_sid: str, account: Any
) -> None:
    await create_user(api, service_sid, "alice")
    response = await api.post(membership_url(service_sid, "alice"), data={"Segment": "vip"})
    assert response.status_code == 201, response.text
    assert response.json() == {
        "account_sid": account.sid,
        "service_sid": service_sid,
        "identity": "alice",
        "segment": "vip",
        "url": f"http://testserver{membership_url(service_sid, 'alice', 'vip')}",
    }
    user = (await api.get(f"/v1/Services/{service_sid}/Users/alice")).json()
    assert user["segments"] == ["vip"]


async def test_add_segment_membership_requires_segment(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    await create_user(api, service_sid, "alice")
    response = await api.post(membership_url(service_sid, "alice"), data={})
    assert_error(response, 400, 20001, "Segment")


async def test_duplicate_segment_membership_conflicts_with_52305(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    await create_user(api, service_sid, "alice", ["vip"])
    response = await api.post(membership_url(service_sid, "alice"), data={"Segment": "vip"})
    assert_error(response, 409, 52305, "alice", "vip")


async def test_segment_membership_of_unknown_user_is_404(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await api.post(membership_url(service_sid, "nobody"), data={"Segment": "vip"})
    assert_error(response, 404, 20404)


async def test_fetch_segment_membership(api: httpx.AsyncClient, service_sid: str) -> None:
    await create_user(api, service_sid, "alice", ["vip"])
    await create_user(api, service_sid, "bob", ["beta"])
    fetched = await api.get(membership_url(service_sid, "alice", "vip"))
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["segment"] == "vip"
    assert fetched.json()["identity"] == "alice"
    assert_error(await api.get(membership_url(service_sid, "alice", "beta")), 404, 20404)
    assert_error(await api.get(membership_url(service_sid, "alice", "none")), 404, 20404)


async def test_delete_segment_membership(api: httpx.AsyncClient, service_sid: str) -> None:
    await create_user(api, service_sid, "alice", ["vip", "beta"])
    url = membership_url(service_sid, "alice", "vip")
    assert (await api.delete(url)).status_code == 204
    assert_error(await api.get(url), 404, 20404)
    assert_error(await api.delete(url), 404, 20404)
    user = (await api.get(f"/v1/Services/{service_sid}/Users/alice")).json()
    assert user["segments"] == ["beta"]


async def test_twenty_first_segment_membership_is_rejected(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    await create_user(api, service_sid, "alice", [f"s{n}" for n in range(20)])
    response = await api.post(membership_url(service_sid, "alice"), data={"Segment": "s20"})
    assert_error(response, 400, 20001, "Segment", "20")


async def test_list_segments(api: httpx.AsyncClient, service_sid: str, account: Any) -> None:
    """Segments have no create operation: they appear when first used."""
    await create_user(api, service_sid, "alice", ["vip", "beta"])
    await create_user(api, service_sid, "bob", ["vip"])
    await api.post(membership_url(service_sid, "bob"), data={"Segment": "eu"})
    response = await api.get(f"/v1/Services/{service_sid}/Segments")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["meta"]["key"] == "segments"
    segments = body["segments"]
    assert sorted(s["unique_name"] for s in segments) == ["beta", "eu", "vip"]
    for segment in segments:
        assert segment["sid"].startswith("GS")
        assert len(segment["sid"]) == 34
        assert segment["account_sid"] == account.sid
        assert segment["service_sid"] == service_sid
        assert segment["date_created"].endswith("Z")


async def test_segments_belong_to_one_service(api: httpx.AsyncClient, service_sid: str) -> None:
    await create_user(api, service_sid, "alice", ["vip"])
    other_sid = (await api.post("/v1/Services", data={"FriendlyName": "second"})).json()["sid"]
    response = await api.get(f"/v1/Services/{other_sid}/Segments")
    assert response.json()["segments"] == []


@pytest.mark.parametrize("path", ["Users", "Segments", "Users/alice/SegmentMemberships/vip"])
async def test_legacy_resources_of_another_account_are_404(
    api: httpx.AsyncClient, other_api: httpx.AsyncClient, service_sid: str, path: str
) -> None:
    await create_user(api, service_sid, "alice", ["vip"])
    assert_error(await other_api.get(f"/v1/Services/{service_sid}/{path}"), 404, 20404)
