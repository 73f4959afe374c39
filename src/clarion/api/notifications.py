"""`/v1/Services/{IS}/Notifications`: validate, store with its pending work, answer 201.

Sending is the delivery engine's job; this handler's promise is that an accepted notification
and all the work it implies are committed together, or not at all (§4.4).
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from clarion import addresses, errors, failover_policy, sids
from clarion.api.bindings import IDENTITY_MAX, TAG_MAX, check_endpoint, identity_value
from clarion.api.context import Context, allowed_url, authenticated, runtime
from clarion.api.form import Form, parse_json_object
from clarion.api.responses import json_response, timestamp
from clarion.destinations import DestinationPolicy
from clarion.store import callbacks, deliveries, failover, notifications, services
from clarion.store.notifications import DirectAddress, NewNotification

MAX_IDENTITIES = 20
MAX_TAGS = 5
MAX_SEGMENTS = 20
MAX_TO_BINDINGS = 10_000
MAX_TTL = 2_419_200  # four weeks, Twilio's default and maximum
SEGMENT_MAX = 64

TEXT_CONTENT = {
    "Title": ("title", 1024),
    "Body": ("body", 16_384),
    "Sound": ("sound", 256),
    "Action": ("action", 256),
}
# Object parameters → response field, and the top-level keys each refuses (spec §4.4).
OBJECT_CONTENT: dict[str, tuple[str, tuple[str, ...]]] = {
    "Data": ("data", ()),
    "Apn": ("apn", ()),
    "Gcm": ("gcm", ("to", "registration_ids", "notification_key")),
    "Fcm": ("fcm", ("to", "registration_ids", "condition", "notification_key")),
    "Sms": ("sms", ()),
    "FacebookMessenger": ("facebook_messenger", ()),
    "Alexa": ("alexa", ()),
}
# `twi_` keys are how Clarion itself talks to the apps' SDKs; callers may not forge them.
NO_TWI_KEYS = ("Data", "Apn")
# Clarion's e-mail override (clarion.delivery.payloads): stored and shown back only when given,
# so a Notify client sees exactly the spec's fields.
EMAIL = "Email"
EMAIL_KEYS = ("subject", "text", "html", "reply_to", "headers")
MAX_EMAIL_HEADERS = 20
# Headers the e-mail channel writes itself, or that would change who receives the message.
RESERVED_EMAIL_HEADERS = frozenset(
    {
        "from", "sender", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id",
        "return-path", "mime-version", "content-type", "content-transfer-encoding",
    }
)  # fmt: skip
# RFC 5322 §2.2: printable ASCII but the colon; 76 keeps the name and its colon on one line.
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")


def _content(form: Form) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for name, (field, max_length) in TEXT_CONTENT.items():
        content[field] = form.string(name, max_length=max_length)
    for name, (field, refused) in OBJECT_CONTENT.items():
        value = form.json_object(name)
        if value is not None:
            for key in value:
                if key in refused:
                    raise errors.invalid_parameter(name, f"the key '{key}' is not allowed here")
                if name in NO_TWI_KEYS and key.startswith("twi_"):
                    raise errors.invalid_parameter(
                        name, f"keys starting with 'twi_' are reserved (got '{key}')"
                    )
        content[field] = value
    if content["sms"] is not None:
        _check_sms(content["sms"])
    email = form.json_object(EMAIL)
    if email is not None:
        _check_email(email)
        content["email"] = email
    if all(value is None for value in content.values()):
        raise errors.bad_request(
            "A notification needs content: give Body, Title, Data or a channel override "
            "(Apn, Fcm, Gcm, Sms, FacebookMessenger)"
        )
    return content


def _check_sms(sms: dict[str, Any]) -> None:
    if "body" in sms and not isinstance(sms["body"], str):
        raise errors.invalid_parameter("Sms", "'body' must be a string")
    media = sms.get("media_urls", [])
    if (
        not isinstance(media, list)
        or len(media) > 10
        or not all(
            isinstance(url, str) and url.startswith(("http://", "https://")) for url in media
        )
    ):
        raise errors.invalid_parameter("Sms", "'media_urls' must be a list of up to 10 URLs")
    if "status_callback" in sms and not (
        isinstance(sms["status_callback"], str)
        and sms["status_callback"].startswith(("http://", "https://"))
    ):
        raise errors.invalid_parameter("Sms", "'status_callback' must be an http or https URL")


def _check_email(email: dict[str, Any]) -> None:
    for key in email:
        if key not in EMAIL_KEYS:
            raise errors.invalid_parameter(
                EMAIL, f"unknown key '{key}' (the keys are {', '.join(EMAIL_KEYS)})"
            )
    for key in ("subject", "text", "html", "reply_to"):
        if key in email and not isinstance(email[key], str):
            raise errors.invalid_parameter(EMAIL, f"'{key}' must be a string")
    if any(character in email.get("subject", "") for character in "\r\n\0"):
        raise errors.invalid_parameter(EMAIL, "'subject' must be one line of text")
    if "reply_to" in email:
        try:
            addresses.normalize("email", email["reply_to"])
        except addresses.InvalidAddressError as exc:
            raise errors.invalid_parameter(EMAIL, f"'reply_to' is {exc}") from exc
    headers = email.get("headers", {})
    if not isinstance(headers, dict) or len(headers) > MAX_EMAIL_HEADERS:
        raise errors.invalid_parameter(
            EMAIL, f"'headers' must be an object of at most {MAX_EMAIL_HEADERS} headers"
        )
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise errors.invalid_parameter(
                EMAIL, f"'headers' has {json.dumps(name)}, which is not a header name"
            )
        if name.lower() in RESERVED_EMAIL_HEADERS:
            raise errors.invalid_parameter(
                EMAIL, f"'headers' may not set {name}: Clarion writes it from the notification"
            )
        if not isinstance(value, str) or any(character in value for character in "\r\n\0"):
            raise errors.invalid_parameter(EMAIL, f"the header {name} must be one line of text")


def _direct(form: Form, *, sandbox: bool, destinations: DestinationPolicy) -> list[DirectAddress]:
    values = form.strings("ToBinding", max_items=MAX_TO_BINDINGS, max_length=8192)
    direct = []
    for index, text in enumerate(values):
        item = parse_json_object("ToBinding", text)
        binding_type, address = item.get("binding_type"), item.get("address")
        if binding_type not in addresses.BINDING_TYPES or not isinstance(address, str):
            raise errors.invalid_parameter(
                "ToBinding",
                f"item {index} must be a JSON object with a binding_type "
                f"({', '.join(addresses.BINDING_TYPES)}) and an address string",
            )
        try:
            normalized = addresses.normalize(binding_type, address, sandbox=sandbox)
            check_endpoint(destinations, binding_type, normalized)
            direct.append(DirectAddress(channel=binding_type, address=normalized))
        except addresses.InvalidAddressError as exc:
            # Twilio accepts the request and fails just this recipient.
            direct.append(
                DirectAddress(
                    channel=binding_type, address=address, error=(errors.INVALID_BINDING, str(exc))
                )
            )
    return direct


def _failover(form: Form, *, direct: bool) -> tuple[bool, dict[str, Any] | None]:
    """Whether the notification chose its failover policy (`Failover`), and which: a policy,
    or None for `off`. Unchosen, a query notification gets its service's."""
    text = form.string(failover_policy.PARAMETER)
    if text is None:
        return False, None
    policy = failover_policy.parse(text)
    if policy is not None and direct:
        raise errors.invalid_parameter(
            failover_policy.PARAMETER,
            "ToBinding addresses have no identity to fail over for: target Identity, Tag or "
            "Segment instead",
        )
    return True, None if policy is None else policy.to_json()


