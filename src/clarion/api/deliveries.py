"""`/v1/Services/{IS}/Notifications/{NT}/Deliveries`: what happened to each recipient.

An extension: Twilio Notify reported deliveries only through callbacks and its console. A
delivery is one notification to one address over one channel.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from clarion import addresses, errors, sids
from clarion.api.context import Context, authenticated
from clarion.api.form import Form
from clarion.api.paging import page_body, page_request
from clarion.api.responses import json_response, timestamp
from clarion.store import deliveries, services

STATUSES = ("pending", "sending", "sent", "delivered", "failed", "expired")


def render(
    ctx: Context, row: dict[str, Any], *, service_sid: str, notification_sid: str
) -> dict[str, Any]:
    sid = sids.row_sid(sids.DELIVERY, row["id"])
    failover_of = row["failover_of"]
    return {
        "sid": sid,
        "account_sid": ctx.principal.account_sid,
        "service_sid": service_sid,
        "notification_sid": notification_sid,
        "binding_sid": row["binding_sid"],
        "identity": row["identity"],
        "channel": row["channel"],
        "address": row["address"],
        "status": row["status"],
        "attempts": row["attempts"],
        "provider_sid": row["provider_ref"],
        "error_code": row["error_code"],
        "error_message": row["error_message"],
        "failover_of": None if failover_of is None else sids.row_sid(sids.DELIVERY, failover_of),
        # Failover (clarion.store.failover): the index of the delivery's group in the policy and
        # why the identity's chain moved on to it; null without failover.
        "failover_step": row["failover_step"],
        "failover_reason": row["failover_reason"],
        # The app's receipts: null, delivered or opened, and when the first one came.
        "receipt_state": row["receipt_state"],
        "date_confirmed": timestamp(row["date_confirmed"]),
        "date_created": timestamp(row["date_created"]),
        "date_updated": timestamp(row["date_updated"]),
        # When the provider took the message (its last attempt), null until then.
        "date_sent": timestamp(row["date_sent"]),
        "url": ctx.url(
            f"/Services/{service_sid}/Notifications/{notification_sid}/Deliveries/{sid}"
        ),
    }


async def list_(request: Request) -> Response:
    ctx = await authenticated(request)
    query = Form.from_query(request)
    statuses = query.choices("Status", STATUSES)
    channels = query.choices("Channel", addresses.BINDING_TYPES)
    page, number = page_request(query)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    notification_sid = ctx.path_sid("NotificationSid", sids.NOTIFICATION)

    def load(conn: Connection) -> Any:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        notification_id = deliveries.notification_id(
            conn, service_id=service_id, sid=notification_sid
        )
        return deliveries.list_page(
            conn, notification_id=notification_id, statuses=statuses, channels=channels, page=page
        )

    result = await ctx.database.read(load)
    items = [
        render(ctx, dict(row), service_sid=service_sid, notification_sid=notification_sid)
        for row in result.rows
    ]
    return json_response(
        page_body(
            request, query, key="deliveries", items=items, page=page, number=number, result=result
        )
    )


async def fetch(request: Request) -> Response:
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    notification_sid = ctx.path_sid("NotificationSid", sids.NOTIFICATION)
    delivery_id = sids.row_id(ctx.path_sid("Sid", sids.DELIVERY))
    if delivery_id is None:
        raise errors.not_found()

    def load(conn: Connection) -> Any:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        notification_id = deliveries.notification_id(
            conn, service_id=service_id, sid=notification_sid
        )
        return deliveries.get(conn, notification_id=notification_id, delivery_id=delivery_id)

    row = await ctx.database.read(load)
    return json_response(
        render(ctx, row, service_sid=service_sid, notification_sid=notification_sid)
    )
