"""SMS through Twilio Programmable Messaging (REST), and the status callbacks that follow it.

Twilio answers a send at once (201 and an `SM…` sid) and reports the handset's fate later by
POSTing signed status callbacks. `TwilioSmsChannel` classifies the first answer;
`verify_signature` and `status_report` let the delivery engine trust and apply the later ones.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from clarion.channels.base import Message, Outcome, Result, refused
from clarion.channels.http1 import PooledSession, json_object
from clarion.destinations import PERMISSIVE, DestinationNotAllowedError, DestinationPolicy

# Synchronous errors after which the number will never receive SMS (providers.md §3.3):
# invalid number, unsubscribed (STOP), not a mobile number, landline.
TWILIO_URL = "https://api.twilio.com"

DEAD_NUMBER_CODES = frozenset({21211, 21610, 21614, 21635})
# "Too many concurrent requests": never processed and always safe to retry (§3.3).
TOO_MANY_REQUESTS = 20429
# Twilio keeps an undeliverable message queued for at most 10 hours (§3.1, ValidityPeriod).
MAX_VALIDITY_PERIOD = 36_000


class TwilioSmsChannel:
    """Sends one SMS per `send` through one Twilio account, over a pooled aiohttp session."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        messaging_service_sid: str | None = None,
        from_: str | None = None,
        base_url: str = TWILIO_URL,
        status_callback: str | None = None,
        timeout: float = 30.0,
        max_connections: int = 64,
        destinations: DestinationPolicy = PERMISSIVE,
    ) -> None:
        # The sender: a Messaging Service (Twilio picks a number from its pool) or one number.
        if messaging_service_sid is not None and from_ is None:
            self._sender = ("MessagingServiceSid", messaging_service_sid)
        elif from_ is not None and messaging_service_sid is None:
            self._sender = ("From", from_)
        else:
            raise ValueError("give exactly one of messaging_service_sid and from_")
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._headers = {"Authorization": f"Basic {credentials}"}
        self._status_callback = status_callback
        self._http = PooledSession(
            limit_per_host=max_connections,
            timeout=aiohttp.ClientTimeout(total=timeout),
            destinations=destinations,
        )

    async def send(self, message: Message) -> Result:
        try:
            async with self._http.client().post(
                self._url, data=self._form(message), headers=self._headers
            ) as response:
                body = await json_object(response)
                return _classify(response.status, body, response.headers.get("Retry-After"))
        except DestinationNotAllowedError as exc:
            return refused(exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Result(outcome=Outcome.RETRY, error_message=f"Twilio unreachable: {exc!r}")

    async def close(self) -> None:
        await self._http.close()

    def _form(self, message: Message) -> list[tuple[str, str]]:
        payload = message.payload
        form = [("To", message.address), self._sender]
        if "body" in payload:
            form.append(("Body", payload["body"]))
        form += [("MediaUrl", url) for url in payload.get("media_urls", ())]
        callback = payload.get("status_callback", self._status_callback)
        if callback is not None:
            form.append(("StatusCallback", callback))
        if "max_price" in payload:
            form.append(("MaxPrice", str(payload["max_price"])))
        if message.expires_at is not None:
            form.append(("ValidityPeriod", str(_validity_period(message.expires_at))))
        return form


def _classify(status: int, body: Mapping[str, Any], retry_after: str | None) -> Result:
    """One Twilio answer in the engine's vocabulary (providers.md §3.3)."""
    if status == 201:
        return Result(outcome=Outcome.ACCEPTED, provider_ref=body.get("sid"))
    code = body.get("code")
    error_code = str(code) if code is not None else None
    error_message = body.get("message") or f"HTTP {status} from Twilio"
    if status == 429 or code == TOO_MANY_REQUESTS or status >= 500:
        return Result(
            outcome=Outcome.RETRY,
            retry_after=_seconds(retry_after),
            error_code=error_code,
            error_message=error_message,
        )
    outcome = Outcome.DEAD_ADDRESS if code in DEAD_NUMBER_CODES else Outcome.FAILED
    return Result(outcome=outcome, error_code=error_code, error_message=error_message)


def _seconds(retry_after: str | None) -> float | None:
    try:
        return float(retry_after) if retry_after is not None else None
    except ValueError:
        return None


def _validity_period(expires_at: datetime) -> int:
    """Seconds Twilio may keep trying: until the notification expires, within Twilio's range."""
    remaining = math.ceil(expires_at.timestamp() - time.time())
    return max(1, min(MAX_VALIDITY_PERIOD, remaining))


# --- X-Twilio-Signature (providers.md §3.4) -----------------------------------------------------


def signature(url: str, params: Mapping[str, str | Sequence[str]], auth_token: str) -> str:
    """The `X-Twilio-Signature` of a form POST to `url`.

    Base64 HMAC-SHA1, keyed with the auth token, of the URL followed by every parameter name and
    value, sorted by name and then by value. Repeated values count once, as in twilio-python's
    `RequestValidator`, so both sides agree on the same request.
    """
    signed = [url]
    for name in sorted(params):
        value = params[name]
        values = [value] if isinstance(value, str) else value
        signed += (name + item for item in sorted(set(values)))
    mac = hmac.new(auth_token.encode(), "".join(signed).encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def verify_signature(
    url: str, params: Mapping[str, str | Sequence[str]], *, header: str, auth_token: str
) -> bool:
    """Whether `header` is Twilio's signature of this request.

    Twilio's edges sign the URL sometimes with and sometimes without the default port, so both
    spellings are accepted, as twilio-python does. The comparison runs in constant time.
    """
    return any(
        hmac.compare_digest(signature(variant, params, auth_token).encode(), header.encode())
        for variant in _port_variants(url)
    )


def _port_variants(url: str) -> set[str]:
    parts = urlsplit(url)
    if parts.port is not None:
        without_port = parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])
        return {url, urlunsplit(without_port)}
    default_port = 443 if parts.scheme == "https" else 80
    with_port = parts._replace(netloc=f"{parts.netloc}:{default_port}")
    return {url, urlunsplit(with_port)}


