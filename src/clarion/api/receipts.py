"""`POST /v1/Services/{IS}/Notifications/{NT}/Receipts`: a device app confirms a push (extension).

Apps never hold account credentials, so the request carries none: the receipt token Clarion put
into the push (`twi_receipt`, clarion.delivery.receipts) is the authentication, and it confirms
its own delivery only. A token that is not one of this notification's deliveries is answered
404, exactly like an unknown resource, so nothing about other deliveries leaks.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from clarion import errors, sids
from clarion.api.context import runtime
from clarion.api.form import Form
from clarion.api.responses import json_response, timestamp
from clarion.delivery import receipts
from clarion.store import deliveries, failover
from clarion.store.clock import utcnow


async def create(request: Request) -> Response:
    process = runtime(request)
    service_sid = _path_sid(request, "ServiceSid", sids.SERVICE)
    notification_sid = _path_sid(request, "NotificationSid", sids.NOTIFICATION)
    form = await Form.from_body(request)
    token = form.required("Token", max_length=256)
    if not receipts.well_formed(token):
        raise errors.invalid_parameter(
            "Token", f"expected the push's twi_receipt value ({receipts.TOKEN_LENGTH} characters)"
        )
    state = form.choice("State", deliveries.RECEIPT_STATES)
    if state is None:
        raise errors.missing_parameter("State")
    delivery_id = receipts.ReceiptTokens(process.vault).verify(token)
    if delivery_id is None:
        raise errors.not_found()

    def op(conn: Connection) -> Any:
        now = utcnow()
        recorded = deliveries.record_receipt(
            conn,
            service_sid=service_sid,
            notification_sid=notification_sid,
            delivery_id=delivery_id,
            state=state,
            now=now,
        )
        if recorded.first:
            # The identity is reached: its failover chain stops, in the same transaction.
            failover.confirm(conn, delivery_id=recorded.delivery_id, now=now)
        return recorded

    recorded = await process.database.write(op)
    return json_response(
        {
            "delivery_sid": sids.row_sid(sids.DELIVERY, recorded.delivery_id),
            "state": recorded.state,
            "date_created": timestamp(recorded.date_created),
        },
        status=201,
    )


def _path_sid(request: Request, name: str, prefix: str) -> str:
    """A SID from the URL; a malformed one is a resource that does not exist."""
    value = str(request.path_params[name])
    if not sids.is_sid(value, prefix):
        raise errors.not_found()
    return sids.normalize_sid(value)
