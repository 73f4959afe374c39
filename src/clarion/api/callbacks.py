"""Webhooks providers call on Clarion: `/v1/Callbacks/Sms/{CredentialSid}` (Twilio status
callbacks) and `/v1/Callbacks/Messenger/{CredentialSid}` (a page's Messenger webhook).

They carry no account credentials. Each provider signs its requests with a secret of the
credential named in the URL — Twilio with the auth token (`X-Twilio-Signature`), Meta with the
app secret (`X-Hub-Signature-256`) — so the signature is checked against exactly that
credential's secret, and a credential only ever reports on its own account's deliveries.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from clarion import errors, sids
from clarion.api.context import Runtime, runtime
from clarion.api.form import Form, read_body
from clarion.api.responses import no_content
from clarion.channels.messenger import (
    delivery_events,
    verify_webhook_signature,
    webhook_verify_token,
)
from clarion.channels.twilio_sms import SmsStatus, status_report, verify_signature
from clarion.store import credentials, deliveries
from clarion.store.clock import utcnow

# How a Twilio message status changes the delivery (None: history only, state unchanged).
SMS_STATES = {
    SmsStatus.DELIVERED: "delivered",
    SmsStatus.UNDELIVERED: "failed",
    SmsStatus.FAILED: "failed",
}
MESSENGER = "facebook-messenger"
# The credential parameter whose value signs each type's webhooks.
SIGNING_SECRETS = {"twilio-sms": "AuthToken", "messenger": "AppSecret"}


async def sms_status(request: Request) -> Response:
    process = runtime(request)
    sid = _credential_sid(request)
    form = await Form.from_body(request)
    account_id, auth_token = await _webhook_secret(process, sid, credential_type="twilio-sms")
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


async def messenger_verify(request: Request) -> Response:
    """Meta's subscription handshake: echo `hub.challenge` to whoever knows the verify token
    (clarion.channels.messenger.webhook_verify_token)."""
    process = runtime(request)
    sid = _credential_sid(request)
    _account_id, app_secret = await _webhook_secret(process, sid, credential_type="messenger")
    query = Form.from_query(request)
    if query.string("hub.mode") != "subscribe":
        raise errors.invalid_parameter("hub.mode", "must be subscribe")
    challenge = query.required("hub.challenge", max_length=256)
    token = query.string("hub.verify_token") or ""
    if not hmac.compare_digest(token.encode(), webhook_verify_token(app_secret, sid).encode()):
        raise errors.forbidden(
            "hub.verify_token is not this credential's verify token: the hex HMAC-SHA256 of "
            "the credential SID keyed with its AppSecret"
        )
    return PlainTextResponse(challenge)


async def messenger_events(request: Request) -> Response:
    """Delivery and read events confirm the messages they name, or, with only a watermark,
    every message to that person sent by then; a read message was delivered too."""
    process = runtime(request)
    sid = _credential_sid(request)
    body = await read_body(request)
    account_id, app_secret = await _webhook_secret(process, sid, credential_type="messenger")
    header = request.headers.get("X-Hub-Signature-256", "")
    if not verify_webhook_signature(body, header, app_secret):
        raise errors.forbidden(
            "X-Hub-Signature-256 is not the HMAC-SHA256 of this body with the credential's "
            "AppSecret"
        )
    try:
        events = delivery_events(body)
    except ValueError as exc:
        raise errors.bad_request(f"Not a Messenger webhook body: {exc}") from exc

    def op(conn: Connection) -> None:
        now = utcnow()
        for event in events:
            if not event.mids:
                deliveries.record_delivered_until(
                    conn,
                    account_id=account_id,
                    binding_type=MESSENGER,
                    address=event.psid,
                    watermark=event.watermark,
                    now=now,
                )
            for mid in event.mids:
                deliveries.record_provider_report(
                    conn,
                    account_id=account_id,
                    channel=MESSENGER,
                    provider_ref=mid,
                    status="delivered",
                    error_code=None,
                    error_message=None,
                    now=now,
                )

    # Unknown message ids are acknowledged all the same: Meta retries anything but a 200, and
    # the page may send messages Clarion knows nothing of.
    if events:
        await process.database.write(op)
    return PlainTextResponse("EVENT_RECEIVED")


def _credential_sid(request: Request) -> str:
    sid = str(request.path_params["CredentialSid"])
    if not sids.is_sid(sid, sids.CREDENTIAL):
        raise errors.not_found()
    return sids.normalize_sid(sid)


async def _webhook_secret(
    process: Runtime, sid: str, *, credential_type: str
) -> tuple[int | None, str]:
    """(owning account, the secret that signs its webhooks) of credential `sid`.

    The account is None for a secret the process holds itself (the sandbox's), which no
    account owns.
    """
    held = process.webhook_tokens.get(sid)
    if held is not None:
        return None, held
    found = await process.database.read(lambda conn: credentials.for_webhook(conn, sid=sid))
    if found is None or found.type != credential_type or found.secret_sealed is None:
        raise errors.not_found()
    parameter = SIGNING_SECRETS[credential_type]
    value = json.loads(process.vault.open(found.secret_sealed)).get(parameter)
    if not value:
        raise errors.forbidden(
            f"Credential {sid} has no {parameter}: add it to the credential to receive its webhooks"
        )
    return found.account_id, str(value)
