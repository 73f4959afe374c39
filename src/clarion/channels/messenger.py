"""Facebook Messenger through the Graph API Send API, and the webhooks that report deliveries.

Graph reports every failure in one envelope, `{"error": {"code", "error_subcode", …}}`; the
code/subcode pair, not the HTTP status, says whether to retry, retire the recipient or give up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from clarion.channels.base import Message, Outcome, Result, refused
from clarion.channels.http1 import PooledSession, json_object
from clarion.destinations import PERMISSIVE, DestinationNotAllowedError, DestinationPolicy

# Graph error codes of providers.md §5.2 (developers.facebook.com/docs/messenger-platform/
# error-codes). The person can never be reached from this page: retire the binding.
GRAPH_URL = "https://graph.facebook.com"

PERSON_UNAVAILABLE = 551
NO_MATCHING_USER = (100, 2018001)
# The user last wrote more than 24 h ago and the message carries no valid tag.
OUTSIDE_WINDOW = (10, 2018278)
# Transient failures and rate limits: unknown, unexpected, app limit, page limit, temporary.
RETRY_CODES = frozenset({1, 2, 4, 613, 1200})
# Marketing-message frequency caps reuse code 4 and 9: skip the message, never retry it.
FREQUENCY_CAPS = frozenset({(4, 2018354), (9, 2018352)})

# Payload keys that belong to the Send API request rather than to its `message` object.
_ENVELOPE_KEYS = frozenset({"messaging_type", "tag", "message"})

WINDOW_ADVICE = (
    "outside the 24-hour messaging window: the user has not written for over a day; send with "
    "messaging_type MESSAGE_TAG and a message tag (e.g. ACCOUNT_UPDATE), or wait for them to write"
)


class MessengerChannel:
    """Sends one Messenger message per `send` as one Facebook Page, over a pooled session."""

    def __init__(
        self,
        *,
        page_id: str,
        page_access_token: str,
        base_url: str = GRAPH_URL,
        api_version: str = "v21.0",
        timeout: float = 30.0,
        max_connections: int = 64,
        destinations: DestinationPolicy = PERMISSIVE,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/{api_version}/{page_id}/messages"
        self._query = {"access_token": page_access_token}
        self._http = PooledSession(
            limit_per_host=max_connections,
            timeout=aiohttp.ClientTimeout(total=timeout),
            destinations=destinations,
        )

    async def send(self, message: Message) -> Result:
        try:
            async with self._http.client().post(
                self._url, params=self._query, json=_request(message)
            ) as response:
                return _classify(response.status, await json_object(response))
        except DestinationNotAllowedError as exc:
            return refused(exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Result(outcome=Outcome.RETRY, error_message=f"Graph API unreachable: {exc!r}")

    async def close(self) -> None:
        await self._http.close()


def _request(message: Message) -> dict[str, Any]:
    """The Send API body (§5.1).

    The payload is either a bare message (`{"text": …}`, `{"attachment": …}`) or carries one
    under `message`; `messaging_type` and `tag` may sit beside either. Without a type, a tagged
    message is MESSAGE_TAG and anything else an UPDATE: notifications are proactive.
    """
    payload = message.payload
    content = payload.get("message") or {
        key: value for key, value in payload.items() if key not in _ENVELOPE_KEYS
    }
    tag = payload.get("tag")
    request: dict[str, Any] = {
        "recipient": _recipient(message.address),
        "messaging_type": payload.get("messaging_type") or ("MESSAGE_TAG" if tag else "UPDATE"),
        "message": content,
    }
    if tag:
        request["tag"] = tag
    return request


def _recipient(address: str) -> dict[str, str]:
    """A PSID, or a phone number in E.164 (Customer Matching) as bindings allow."""
    return {"phone_number": address} if address.startswith("+") else {"id": address}


def _classify(status: int, body: Mapping[str, Any]) -> Result:
    """One Graph answer in the engine's vocabulary (providers.md §5.2)."""
    error = body.get("error")
    if 200 <= status < 300 and not isinstance(error, dict):
        return Result(outcome=Outcome.ACCEPTED, provider_ref=body.get("message_id"))
    if not isinstance(error, dict):
        outcome = Outcome.RETRY if status >= 500 else Outcome.FAILED
        return Result(outcome=outcome, error_message=f"HTTP {status} from the Graph API")
    code, subcode = error.get("code"), error.get("error_subcode")
    error_code = f"{code}/{subcode}" if subcode is not None else str(code)
    error_message = str(error.get("message", ""))
    if code == PERSON_UNAVAILABLE or (code, subcode) == NO_MATCHING_USER:
        outcome = Outcome.DEAD_ADDRESS
    elif (code, subcode) == OUTSIDE_WINDOW:
        outcome, error_message = Outcome.FAILED, f"{WINDOW_ADVICE} ({error_message})"
    elif code in RETRY_CODES and (code, subcode) not in FREQUENCY_CAPS:
        outcome = Outcome.RETRY
    else:
        # 190 (bad page token), 200 (permissions), malformed requests: nothing to retry.
        outcome = Outcome.FAILED
    return Result(outcome=outcome, error_code=error_code, error_message=error_message)