def _targets(form: Form) -> dict[str, list[str]]:
    return {
        "identities": [
            identity_value("Identity", value)
            for value in form.strings("Identity", max_items=MAX_IDENTITIES, max_length=IDENTITY_MAX)
        ],
        "tags": form.strings("Tag", max_items=MAX_TAGS, max_length=TAG_MAX),
        "segments": form.strings("Segment", max_items=MAX_SEGMENTS, max_length=SEGMENT_MAX),
    }


async def create(request: Request) -> Response:
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    form = await Form.from_body(request)
    targets = _targets(form)
    process = runtime(request)
    direct = _direct(form, sandbox=process.sandbox, destinations=process.destinations)
    if direct and any(targets.values()):
        raise errors.bad_request(
            "Direct notifications and query notifications can not be requested together: "
            "send ToBinding without Identity, Tag and Segment"
        )
    if not direct and not any(targets.values()):
        raise errors.bad_request(
            "A notification needs recipients: give Identity, Tag, Segment or ToBinding"
        )
    priority = (
        form.choice("Priority", ("high", "low", "HIGH", "LOW", "High", "Low")) or "high"
    ).lower()
    ttl = form.integer("Ttl", minimum=0, maximum=MAX_TTL)
    chosen, policy = _failover(form, direct=bool(direct))
    new = NewNotification(
        targets=targets,
        content=_content(form),
        priority=priority,
        ttl=MAX_TTL if ttl is None else ttl,
        delivery_callback_url=allowed_url(
            request, "DeliveryCallbackUrl", form.url("DeliveryCallbackUrl")
        ),
        direct=direct,
        failover=policy,
    )

    def op(conn: Connection) -> notifications.Created:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        if chosen or direct:
            return notifications.create(conn, service_id=service_id, new=new)
        default = failover.service_default(conn, service_id=service_id)
        return notifications.create(
            conn, service_id=service_id, new=dataclasses.replace(new, failover=default)
        )

    created = await ctx.database.write(op)
    runtime(request).on_enqueued()
    return json_response(
        render(
            ctx,
            service_sid=service_sid,
            sid=created.sid,
            date_created=created.date_created,
            targets=targets,
            priority=new.priority,
            ttl=new.ttl,
            content=new.content,
        ),
        status=201,
    )


