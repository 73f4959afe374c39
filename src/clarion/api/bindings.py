"""`/v1/Services/{IS}/Bindings` and the legacy `/Users/{Identity}/Bindings` (§4.3, §3.1)."""

from __future__ import annotations

import json
from datetime import datetime, time, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from clarion import addresses, errors, sids
from clarion.api.context import Context, authenticated, runtime
from clarion.api.form import Form
from clarion.api.paging import page_body, page_request
from clarion.api.responses import json_response, no_content, timestamp
from clarion.api.services import resolve_credential
from clarion.destinations import DestinationPolicy
from clarion.store import bindings, services, users
from clarion.store.bindings import Registration

IDENTITY_MAX = 256
TAG_MAX = 64
MAX_TAGS = 20
MAX_TAG_FILTERS = 5
PUSH_TYPES = ("apn", "gcm", "fcm", "alexa")


def user_path(service_sid: str, identity: str) -> str:
    return f"/Services/{service_sid}/Users/{quote(identity, safe='')}"


def render(ctx: Context, row: dict[str, Any], *, under_user: bool = False) -> dict[str, Any]:
    service_sid = row["service_sid"]
    user = user_path(service_sid, row["identity"])
    base = f"{user}/Bindings" if under_user else f"/Services/{service_sid}/Bindings"
    return {
        "sid": row["sid"],
        "account_sid": row["account_sid"],
        "service_sid": service_sid,
        "credential_sid": row["credential_sid"],
        "date_created": timestamp(row["date_created"]),
        "date_updated": timestamp(row["date_updated"]),
        "notification_protocol_version": row["notification_protocol_version"],
        "endpoint": row["endpoint"],
        "identity": row["identity"],
        "binding_type": row["binding_type"],
        "address": row["address"],
        "tags": row["tags"],
        # Extension: a binding a provider reported dead receives nothing until registered again.
        "status": "active" if row["inactive_since"] is None else "inactive",
        "inactive_since": timestamp(row["inactive_since"]),
        "inactive_reason": row["inactive_reason"],
        "url": ctx.url(f"{base}/{row['sid']}"),
        "links": {"user": ctx.url(user)},
    }


def identity_value(name: str, value: str) -> str:
    if not value:
        raise errors.invalid_parameter(name, "must not be empty")
    if len(value) > IDENTITY_MAX:
        raise errors.invalid_parameter(name, f"must be at most {IDENTITY_MAX} characters")
    return value


async def create(request: Request) -> Response:
    ctx = await authenticated(request)
    return await _create(ctx, identity=None)


async def create_for_user(request: Request) -> Response:
    ctx = await authenticated(request)
    return await _create(ctx, identity=identity_value("Identity", ctx.path_text("Identity")))


def check_endpoint(destinations: DestinationPolicy, binding_type: str, address: str) -> None:
    """InvalidAddressError for a web-push subscription (normalised) whose endpoint `destinations`
    refuses without DNS: Clarion's workers would be the ones connecting to it."""
    if binding_type == "webpush":
        problem = destinations.url_problem(json.loads(address)["endpoint"])
        if problem is not None:
            raise addresses.InvalidAddressError(f"endpoint: {problem}")


