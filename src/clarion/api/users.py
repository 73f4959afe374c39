"""Legacy `/Users`, `/Users/{Identity}/SegmentMemberships` and `/Segments` (§3.1).

Dropped from the SDKs in 2018 but still named in every Service's `links`; kept so that code
written against the beta API keeps working.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection
from sqlalchemy.engine import RowMapping
from starlette.requests import Request
from starlette.responses import Response

from clarion import errors, sids
from clarion.api.bindings import IDENTITY_MAX, identity_value, user_path
from clarion.api.context import Context, authenticated
from clarion.api.form import Form
from clarion.api.paging import page_body, page_request
from clarion.api.responses import json_response, no_content, timestamp
from clarion.store import services, users
from clarion.store.users import MAX_SEGMENTS_PER_USER

SEGMENT_MAX = 64


def render_user(ctx: Context, row: dict[str, Any]) -> dict[str, Any]:
    path = user_path(row["service_sid"], row["identity"])
    return {
        "sid": row["sid"],
        "account_sid": row["account_sid"],
        "service_sid": row["service_sid"],
        "identity": row["identity"],
        "date_created": timestamp(row["date_created"]),
        "date_updated": timestamp(row["date_updated"]),
        "segments": row["segments"],
        "url": ctx.url(path),
        "links": {
            "bindings": ctx.url(f"{path}/Bindings"),
            "segment_memberships": ctx.url(f"{path}/SegmentMemberships"),
        },
    }


def render_membership(
    ctx: Context, *, account_sid: str, service_sid: str, identity: str, segment: str
) -> dict[str, Any]:
    path = f"{user_path(service_sid, identity)}/SegmentMemberships/{quote(segment, safe='')}"
    return {
        "account_sid": account_sid,
        "service_sid": service_sid,
        "identity": identity,
        "segment": segment,
        "url": ctx.url(path),
    }


def render_segment(row: RowMapping) -> dict[str, Any]:
    return {
        "sid": row["sid"],
        "account_sid": row["account_sid"],
        "service_sid": row["service_sid"],
        "unique_name": row["unique_name"],
        "date_created": timestamp(row["date_created"]),
        "date_updated": timestamp(row["date_updated"]),
    }


def _segment_value(value: str) -> str:
    if not value:
        raise errors.invalid_parameter("Segment", "must not be empty")
    if len(value) > SEGMENT_MAX:
        raise errors.invalid_parameter("Segment", f"must be at most {SEGMENT_MAX} characters")
    return value


async def create(request: Request) -> Response:
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    form = await Form.from_body(request)
    identity = identity_value("Identity", form.required("Identity", max_length=IDENTITY_MAX))
    segments = form.strings("Segment", max_items=MAX_SEGMENTS_PER_USER, max_length=SEGMENT_MAX)

    def op(conn: Connection) -> dict[str, Any]:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        return users.create(conn, service_id=service_id, identity=identity, segments=segments)

    return json_response(render_user(ctx, await ctx.database.write(op)), status=201)


async def list_(request: Request) -> Response:
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    query = Form.from_query(request)
    identities = query.strings("Identity", max_items=100, max_length=IDENTITY_MAX)
    segment = query.string("Segment", max_length=SEGMENT_MAX)
    page, number = page_request(query)

    def load(conn: Connection) -> Any:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        return users.list_page(
            conn,
            service_id=service_id,
            identities=identities,
            segment_name=segment or None,
            page=page,
        )

    result, segments_by_id = await ctx.database.read(load)
    items = [
        render_user(ctx, {**row, "segments": segments_by_id.get(row["id"], [])})
        for row in result.rows
    ]
    return json_response(
        page_body(request, query, key="users", items=items, page=page, number=number, result=result)
    )


async def fetch(request: Request) -> Response:
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    identity = ctx.path_text("Identity")

    def load(conn: Connection) -> Any:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        return users.get(conn, service_id=service_id, identity=identity)

    row = await ctx.database.read(load)
    return json_response(render_user(ctx, row))


async def delete(request: Request) -> Response:
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    identity = ctx.path_text("Identity")

    def op(conn: Connection) -> None:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        users.remove(conn, service_id=service_id, identity=identity)

    await ctx.database.write(op)
    return no_content()


async def create_membership(request: Request) -> Response:
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    identity = ctx.path_text("Identity")
    form = await Form.from_body(request)
    segment = _segment_value(form.required("Segment", max_length=SEGMENT_MAX))

    def op(conn: Connection) -> None:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        users.add_membership(conn, service_id=service_id, identity=identity, segment_name=segment)

    await ctx.database.write(op)
    return json_response(
        render_membership(
            ctx,
            account_sid=ctx.principal.account_sid,
            service_sid=service_sid,
            identity=identity,
            segment=segment,
        ),
        status=201,
    )


async def fetch_membership(request: Request) -> Response:
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    identity = ctx.path_text("Identity")
    segment = ctx.path_text("Segment")

    def load(conn: Connection) -> Any:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        return users.is_member(conn, service_id=service_id, identity=identity, segment_name=segment)

    member = await ctx.database.read(load)
    if not member:
        raise errors.not_found()
    return json_response(
        render_membership(
            ctx,
            account_sid=ctx.principal.account_sid,
            service_sid=service_sid,
            identity=identity,
            segment=segment,
        )
    )


async def delete_membership(request: Request) -> Response:
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    identity = ctx.path_text("Identity")
    segment = ctx.path_text("Segment")

    def op(conn: Connection) -> None:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        users.remove_membership(
            conn, service_id=service_id, identity=identity, segment_name=segment
        )

    await ctx.database.write(op)
    return no_content()


async def list_segments(request: Request) -> Response:
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    query = Form.from_query(request)
    page, number = page_request(query)

    def load(conn: Connection) -> Any:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        return users.list_segments(conn, service_id=service_id, page=page)

    result = await ctx.database.read(load)
    items = [render_segment(row) for row in result.rows]
    return json_response(
        page_body(
            request, query, key="segments", items=items, page=page, number=number, result=result
        )
    )
