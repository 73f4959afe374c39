"""The account page: who is signed in, the account's open portal sessions, and signing out of
all of them (the form posts to /portal/sign-out-everywhere, in clarion.portal.app)."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Route

from clarion.portal.app import Portal, page
from clarion.portal.session import IDLE_SECONDS, SessionStore


@page
async def show(portal: Portal) -> Response:
    store: SessionStore = portal.request.app.state.session_store
    sessions = await store.active(portal.account_id)
    return portal.render(
        "account.html",
        section="account",
        username=portal.session.username,
        sessions=sessions,
        current=SessionStore.digest(portal.session),
        idle_minutes=IDLE_SECONDS // 60,
    )


ROUTES = [Route("/account", show, methods=["GET"])]