async def _create(ctx: Context, *, identity: str | None) -> Response:
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    form = await Form.from_body(ctx.request)
    if identity is None:
        identity = identity_value("Identity", form.required("Identity", max_length=IDENTITY_MAX))
    binding_type = form.choice("BindingType", addresses.BINDING_TYPES)
    if binding_type is None:
        raise errors.missing_parameter("BindingType")
    try:
        address = addresses.normalize(
            binding_type,
            form.required("Address", max_length=8192),
            sandbox=runtime(ctx.request).sandbox,
        )
        check_endpoint(runtime(ctx.request).destinations, binding_type, address)
    except addresses.InvalidAddressError as exc:
        raise errors.bad_request(
            f"Parameter 'Address' is invalid for binding type {binding_type}: {exc}",
            errors.INVALID_BINDING,
        ) from exc
    tags = form.strings("Tag", max_items=MAX_TAGS, max_length=TAG_MAX)
    protocol_version = form.string("NotificationProtocolVersion", max_length=16) or None
    credential_sid = form.sid("CredentialSid", sids.CREDENTIAL)
    endpoint = form.string("Endpoint", max_length=256) or None

    def op(conn: Connection) -> dict[str, Any]:
        service = services.protocol_defaults(conn, account_id=ctx.account_id, sid=service_sid)
        credential_id = None
        if credential_sid is not None:
            if binding_type not in ("apn", "gcm", "fcm", "webpush"):
                raise errors.invalid_parameter(
                    "CredentialSid", f"{binding_type} bindings use the service's credential"
                )
            credential_id = resolve_credential(
                conn, ctx, "CredentialSid", credential_sid, binding_type
            )
        version = protocol_version
        if version is None and binding_type in PUSH_TYPES:
            version = service[f"default_{binding_type}_notification_protocol_version"]
        registration = Registration(
            identity=identity,
            binding_type=binding_type,
            address=address,
            tags=tags,
            notification_protocol_version=version,
            credential_id=credential_id,
            endpoint=endpoint,
        )
        return bindings.register(conn, service_id=service["id"], reg=registration)

    row = {
        **await ctx.database.write(op),
        "account_sid": ctx.principal.account_sid,
        "service_sid": service_sid,
        "credential_sid": credential_sid,
    }
    return json_response(
        render(ctx, row, under_user=ctx.optional_path_text("Identity") is not None), status=201
    )


async def list_(request: Request) -> Response:
    ctx = await authenticated(request)
    query = Form.from_query(request)
    identity = ctx.optional_path_text("Identity")
    if identity is not None:
        identities = [identity_value("Identity", identity)]
    else:
        identities = [
            identity_value("Identity", value)
            for value in query.strings("Identity", max_items=100, max_length=IDENTITY_MAX)
        ]
    tags = query.strings("Tag", max_items=MAX_TAG_FILTERS, max_length=TAG_MAX)
    start, end = query.day("StartDate"), query.day("EndDate")
    status = query.choice("Status", ("active", "inactive"))
    page, number = page_request(query)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)

    def load(conn: Connection) -> Any:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        if identity is not None:
            users.get(conn, service_id=service_id, identity=identity)
        return bindings.list_page(
            conn,
            service_id=service_id,
            identities=identities,
            tags=tags,
            # Both dates are whole GMT days, inclusive.
            created_from=None if start is None else datetime.combine(start, time()),
            created_before=None
            if end is None
            else datetime.combine(end, time()) + timedelta(days=1),
            active=None if status is None else status == "active",
            page=page,
        )

    result, tags_by_id = await ctx.database.read(load)
    items = [
        render(ctx, {**row, "tags": tags_by_id.get(row["id"], [])}, under_user=identity is not None)
        for row in result.rows
    ]
    return json_response(
        page_body(
            request, query, key="bindings", items=items, page=page, number=number, result=result
        )
    )


async def fetch(request: Request) -> Response:
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    sid = ctx.path_sid("Sid", sids.BINDING)
    identity = ctx.optional_path_text("Identity")

    def load(conn: Connection) -> Any:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        return bindings.get(conn, service_id=service_id, sid=sid, identity=identity)

    row = await ctx.database.read(load)
    return json_response(render(ctx, row, under_user=identity is not None))


async def delete(request: Request) -> Response:
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    sid = ctx.path_sid("Sid", sids.BINDING)
    identity = ctx.optional_path_text("Identity")

    def op(conn: Connection) -> None:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        bindings.remove(conn, service_id=service_id, sid=sid, identity=identity)

    await ctx.database.write(op)
    return no_content()
