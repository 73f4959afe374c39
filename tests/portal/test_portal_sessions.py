"""Server-side portal sessions: signing out ends a session for every copy of its cookie, "sign
out everywhere" ends the account's other sessions, and an idle session ends on the server's
side too (on SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import Connection, select, update

from clarion.portal.session import (
    COOKIE,
    IDLE_SECONDS,
    TOUCH_SECONDS,
    SessionCodec,
    SessionStore,
    anonymous,
)
from clarion.store import accounts, portal_sessions
from clarion.store.accounts import Principal
from clarion.store.clock import utcnow
from clarion.store.database import Database
from clarion.store.tables import account as account_table
from clarion.store.tables import portal_session
from clarion.vault import Vault
from support import Account


def _cookie(client: Any) -> str:
    value = client.client.cookies.get(COOKIE)
    assert value
    return str(value)


async def _with_cookie(portal_factory: Any, value: str) -> Any:
    """Another browser holding a copy of a cookie (a stolen one, say)."""
    thief = portal_factory()
    thief.client.cookies.set(COOKIE, value, path="/portal")
    return thief


async def test_a_copy_of_the_cookie_stops_working_when_its_session_signs_out(
    portal: Any, portal_factory: Any
) -> None:
    stolen = _cookie(portal)
    thief = await _with_cookie(portal_factory, stolen)
    assert (await thief.get("/portal/services")).status_code == 200

    assert (await portal.post("/portal/sign-out")).status_code == 303

    refused = await thief.get("/portal/services")
    assert refused.status_code == 303
    assert refused.headers["location"].startswith("/portal/sign-in")
    # A post with the copy's own CSRF token is refused as well.
    assert (await thief.post("/portal/services/new", {"FriendlyName": "x"})).status_code == 303


async def test_signing_out_everywhere_ends_the_accounts_other_sessions(
    portal: Any, portal_factory: Any, account: Account, api: httpx.AsyncClient
) -> None:
    laptop = portal_factory()
    await laptop.sign_in(account.sid, account.token)
    assert (await laptop.get("/portal/services")).status_code == 200
    page = await portal.get("/portal/account")
    assert page.status_code == 200
    assert page.text.count("<tr>") == 1 + 2  # the header row, two sessions
    assert "this session" in page.text

    response = await portal.post("/portal/sign-out-everywhere")
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/sign-in?done=signed-out-everywhere"

    for client in (portal, laptop):
        assert (await client.get("/portal/services")).status_code == 303
    # The API's credentials are untouched: only portal sessions end.
    assert (await api.get("/v1/Services")).status_code == 200
    # Signing in again works.
    assert (await laptop.sign_in(account.sid, account.token)).status_code == 303
    assert (await laptop.get("/portal/services")).status_code == 200


async def test_signing_out_everywhere_needs_the_csrf_token_and_a_session(
    portal: Any, portal_factory: Any
) -> None:
    forged = await portal.post("/portal/sign-out-everywhere", csrf=False)
    assert forged.status_code == 403
    assert (await portal.get("/portal/services")).status_code == 200
    stranger = portal_factory()
    await stranger.get("/portal/sign-in")
    assert (await stranger.post("/portal/sign-out-everywhere")).status_code == 303
    assert (await portal.get("/portal/services")).status_code == 200


async def test_another_accounts_sessions_are_left_alone(
    portal: Any, portal_factory: Any, database: Database, vault: Vault
) -> None:
    other = await database.write(
        lambda conn: accounts.create_account(conn, vault, friendly_name="other")
    )
    neighbour = portal_factory()
    await neighbour.sign_in(other.sid, other.secret)
    assert (await portal.post("/portal/sign-out-everywhere")).status_code == 303
    assert (await neighbour.get("/portal/services")).status_code == 200
    # Nor does its account page list them.
    assert (await neighbour.get("/portal/account")).text.count("<tr>") == 1 + 1


async def test_a_session_left_idle_ends_on_the_servers_side(
    portal: Any, account: Account, database: Database
) -> None:
    """The cookie is still fresh (it was re-issued a moment ago); the row says it is idle."""

    def age(conn: Connection) -> None:
        account_id = conn.scalar(
            select(account_table.c.id).where(account_table.c.sid == account.sid)
        )
        conn.execute(
            update(portal_session)
            .where(portal_session.c.account_id == account_id)
            .values(last_seen=utcnow() - timedelta(seconds=IDLE_SECONDS + 1))
        )

    assert (await portal.get("/portal/services")).status_code == 200
    await database.write(age)
    refused = await portal.get("/portal/services")
    assert refused.status_code == 303
    assert refused.headers["location"] == "/portal/sign-in?next=/portal/services&done=expired"


async def test_last_seen_is_written_at_most_once_a_minute(database: Database) -> None:
    """The check is one primary-key read per request; the write comes once a TOUCH_SECONDS."""
    now = [2_000_000_000.0]
    store = SessionStore(database, clock=lambda: now[0])
    account_id = await database.read(
        lambda conn: conn.scalar(select(account_table.c.id).order_by(account_table.c.id).limit(1))
    )
    assert account_id is not None
    principal = Principal(account_id=account_id, account_sid="AC" + "1" * 32)
    session = anonymous().signed_in(
        username=principal.account_sid, principal=principal, digest="d", now=now[0]
    )
    await store.begin(session)
    digest = portal_sessions.key_digest(session.key or "")

    async def last_seen() -> Any:
        found = await database.read(lambda conn: portal_sessions.find(conn, digest=digest))
        assert found is not None
        return found.last_seen

    first = await last_seen()
    now[0] += TOUCH_SECONDS - 1
    assert await store.check(session)
    assert await last_seen() == first
    now[0] += 1
    assert await store.check(session)
    assert await last_seen() == first + timedelta(seconds=TOUCH_SECONDS)
    # Idle for longer than IDLE_SECONDS since the last write: over.
    now[0] += IDLE_SECONDS + 1
    assert not await store.check(session)
    await store.end(session)


async def test_a_cookie_from_before_server_sessions_is_signed_out(
    portal: Any, portal_factory: Any, vault: Vault
) -> None:
    """A cookie sealed without a session key names no row: it is no session."""
    codec = SessionCodec(vault)
    opened = codec.open(_cookie(portal))
    assert opened is not None
    assert opened.key is not None
    keyless = codec.seal(replace(opened, key=None))
    old = await _with_cookie(portal_factory, keyless)
    assert (await old.get("/portal/services")).status_code == 303
