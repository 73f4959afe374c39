"""The portal's users and segments screens, and the delivery callback on a notification's page,
through the app in-process on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web
from sqlalchemy import Connection, select

from clarion.delivery.callbacks import DeliveryCallbacks
from clarion.store import accounts, callbacks, queue
from clarion.store.clock import utcnow
from clarion.store.database import Database
from clarion.store.tables import notification
from clarion.vault import Vault

_ROW = re.compile(r"<tr>\s*<td>([^<]+)</td>")


def identities(page: httpx.Response) -> list[str]:
    """The identities in the users table, in order."""
    return _ROW.findall(page.text)


async def test_users_and_segments_start_empty_and_say_how_to_begin(
    portal: Any, service_sid: str
) -> None:
    users = await portal.get(f"/portal/services/{service_sid}/users")
    assert users.status_code == 200
    assert "No users yet" in users.text
    segments = await portal.get(f"/portal/services/{service_sid}/segments")
    assert "No segments yet" in segments.text
    service = await portal.get(f"/portal/services/{service_sid}")
    assert f'href="/portal/services/{service_sid}/users"' in service.text


async def test_create_a_user_in_a_segment_and_see_its_bindings(
    portal: Any, api: httpx.AsyncClient, service_sid: str
) -> None:
    base = f"/portal/services/{service_sid}/users"
    await portal.get(base)
    created = await portal.post(base, {"Identity": "alice", "Segment": "vip"})
    assert created.status_code == 303, created.text
    assert created.headers["location"] == f"{base}?identity=alice&done=user-created"
    stored = (await api.get(f"/v1/Services/{service_sid}/Users/alice")).json()
    assert stored["segments"] == ["vip"]
    # A binding's identity is a user too, with its bindings counted.
    await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={"Identity": "bob", "BindingType": "sms", "Address": "+14155550100"},
    )
    page = await portal.get(base)
    assert identities(page) == ["alice", "bob"]
    assert '<span class="tag">vip</span>' in page.text
    assert f'href="/portal/services/{service_sid}/bindings?identity=bob">1</a>' in page.text
    segments = await portal.get(f"/portal/services/{service_sid}/segments")
    assert f'href="{base}?segment=vip">vip</a>' in segments.text


async def test_search_users_by_identity_prefix_and_segment_a_page_at_a_time(
    portal: Any, api: httpx.AsyncClient, service_sid: str
) -> None:
    for index in range(60):
        data = {"Identity": f"user-{index:03d}"}
        if index % 20 == 0:
            data["Segment"] = "weekly"
        assert (await api.post(f"/v1/Services/{service_sid}/Users", data=data)).status_code == 201
    base = f"/portal/services/{service_sid}/users"
    first = await portal.get(base)
    assert identities(first) == [f"user-{index:03d}" for index in range(50)]
    after = re.search(r'href="\?after=(\d+)"', first.text).group(1)
    second = await portal.get(base, params={"after": after})
    assert identities(second) == [f"user-{index:03d}" for index in range(50, 60)]
    assert 'rel="prev"' in second.text
    found = await portal.get(base, params={"identity": "user-05"})
    assert identities(found) == [f"user-{index:03d}" for index in range(50, 60)]
    weekly = await portal.get(base, params={"segment": "weekly"})
    assert identities(weekly) == ["user-000", "user-020", "user-040"]
    none = await portal.get(base, params={"identity": "nobody"})
    assert "No users match" in none.text


async def test_join_and_leave_segments_with_any_identity(
    portal: Any, api: httpx.AsyncClient, service_sid: str
) -> None:
    identity = "team/ana 100%"  # a slash and a percent sign go through the API's URL intact
    await api.post(
        f"/v1/Services/{service_sid}/Users", data={"Identity": identity, "Segment": "vip"}
    )
    base = f"/portal/services/{service_sid}/users"
    await portal.get(base)
    added = await portal.post(f"{base}/segments", {"Identity": identity, "Segment": "news"})
    assert added.status_code == 303, added.text
    assert "done=segment-added" in added.headers["location"]
    page = await portal.get(added.headers["location"])
    assert "Added to the segment." in page.text
    removed = await portal.post(f"{base}/segments/delete", {"Identity": identity, "Segment": "vip"})
    assert removed.status_code == 303, removed.text
    users = (await api.get(f"/v1/Services/{service_sid}/Users")).json()["users"]
    assert [(user["identity"], user["segments"]) for user in users] == [(identity, ["news"])]


async def test_delete_a_user(portal: Any, api: httpx.AsyncClient, service_sid: str) -> None:
    await api.post(f"/v1/Services/{service_sid}/Users", data={"Identity": "carol"})
    base = f"/portal/services/{service_sid}/users"
    await portal.get(base)
    deleted = await portal.post(f"{base}/delete", {"Identity": "carol"})
    assert deleted.status_code == 303
    assert "User deleted." in (await portal.get(deleted.headers["location"])).text
    assert (await api.get(f"/v1/Services/{service_sid}/Users/carol")).status_code == 404


async def test_a_refused_change_shows_the_apis_message_above_the_list(
    portal: Any, api: httpx.AsyncClient, service_sid: str
) -> None:
    await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={"Identity": "dave", "BindingType": "sms", "Address": "+14155550100"},
    )
    base = f"/portal/services/{service_sid}/users"
    await portal.get(base)
    again = await portal.post(base, {"Identity": "dave", "Segment": "vip"})
    assert again.status_code == 409
    assert "User with Identity &#39;dave&#39; already exists" in again.text
    assert 'value="vip"' in again.text  # what was typed is kept
    in_use = await portal.post(f"{base}/delete", {"Identity": "dave"})
    assert in_use.status_code == 409
    assert "still has Bindings" in in_use.text
    assert identities(in_use) == ["dave"]
    empty = await portal.post(f"{base}/segments", {"Identity": "dave", "Segment": ""})
    assert empty.status_code == 400
    assert "Segment" in empty.text


async def test_forms_need_the_csrf_token(
    portal: Any, api: httpx.AsyncClient, service_sid: str
) -> None:
    response = await portal.post(
        f"/portal/services/{service_sid}/users", {"Identity": "eve"}, csrf=False
    )
    assert response.status_code == 403
    assert (await api.get(f"/v1/Services/{service_sid}/Users")).json()["users"] == []


async def test_another_accounts_users_are_not_found(
    portal_factory: Any,
    api: httpx.AsyncClient,
    service_sid: str,
    database: Database,
    vault: Vault,
) -> None:
    await api.post(f"/v1/Services/{service_sid}/Users", data={"Identity": "frank"})
    other = await database.write(
        lambda conn: accounts.create_account(conn, vault, friendly_name="other")
    )
    intruder = portal_factory()
    await intruder.sign_in(other.sid, other.secret)
    base = f"/portal/services/{service_sid}"
    for path in (f"{base}/users", f"{base}/segments"):
        assert (await intruder.get(path)).status_code == 404, path
    for path, data in (
        (f"{base}/users", {"Identity": "mallory"}),
        (f"{base}/users/delete", {"Identity": "frank"}),
        (f"{base}/users/segments", {"Identity": "frank", "Segment": "x"}),
    ):
        assert (await intruder.post(path, data)).status_code == 404, path
    users = (await api.get(f"/v1/Services/{service_sid}/Users")).json()["users"]
    assert [(user["identity"], user["segments"]) for user in users] == [("frank", [])]


# --- the delivery callback on the notification page ------------------------------------------

# Callback jobs are queued and claimed at this time, long past, so that claiming one here never
# takes another test's job from the database the tests share.
LONG_AGO = datetime(2001, 1, 1, tzinfo=utcnow().tzinfo)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[int]]]:
    """An application's callback endpoint: its URL and the statuses it answers, in turn."""
    statuses: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        await request.post()
        status = statuses.pop(0) if statuses else 200
        # A body a page must escape, not run.
        return web.Response(status=status, text=f"<script>alert({status})</script>")

    app = web.Application()
    app.router.add_post("/callback", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/callback", statuses
    await runner.cleanup()


async def _notify(api: httpx.AsyncClient, service_sid: str, **extra: str) -> str:
    """A notification whose only delivery failed at once (a bad number): nothing to send."""
    response = await api.post(
        f"/v1/Services/{service_sid}/Notifications",
        data={
            "Body": "hello",
            "ToBinding": json.dumps({"binding_type": "sms", "address": "bad"}),
            **extra,
        },
    )
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])


