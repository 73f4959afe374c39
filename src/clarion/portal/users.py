"""Configuration screens for a service's legacy users and their segments.

Users and segments are Notify's pre-2018 way of addressing people (clarion.api.users): a user
is an identity, made explicitly or by its first binding, and segments are named groups a user
joins, made on first use. An identity may hold any character, `/` included, so the forms carry
it (and a segment name) as a field rather than in the portal's own URLs; the in-process API
call puts it into the API's URL the way the API expects (clarion.api.bindings.user_path).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import Connection
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from clarion import errors, sids
from clarion.api.bindings import identity_value, user_path
from clarion.portal.app import Portal, page
from clarion.portal.configuration import keyset, path_sid
from clarion.store import services, users
from clarion.store.paging import PageResult

USER_FILTERS = ("identity", "segment")


def _filters(portal: Portal) -> dict[str, str]:
    query = portal.request.query_params
    return {name: query.get(name, "").strip()[:256] for name in USER_FILTERS}


async def _users_page(
    portal: Portal,
    service_sid: str,
    *,
    values: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    """The users list, with the outcome of a change that did not work when there was one."""
    filters = _filters(portal)

    def load(conn: Connection) -> tuple[Any, PageResult, dict[int, list[str]]]:
        service = services.get(conn, account_id=portal.account_id, sid=service_sid)
        result, segments = users.search_page(
            conn,
            service_id=service["id"],
            identity_prefix=filters["identity"] or None,
            segment_name=filters["segment"] or None,
            page=keyset(portal.request),
        )
        return service, result, segments

    service, result, segments = await portal.read(load)
    return portal.render(
        "users.html",
        status=status,
        section="services",
        service=service,
        result=result,
        segments=segments,
        filters=filters,
        filter_query=[(name, value) for name, value in filters.items() if value],
        values=values or {},
        error=error,
    )


def _to_user(service_sid: str, identity: str, done: str) -> Response:
    """Back to the list, searched for the user just changed, so its row is in view."""
    query = urlencode([("identity", identity), ("done", done)])
    return RedirectResponse(f"/portal/services/{service_sid}/users?{query}", status_code=303)


def _posted_identity(portal: Portal) -> str:
    """The user a form names, checked as the API checks it: it goes into the API's URL."""
    return identity_value("Identity", portal.posted.string("Identity", max_length=4096) or "")


@page
async def user_list(portal: Portal) -> Response:
    """The users list; its POST creates a user (optionally in a first segment)."""
    service_sid = path_sid(portal, "sid", sids.SERVICE)
    if portal.form is None:
        return await _users_page(portal, service_sid)
    form = portal.posted
    identity = form.string("Identity", max_length=4096) or ""
    first_segment = (form.string("Segment", max_length=4096) or "").strip()
    params = [("Identity", identity)]
    if first_segment:
        params.append(("Segment", first_segment))
    answer = await portal.api("POST", f"/Services/{service_sid}/Users", params)
    if not answer.ok:
        return await _users_page(
            portal, service_sid, values=dict(params), error=answer.message, status=answer.status
        )
    return _to_user(service_sid, identity, "user-created")


@page
async def user_delete(portal: Portal) -> Response:
    service_sid = path_sid(portal, "sid", sids.SERVICE)
    identity = _posted_identity(portal)
    answer = await portal.api("DELETE", user_path(service_sid, identity))
    if not answer.ok:
        return await _users_page(portal, service_sid, error=answer.message, status=answer.status)
    return RedirectResponse(
        f"/portal/services/{service_sid}/users?done=user-deleted", status_code=303
    )


@page
async def membership_add(portal: Portal) -> Response:
    service_sid = path_sid(portal, "sid", sids.SERVICE)
    identity = _posted_identity(portal)
    name = (portal.posted.string("Segment", max_length=4096) or "").strip()
    answer = await portal.api(
        "POST", user_path(service_sid, identity) + "/SegmentMemberships", [("Segment", name)]
    )
    if not answer.ok:
        return await _users_page(portal, service_sid, error=answer.message, status=answer.status)
    return _to_user(service_sid, identity, "segment-added")


@page
async def membership_remove(portal: Portal) -> Response:
    service_sid = path_sid(portal, "sid", sids.SERVICE)
    identity = _posted_identity(portal)
    name = portal.posted.string("Segment", max_length=4096) or ""
    if not name:
        raise errors.invalid_parameter("Segment", "must not be empty")
    path = f"{user_path(service_sid, identity)}/SegmentMemberships/{quote(name, safe='')}"
    answer = await portal.api("DELETE", path)
    if not answer.ok:
        return await _users_page(portal, service_sid, error=answer.message, status=answer.status)
    return _to_user(service_sid, identity, "segment-removed")


@page
async def segment_list(portal: Portal) -> Response:
    service_sid = path_sid(portal, "sid", sids.SERVICE)

    def load(conn: Connection) -> tuple[Any, PageResult]:
        service = services.get(conn, account_id=portal.account_id, sid=service_sid)
        return service, users.list_segments(
            conn, service_id=service["id"], page=keyset(portal.request)
        )

    service, result = await portal.read(load)
    return portal.render("segments.html", section="services", service=service, result=result)


ROUTES = [
    Route("/services/{sid}/users", user_list, methods=["GET", "POST"]),
    Route("/services/{sid}/users/delete", user_delete, methods=["POST"]),
    Route("/services/{sid}/users/segments", membership_add, methods=["POST"]),
    Route("/services/{sid}/users/segments/delete", membership_remove, methods=["POST"]),
    Route("/services/{sid}/segments", segment_list, methods=["GET"]),
]
