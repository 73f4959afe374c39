"""Webhooks providers call on Clarion: `/v1/Callbacks/Sms/{CredentialSid}` (Twilio status).

They carry no account credentials. Twilio signs each request with the auth token of the
credential that sent the message (`X-Twilio-Signature`), and that credential is named in the
URL Clarion gave Twilio, so the signature is checked against exactly that credential's secret.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from clarion import errors, sids
from clarion.api.context import runtime
from clarion.api.form import Form
from clarion.api.responses import no_content
from clarion.channels.twilio_sms import SmsStatus, status_report, verify_signature
from clarion.store import credentials, deliveries
from clarion.store.clock import utcnow

# How a Twilio message status changes the delivery (None: history only, state unchanged).
SMS_STATES = {
    SmsStatus.DELIVERED: "delivered",
    SmsStatus.UNDELIVERED: "failed",
    SmsStatus.FAILED: "failed",
}


async def sms_status(request: Request) -> Response:
    process = runtime(request)
    sid = str(request.path_params["CredentialSid"])
    if not sids.is_sid(sid, sids.CREDENTIAL):
        raise errors.not_found()
    sid = sids.normalize_sid(sid)
    form = await Form.from_body(request)
    account_id: int | None = None
    auth_token = process.webhook_tokens.get(sid)
    if auth_token is None:
        found = await process.database.read(lambda conn: credentials.for_webhook(conn, sid=sid))
        if found is None or found.type != "twilio-sms" or found.secret_sealed is None:
            raise errors.not_found()
        account_id = found.account_id
        auth_token = json.loads(process.vault.open(found.secret_sealed))["AuthToken"]
    header = request.headers.get("X-Twilio-Signature", "")
    if not verify_signature(str(request.url), form.params(), header=header, auth_token=auth_token):
        raise errors.forbidden("X-Twilio-Signature does not match this request")
    try:
        report = status_report({name: values[0] for name, values in form.params().items()})
    except ValueError as exc:
        raise errors.bad_request(str(exc)) from exc

    def op(conn: Connection) -> Any:
        return deliveries.record_provider_report(
            conn,
            account_id=account_id,
            channel="sms",
            provider_ref=report.message_sid,
            status=SMS_STATES.get(report.status),
            error_code=report.error_code,
            error_message=report.error_message,
            now=utcnow(),
        )

    # An unknown MessageSid is still answered 204: Twilio retries on errors, and the message may
    # belong to something else sent with the same account.
    await process.database.write(op)
    return no_content()