async def _post_callback(database: Database, vault: Vault, *, now: datetime) -> None:
    """Run the worker's callback handler once on the job due at `now`."""

    def claim(conn: Connection) -> list[queue.ClaimedJob]:
        return queue.claim_jobs(
            conn,
            owner="portal-test",
            now=now,
            lease=timedelta(minutes=1),
            limit=1,
            kinds=[callbacks.KIND],
        )

    (job,) = await database.transaction(claim)
    handler = DeliveryCallbacks(
        database,
        vault=vault,
        owner="portal-test",
        clock=lambda: now,
        lease=timedelta(minutes=1),
        stopping=lambda: False,
    )
    try:
        await handler.run(job)
    finally:
        await handler.close()


async def test_the_notification_page_shows_its_delivery_callback(
    portal: Any,
    api: httpx.AsyncClient,
    service_sid: str,
    database: Database,
    vault: Vault,
    receiver: tuple[str, list[int]],
) -> None:
    base = f"/portal/services/{service_sid}/notifications"
    without = await portal.get(f"{base}/{await _notify(api, service_sid)}")
    assert "None: this notification set no DeliveryCallbackUrl" in without.text

    url, statuses = receiver
    sid = await _notify(api, service_sid, DeliveryCallbackUrl=url)
    page = await portal.get(f"{base}/{sid}")
    assert url in page.text
    assert "not sent yet" in page.text

    def complete(conn: Connection) -> list[int]:
        notification_id = conn.scalar(select(notification.c.id).where(notification.c.sid == sid))
        return queue.complete_notifications(conn, now=LONG_AGO, ids=[notification_id])

    assert len(await database.transaction(complete)) == 1
    statuses.append(500)
    await _post_callback(database, vault, now=LONG_AGO)
    failing = await portal.get(f"{base}/{sid}")
    assert '<span class="badge s-pending">pending</span>' in failing.text
    assert "batch 0: HTTP 500 Internal Server Error" in failing.text
    assert re.search(r"<dt>Attempts</dt><dd>1 <span class=\"muted\">at batch 0", failing.text)
    (row,) = re.findall(r"<tr>\s*<td class=\"num\">0</td>.*?</tr>", failing.text, re.S)
    assert '<span class="badge s-failed">HTTP 500</span>' in row
    assert "<code>&lt;script&gt;alert(500)&lt;/script&gt;</code>" in row
    assert "<script>alert" not in failing.text

    await _post_callback(database, vault, now=LONG_AGO + timedelta(days=1))
    sent = await portal.get(f"{base}/{sid}")
    assert '<span class="badge s-sent">sent</span>' in sent.text
    assert re.search(r"<dt>Batches acknowledged</dt><dd>1 ", sent.text)
    assert "batch 0: HTTP 500" not in sent.text  # the last error is cleared…
    rows = re.findall(r"<tr>\s*<td class=\"num\">0</td>.*?</tr>", sent.text, re.S)
    assert len(rows) == 2  # …and both requests are listed, the latest first
    assert '<span class="badge s-sent">HTTP 200</span>' in rows[0]
    assert '<span class="badge s-failed">HTTP 500</span>' in rows[1]