async def fetch(request: Request) -> Response:
    """The notification with its delivery counts (an extension: Notify has no GET)."""
    ctx = await authenticated(request)
    service_sid = ctx.path_sid("ServiceSid", sids.SERVICE)
    sid = ctx.path_sid("Sid", sids.NOTIFICATION)

    def load(conn: Connection) -> Any:
        service_id = services.resolve(conn, account_id=ctx.account_id, sid=service_sid)
        row, counts = deliveries.notification_with_counts(conn, service_id=service_id, sid=sid)
        return (
            row,
            counts,
            callbacks.state(conn, notification_id=row["id"]),
            callbacks.attempts(conn, notification_id=row["id"], limit=CALLBACK_REQUESTS),
            failover.summary(conn, notification_id=row["id"]),
        )

    row, counts, callback, requests, failover_summary = await ctx.database.read(load)
    by_status: dict[str, int] = {}
    for statuses in counts.values():
        for status, count in statuses.items():
            by_status[status] = by_status.get(status, 0) + count
    path = f"/Services/{service_sid}/Notifications/{sid}"
    return json_response(
        {
            **render(
                ctx,
                service_sid=service_sid,
                sid=sid,
                date_created=row["date_created"],
                targets=row["targets"],
                priority=row["priority"],
                ttl=row["ttl"],
                content=row["content"],
            ),
            "status": row["status"],
            "date_completed": timestamp(row["date_completed"]),
            "delivery_callback_url": row["delivery_callback_url"],
            # Where the delivery callback goes and how it fared (clarion.delivery.callbacks).
            "delivery_callback": {
                "url": callback.url,
                "status": callback.status,
                "attempts": callback.attempts,
                "last_error": callback.last_error,
                "batches_sent": callback.batches_sent,
                # The latest POSTs and what the receiver answered, newest first.
                "recent_requests": [_callback_request(item) for item in requests.latest],
            },
            "deliveries": {"total": sum(by_status.values()), **by_status},
            "deliveries_by_channel": counts,
            # Its failover policy and how many identities each channel group reached
            # (clarion.store.failover); null without failover.
            "failover": failover_summary,
            "url": ctx.url(path),
            "links": {"deliveries": ctx.url(f"{path}/Deliveries")},
        }
    )


# Callback POSTs a fetched notification shows (the portal shows more).
CALLBACK_REQUESTS = 5


def _callback_request(item: callbacks.Attempt) -> dict[str, Any]:
    return {
        "sequence_id": item.sequence,
        "is_final": item.final,
        "count": item.deliveries,
        "attempt": item.attempt,
        "date_sent": timestamp(item.at),
        "status_code": item.status_code,
        "error": item.error,
        "latency_ms": item.latency_ms,
        "response_excerpt": item.response_excerpt,
    }


def render(
    ctx: Context,
    *,
    service_sid: str,
    sid: str,
    date_created: datetime,
    targets: dict[str, list[str]],
    priority: str,
    ttl: int,
    content: dict[str, Any],
) -> dict[str, Any]:
    """The spec's Notification fields, the same for the 201 and for a later fetch."""
    return {
        "sid": sid,
        "account_sid": ctx.principal.account_sid,
        "service_sid": service_sid,
        "date_created": timestamp(date_created),
        **targets,
        "priority": priority,
        "ttl": ttl,
        **content,
    }
