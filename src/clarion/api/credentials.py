"""`/v1/Credentials`: provider secrets, write-only (reference/twilio-notify.md §4.2)."""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import RowMapping
from starlette.requests import Request
from starlette.responses import Response

from clarion import errors, sids
from clarion.api.context import Context, authenticated, runtime
from clarion.api.form import Form
from clarion.api.paging import page_body, page_request
from clarion.api.responses import json_response, no_content, timestamp
from clarion.credential_types import TYPES, CredentialType, checked
from clarion.store import credentials

FRIENDLY_NAME_MAX = 64
# Generous: PEM chains and service-account JSON are a few KB.
SECRET_MAX = 64 * 1024


def render(ctx: Context, row: RowMapping) -> dict[str, Any]:
    return {
        "sid": row["sid"],
        "account_sid": row["account_sid"],
        "friendly_name": row["friendly_name"],
        "type": row["type"],
        # The spec types `sandbox` as a string; Twilio's own example is "False".
        "sandbox": None if row["sandbox"] is None else str(row["sandbox"]),
        "date_created": timestamp(row["date_created"]),
        "date_updated": timestamp(row["date_updated"]),
        "url": ctx.url(f"/Credentials/{row['sid']}"),
        # Extension: the non-secret settings (key id, project id, VAPID public key, …).
        "settings": {_snake(name): value for name, value in row["settings"].items()},
    }


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _params(form: Form, kind: CredentialType) -> dict[str, str]:
    params: dict[str, str] = {}
    for name in kind.parameters:
        value = form.string(name, max_length=SECRET_MAX)
        if value is not None:
            params[name] = value
    return params


async def create(request: Request) -> Response:
    ctx = await authenticated(request)
    form = await Form.from_body(request)
    type_name = form.choice("Type", TYPES)
    if type_name is None:
        raise errors.missing_parameter("Type")
    kind = TYPES[type_name]
    friendly_name = form.string("FriendlyName", max_length=FRIENDLY_NAME_MAX)
    sandbox = form.boolean("Sandbox")
    valid = checked(kind, _params(form, kind), destinations=runtime(request).destinations)
    sealed = ctx.vault.seal(json.dumps(valid.secret)) if valid.secret else None

    def op(conn: Connection) -> RowMapping:
        return credentials.create(
            conn,
            account_id=ctx.account_id,
            type_=kind.name,
            friendly_name=friendly_name,
            sandbox=sandbox if kind.name == "apn" else None,
            settings=valid.settings,
            secret_sealed=sealed,
        )

    return json_response(render(ctx, await ctx.database.write(op)), status=201)


async def list_(request: Request) -> Response:
    ctx = await authenticated(request)
    query = Form.from_query(request)
    page, number = page_request(query)
    result = await ctx.database.read(
        lambda conn: credentials.list_page(conn, account_id=ctx.account_id, page=page)
    )
    items = [render(ctx, row) for row in result.rows]
    return json_response(
        page_body(
            request, query, key="credentials", items=items, page=page, number=number, result=result
        )
    )


async def fetch(request: Request) -> Response:
    ctx = await authenticated(request)
    sid = ctx.path_sid("Sid", sids.CREDENTIAL)
    row = await ctx.database.read(
        lambda conn: credentials.get(conn, account_id=ctx.account_id, sid=sid)
    )
    return json_response(render(ctx, row))


async def update(request: Request) -> Response:
    ctx = await authenticated(request)
    sid = ctx.path_sid("Sid", sids.CREDENTIAL)
    form = await Form.from_body(request)
    friendly_name = form.string("FriendlyName", max_length=FRIENDLY_NAME_MAX)
    sandbox = form.boolean("Sandbox")

    def op(conn: Connection) -> RowMapping:
        row = credentials.get(conn, account_id=ctx.account_id, sid=sid)
        kind = TYPES[row["type"]]
        given = _params(form, kind)
        values: dict[str, Any] = {}
        if given:
            sealed = credentials.get_sealed_secret(conn, account_id=ctx.account_id, sid=sid)
            stored = json.loads(ctx.vault.open(sealed)) if sealed else {}
            valid = checked(
                kind,
                {**row["settings"], **stored, **given},
                destinations=runtime(request).destinations,
            )
            values["settings"] = valid.settings
            values["secret_sealed"] = (
                ctx.vault.seal(json.dumps(valid.secret)) if valid.secret else None
            )
        if friendly_name is not None:
            values["friendly_name"] = friendly_name
        if sandbox is not None and kind.name == "apn":
            values["sandbox"] = sandbox
        return credentials.update_fields(conn, account_id=ctx.account_id, sid=sid, values=values)

    return json_response(render(ctx, await ctx.database.write(op)))


async def delete(request: Request) -> Response:
    ctx = await authenticated(request)
    sid = ctx.path_sid("Sid", sids.CREDENTIAL)

    def op(conn: Connection) -> None:
        credentials.remove(conn, account_id=ctx.account_id, sid=sid)

    await ctx.database.write(op)
    return no_content()