# --- Status callbacks (providers.md §3.2) -------------------------------------------------------


class SmsStatus(enum.Enum):
    """Where a message stands after a status callback, in the terms the delivery engine uses."""

    IN_FLIGHT = "in_flight"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"


# Twilio's MessageStatus values (twilio-python `MessageInstance.Status`, §3.2). Anything not listed
# here (queued, sending, accepted, scheduled, inbound statuses, future additions) is in flight.
_STATUSES = {
    "sent": SmsStatus.SENT,
    "delivered": SmsStatus.DELIVERED,
    "read": SmsStatus.DELIVERED,
    "undelivered": SmsStatus.UNDELIVERED,
    "failed": SmsStatus.FAILED,
    "canceled": SmsStatus.FAILED,
}

# Asynchronous carrier errors of §3.3, so a delivery record says more than a number.
_CARRIER_ERRORS = {
    "30001": "Queue overflow",
    "30003": "Unreachable destination handset",
    "30005": "Unknown destination handset",
    "30006": "Landline or unreachable carrier",
    "30007": "Message filtered by the carrier",
    "30008": "Unknown error",
    "30034": "Message from an unregistered US A2P 10DLC number",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusReport:
    """One status callback, reduced to what changes a delivery."""

    message_sid: str
    status: SmsStatus
    error_code: str | None = None
    error_message: str | None = None


def status_report(form: Mapping[str, str]) -> StatusReport:
    """Read a status callback's form; callbacks can arrive late or twice, so the engine must
    apply the result monotonically (never move a delivered message back to sent)."""
    message_sid = form.get("MessageSid") or form.get("SmsSid")
    if not message_sid:
        raise ValueError("status callback without MessageSid")
    raw_status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    error_code = form.get("ErrorCode") or None
    error_message = None
    if error_code is not None:
        error_message = _CARRIER_ERRORS.get(error_code, f"Twilio error {error_code}")
    return StatusReport(
        message_sid=message_sid,
        status=_STATUSES.get(raw_status, SmsStatus.IN_FLIGHT),
        error_code=error_code,
        error_message=error_message,
    )