def verify_webhook_signature(body: bytes, header: str, app_secret: str) -> bool:
    """Whether `header` (X-Hub-Signature-256: `sha256=<hex>`) signs this raw webhook body (§5.3).

    Compared in constant time, so a forger learns nothing from how fast a guess is refused.
    """
    algorithm, _, digest = header.partition("=")
    if algorithm != "sha256":
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), digest.strip().lower().encode())


def webhook_verify_token(app_secret: str, credential_sid: str) -> str:
    """The `hub.verify_token` Clarion expects when Meta subscribes the credential's webhook.

    Derived rather than stored: HMAC-SHA256 of the credential SID keyed with the App Secret, so
    whoever holds the secret can compute it (docs/api.md, Webhooks) and nobody else can.
    """
    return hmac.new(app_secret.encode(), credential_sid.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryEvent:
    """A `message_deliveries` or `message_reads` webhook event: messages the person's device has.

    Either the messages are named (`mids`), or only `watermark` says which: every message sent
    to `psid` up to that moment (Messenger omits `mids` for older clients, and read events never
    carry them).
    """

    psid: str
    mids: tuple[str, ...]
    # Naive UTC, as the store keeps time.
    watermark: datetime


def delivery_events(body: bytes) -> list[DeliveryEvent]:
    """The delivery and read events of one webhook POST (§5.3), in order.

    Other events a page may be subscribed to (messages, postbacks, echoes) are skipped, and so
    is a body for another object than a page. ValueError says what is malformed.
    """
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("expected a JSON object")
    if document.get("object") != "page":
        return []
    events: list[DeliveryEvent] = []
    for entry in _list(document, "entry"):
        for event in _list(entry, "messaging"):
            for kind in ("delivery", "read"):
                detail = event.get(kind)
                if detail is not None:
                    events.append(_delivery_event(event, kind, detail))
    return events


def _list(parent: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """`parent[name]`, a list of objects; absent is empty."""
    items = parent.get(name, [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError(f"expected {name} to be a list of objects")
    return items


def _delivery_event(event: Mapping[str, Any], kind: str, detail: Any) -> DeliveryEvent:
    sender = event.get("sender")
    psid = sender.get("id") if isinstance(sender, dict) else None
    if not isinstance(psid, str) or not psid:
        raise ValueError(f"a {kind} event without sender.id")
    if not isinstance(detail, dict):
        raise ValueError(f"expected {kind} to be an object")
    mids = (detail.get("mids") or ()) if kind == "delivery" else ()
    if not isinstance(mids, list | tuple) or not all(isinstance(mid, str) for mid in mids):
        raise ValueError("expected delivery.mids to be a list of message ids")
    watermark = detail.get("watermark")
    if isinstance(watermark, bool) or not isinstance(watermark, int | float):
        raise ValueError(f"expected {kind}.watermark to be a timestamp in milliseconds")
    try:
        at = datetime.fromtimestamp(watermark / 1000, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"{kind}.watermark {watermark} is not a time") from exc
    return DeliveryEvent(psid=psid, mids=tuple(mids), watermark=at.replace(tzinfo=None))
