"""`/v1/Services`: an application, its credentials per channel and its defaults (§4.1)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import RowMapping
from starlette.requests import Request
from starlette.responses import Response

from clarion import errors, failover_policy, sids
from clarion.api.context import Context, allowed_url, authenticated
from clarion.api.form import Form
from clarion.api.paging import page_body, page_request
from clarion.api.responses import json_response, no_content, timestamp
from clarion.credential_types import CHANNEL_CREDENTIAL_TYPES
from clarion.store import credentials, services

# Request parameter → (service column, the channel whose credential types it accepts).
CREDENTIAL_PARAMETERS = {
    "ApnCredentialSid": ("apn_credential_id", "apn"),
    "GcmCredentialSid": ("gcm_credential_id", "gcm"),
    "FcmCredentialSid": ("fcm_credential_id", "fcm"),
    # Extensions: the channels Twilio Notify routed through other products.
    "SmsCredentialSid": ("sms_credential_id", "sms"),
    "FacebookMessengerCredentialSid": ("facebook_messenger_credential_id", "facebook-messenger"),
    "WebpushCredentialSid": ("webpush_credential_id", "webpush"),
    "EmailCredentialSid": ("email_credential_id", "email"),
}

# Parameter → (column, max length); "" clears the setting.
TEXT_PARAMETERS = {
    "FriendlyName": ("friendly_name", 64),
    "FacebookMessengerPageId": ("facebook_messenger_page_id", 64),
    "AlexaSkillId": ("alexa_skill_id", 128),
}
PROTOCOL_VERSION_PARAMETERS = {
    "DefaultApnNotificationProtocolVersion": "default_apn_notification_protocol_version",
    "DefaultGcmNotificationProtocolVersion": "default_gcm_notification_protocol_version",
    "DefaultFcmNotificationProtocolVersion": "default_fcm_notification_protocol_version",
    "DefaultAlexaNotificationProtocolVersion": "default_alexa_notification_protocol_version",
}
BOOLEAN_PARAMETERS = {
    "LogEnabled": "log_enabled",
    "DeliveryCallbackEnabled": "delivery_callback_enabled",
}
DEFAULTS: dict[str, Any] = {
    **dict.fromkeys(PROTOCOL_VERSION_PARAMETERS.values(), "3"),
    "log_enabled": True,
    "delivery_callback_enabled": False,
}


def render(ctx: Context, row: RowMapping) -> dict[str, Any]:
    sid = row["sid"]
    return {
        "sid": sid,
        "account_sid": row["account_sid"],
        "friendly_name": row["friendly_name"],
        "date_created": timestamp(row["date_created"]),
        "date_updated": timestamp(row["date_updated"]),
        "apn_credential_sid": row["apn_credential_sid"],
        "gcm_credential_sid": row["gcm_credential_sid"],
        "fcm_credential_sid": row["fcm_credential_sid"],
        "messaging_service_sid": row["messaging_service_sid"],
        "facebook_messenger_page_id": row["facebook_messenger_page_id"],
        **{column: row[column] for column in PROTOCOL_VERSION_PARAMETERS.values()},
        "log_enabled": row["log_enabled"],
        "url": ctx.url(f"/Services/{sid}"),
        "links": {
            name.lower(): ctx.url(f"/Services/{sid}/{name}")
            for name in ("Bindings", "Notifications", "Segments", "Users")
        },
        "alexa_skill_id": row["alexa_skill_id"],
        "delivery_callback_url": row["delivery_callback_url"],
        "delivery_callback_enabled": row["delivery_callback_enabled"],
        "sms_credential_sid": row["sms_credential_sid"],
        "facebook_messenger_credential_sid": row["facebook_messenger_credential_sid"],
        "webpush_credential_sid": row["webpush_credential_sid"],
        "email_credential_sid": row["email_credential_sid"],
        # Extension: the default failover policy of its notifications (None: no failover).
        "failover": row["failover"],
    }


def _settings(
    form: Form, request: Request
) -> tuple[dict[str, Any], dict[str, tuple[str | None, str]]]:
    """Column values given in the form, and the credential SIDs still to be resolved."""
    values: dict[str, Any] = {}
    for name, (column, max_length) in TEXT_PARAMETERS.items():
        text = form.string(name, max_length=max_length)
        if text is not None:
            values[column] = text or None
    for name, column in PROTOCOL_VERSION_PARAMETERS.items():
        version = form.string(name, max_length=16)
        if version:
            values[column] = version
    for name, column in BOOLEAN_PARAMETERS.items():
        flag = form.boolean(name)
        if flag is not None:
            values[column] = flag
    if form.has("MessagingServiceSid"):
        values["messaging_service_sid"] = form.sid("MessagingServiceSid", sids.MESSAGING_SERVICE)
    if form.has("DeliveryCallbackUrl"):
        values["delivery_callback_url"] = allowed_url(
            request, "DeliveryCallbackUrl", form.url("DeliveryCallbackUrl")
        )
    if form.has(failover_policy.PARAMETER):
        # "" (or "off") clears the default; a notification can still ask for a policy.
        text = form.string(failover_policy.PARAMETER, max_length=4096)
        policy = failover_policy.parse(text) if text else None
        values["failover"] = None if policy is None else policy.to_json()
    references = {
        name: (form.sid(name, sids.CREDENTIAL), channel)
        for name, (_, channel) in CREDENTIAL_PARAMETERS.items()
        if form.has(name)
    }
    return values, references


def resolve_credential(
    conn: Connection, ctx: Context, name: str, sid: str | None, channel: str
) -> int | None:
    """The id of credential `sid` if the caller owns it and it fits `channel` (52002/52003)."""
    if sid is None:
        return None
    found = credentials.find(conn, account_id=ctx.account_id, sid=sid)
    if found is None:
        raise errors.bad_request(
            f"Parameter '{name}' is invalid: credential {sid} does not exist",
            errors.INVALID_CREDENTIAL_SID,
        )
    credential_id, credential_type = found
    allowed = CHANNEL_CREDENTIAL_TYPES[channel]
    if credential_type not in allowed:
        raise errors.bad_request(
            f"Parameter '{name}' is invalid: credential {sid} is of type {credential_type}, "
            f"expected {' or '.join(allowed)}",
            errors.INVALID_CREDENTIAL_TYPE,
        )
    return credential_id


def _with_credentials(
    conn: Connection,
    ctx: Context,
    values: dict[str, Any],
    references: dict[str, tuple[str | None, str]],
) -> dict[str, Any]:
    resolved = dict(values)
    for name, (sid, channel) in references.items():
        column = CREDENTIAL_PARAMETERS[name][0]
        resolved[column] = resolve_credential(conn, ctx, name, sid, channel)
    return resolved


async def create(request: Request) -> Response:
    ctx = await authenticated(request)
    values, references = _settings(await Form.from_body(request), request)

    def op(conn: Connection) -> RowMapping:
        resolved = _with_credentials(conn, ctx, {**DEFAULTS, **values}, references)
        return services.create(conn, account_id=ctx.account_id, values=resolved)

    return json_response(render(ctx, await ctx.database.write(op)), status=201)


async def list_(request: Request) -> Response:
    ctx = await authenticated(request)
    query = Form.from_query(request)
    page, number = page_request(query)
    friendly_name = query.string("FriendlyName", max_length=64)
    result = await ctx.database.read(
        lambda conn: services.list_page(
            conn, account_id=ctx.account_id, friendly_name=friendly_name, page=page
        )
    )
    items = [render(ctx, row) for row in result.rows]
    return json_response(
        page_body(
            request, query, key="services", items=items, page=page, number=number, result=result
        )
    )


async def fetch(request: Request) -> Response:
    ctx = await authenticated(request)
    sid = ctx.path_sid("Sid", sids.SERVICE)
    row = await ctx.database.read(
        lambda conn: services.get(conn, account_id=ctx.account_id, sid=sid)
    )
    return json_response(render(ctx, row))


async def update(request: Request) -> Response:
    ctx = await authenticated(request)
    sid = ctx.path_sid("Sid", sids.SERVICE)
    values, references = _settings(await Form.from_body(request), request)

    def op(conn: Connection) -> RowMapping:
        services.resolve(conn, account_id=ctx.account_id, sid=sid)
        resolved = _with_credentials(conn, ctx, values, references)
        return services.update_fields(conn, account_id=ctx.account_id, sid=sid, values=resolved)

    return json_response(render(ctx, await ctx.database.write(op)))


async def delete(request: Request) -> Response:
    ctx = await authenticated(request)
    sid = ctx.path_sid("Sid", sids.SERVICE)

    def op(conn: Connection) -> None:
        services.remove(conn, account_id=ctx.account_id, sid=sid)

    await ctx.database.write(op)
    return no_content()
