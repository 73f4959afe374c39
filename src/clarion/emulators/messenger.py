"""A local Facebook Messenger Send API: page tokens, messaging windows, Graph's error envelope.

It answers `POST /{version}/me/messages` and `/{version}/{page_id}/messages` the way
graph.facebook.com does (providers.md §5, §10.5). Sandbox conventions script the recipient:
`dead…` is a person who isn't available (551), `bad…` matches no user (100/2018001), `slow…` is
answered after a delay. A test sets when a PSID last wrote to open or close its 24-hour window,
or `script`s any Graph error for a PSID. Accepted messages can be confirmed to a webhook with
signed delivery events, as Messenger does.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from clarion.emulators.http_server import AiohttpEmulator
from clarion.emulators.records import Records

# Standard messaging window after the user's last message, and HUMAN_AGENT's longer one (§5.1).
STANDARD_WINDOW = timedelta(hours=24)
HUMAN_AGENT_WINDOW = timedelta(days=7)
MESSAGING_TYPES = ("RESPONSE", "UPDATE", "MESSAGE_TAG")
# Tags that may be sent outside the standard window (§5.1).
MESSAGE_TAGS = ("ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "HUMAN_AGENT")

# (code, subcode) → (HTTP status, Graph's message), from the Send API error codes (§5.2).
GRAPH_ERRORS: dict[tuple[int, int | None], tuple[int, str]] = {
    (1, None): (500, "An unknown error occurred"),
    (2, None): (500, "An unexpected error has occurred. Please retry your request later."),
    (4, None): (400, "(#4) Application request limit reached"),
    (4, 2018354): (
        400,
        "(#4) Marketing Messages - There has to be a minimum delay between 2 notifications",
    ),
    (10, 2018278): (400, "(#10) This message is sent outside of allowed window."),
    (100, None): (400, "(#100) Invalid parameter"),
    (100, 2018001): (400, "(#100) No matching user found"),
    (190, None): (400, "Invalid OAuth access token - Cannot parse access token"),
    (551, 1545041): (400, "(#551) This person isn't available right now."),
    (613, None): (400, "(#613) Calls to this api have exceeded the rate limit."),
    (1200, None): (500, "(#1200) Temporary send message failure. Please try again later"),
}

_PATH_VERSION = re.compile(r"v[0-9]+\.[0-9]+")


@dataclass(frozen=True, kw_only=True)
class ReceivedMessage:
    """A message the emulator accepted."""

    message_id: str
    page_id: str
    recipient: dict[str, str]
    messaging_type: str | None
    tag: str | None
    message: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class WebhookPost:
    """A delivery event the emulator posted to the webhook."""

    body: bytes
    signature: str
    # The receiver's HTTP status, or None when the URL could not be reached.
    response_status: int | None


@dataclass
class _Page:
    token: str
    # Monotonic times of recent calls, for the per-page rate cap.
    calls: deque[float] = field(default_factory=deque)


class _GraphError(Exception):
    """A Graph error of GRAPH_ERRORS, rendered in Graph's envelope by `_render_graph_errors`."""

    def __init__(self, code: int, subcode: int | None = None, message: str | None = None) -> None:
        super().__init__(code)
        self.status, default_message = GRAPH_ERRORS[(code, subcode)]
        self.code = code
        self.subcode = subcode
        self.message = message or default_message


class MessengerEmulator(AiohttpEmulator):
    """The Send API on 127.0.0.1 for the pages it is given; records `messages` for tests."""

    def __init__(
        self,
        *,
        pages: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        slow_delay: float = 5.0,
        rate_limit: int = 300,
        rate_window: float = 1.0,
        accept_unknown_psids: bool = True,
        webhook_url: str | None = None,
        app_secret: str | None = None,
        webhook_delay: float = 1.0,
        keep: int | None = None,
    ) -> None:
        """`pages` maps page id → page access token. `rate_limit` calls per `rate_window`
        seconds per page pass (300/s is Messenger's text cap). With `accept_unknown_psids`
        (the sandbox) a PSID nobody set up is a user who just wrote; without it, it matches
        no user, as on the real API. Delivery events go to `webhook_url`, signed with
        `app_secret`, `webhook_delay` seconds after the message was accepted: the device gets
        it later, and the sender has stored the message id by then. `keep` is how many of the
        latest `messages` and `webhook_posts` it keeps (None: all)."""
        if (webhook_url is None) != (app_secret is None):
            raise ValueError("webhook_url and app_secret go together")
        # Closing cuts off `slow…` answers rather than waiting them out.
        super().__init__(host=host, port=port, shutdown_timeout=0.01)
        # What bounds each piece of state: the records hold at most `keep`; `_pages`,
        # `_last_wrote` and `_scripted` hold what the caller put there; a page's `calls` only
        # the last `rate_window` seconds' (at most `rate_limit`); a delivery webhook's task
        # holds its message until it has posted.
        self._pages = {page_id: _Page(token) for page_id, token in (pages or {}).items()}
        self.messages: Records[ReceivedMessage] = Records(maxlen=keep)
        self.webhook_posts: Records[WebhookPost] = Records(maxlen=keep)
        self._slow_delay = slow_delay
        self._rate_limit = rate_limit
        self._rate_window = rate_window
        self._accept_unknown_psids = accept_unknown_psids
        self._webhook_url = webhook_url
        self._app_secret = app_secret or ""
        self._webhook_delay = webhook_delay
        self._last_wrote: dict[str, datetime] = {}
        self._scripted: dict[str, tuple[int, int | None]] = {}

    def add_page(self, page_id: str, access_token: str) -> None:
        self._pages[page_id] = _Page(access_token)

    def user_wrote(self, psid: str, *, at: datetime | None = None) -> None:
        """Record that `psid` last wrote to the page at `at` (now by default): opens its window."""
        self._last_wrote[psid] = at or datetime.now(UTC)

    def script(self, psid: str, *, code: int, subcode: int | None = None) -> None:
        """Answer every later message to `psid` with this Graph error (a key of GRAPH_ERRORS)."""
        if (code, subcode) not in GRAPH_ERRORS:
            raise ValueError(f"no Graph error {code}/{subcode} in GRAPH_ERRORS")
        self._scripted[psid] = (code, subcode)

    async def verify_webhook(self, *, verify_token: str) -> bool:
        """Messenger's subscription handshake: the webhook must echo `hub.challenge`."""
        if self._webhook_url is None or self._runner is None:
            raise RuntimeError("start the emulator with a webhook_url first")
        challenge = str(secrets.randbelow(10**9))
        query = {
            "hub.mode": "subscribe",
            "hub.verify_token": verify_token,
            "hub.challenge": challenge,
        }
        try:
            async with self._callbacks.client().get(self._webhook_url, params=query) as response:
                return response.status == 200 and await response.text() == challenge
        except (aiohttp.ClientError, TimeoutError):
            return False

    def routes(self, app: web.Application) -> None:
        app.middlewares.append(_render_graph_errors)
        app.router.add_post("/{version}/{page}/messages", self._send)

    # --- the Send API ---------------------------------------------------------------------------

    async def _send(self, request: web.Request) -> web.Response:
        if not _PATH_VERSION.fullmatch(request.match_info["version"]):
            raise web.HTTPNotFound
        page_id = self._authenticate(request)
        self._count_call(self._pages[page_id])
        try:
            body = await request.json()
        except ValueError:
            raise _GraphError(100, message="(#100) The request body is not valid JSON") from None
        recipient, messaging_type, tag, message = _parsed(body)
        address = next(iter(recipient.values()))
        self._check_recipient(
            address, is_psid="id" in recipient, messaging_type=messaging_type, tag=tag
        )
        if address.startswith("slow"):
            await asyncio.sleep(self._slow_delay)
        received = ReceivedMessage(
            message_id="m_" + secrets.token_urlsafe(24),
            page_id=page_id,
            recipient=recipient,
            messaging_type=messaging_type,
            tag=tag,
            message=message,
        )
        self.messages.append(received)
        if self._webhook_url is not None and "id" in recipient:
            self._callbacks.spawn(self._confirm_delivery(received, self._webhook_url))
        # No recipient_id when the recipient was a user_ref or phone number (§5.1).
        answer = {"message_id": received.message_id}
        if "id" in recipient:
            answer = {"recipient_id": recipient["id"], **answer}
        return web.json_response(answer)

    def _authenticate(self, request: web.Request) -> str:
        """The page the access token belongs to; `/me/` means the token's own page."""
        token = request.query.get("access_token") or _bearer(request.headers)
        wanted = request.match_info["page"]
        for page_id, page in self._pages.items():
            if token and hmac.compare_digest(page.token, token) and wanted in ("me", page_id):
                return page_id
        raise _GraphError(190)

    def _count_call(self, page: _Page) -> None:
        """The per-page cap (§5.3): at most `rate_limit` calls in any `rate_window` seconds."""
        now = time.monotonic()
        while page.calls and page.calls[0] <= now - self._rate_window:
            page.calls.popleft()
        if len(page.calls) >= self._rate_limit:
            raise _GraphError(613)
        page.calls.append(now)

    def _check_recipient(
        self, address: str, *, is_psid: bool, messaging_type: str | None, tag: str | None
    ) -> None:
        """Sandbox prefixes and scripts first, then the messaging window of a PSID (§5.1)."""
        if address in self._scripted:
            raise _GraphError(*self._scripted[address])
        if address.startswith("dead"):
            raise _GraphError(551, 1545041)
        if address.startswith("bad"):
            raise _GraphError(100, 2018001)
        if not is_psid:
            return
        last_wrote = self._last_wrote.get(address)
        if last_wrote is None:
            if not self._accept_unknown_psids:
                raise _GraphError(100, 2018001)
            return
        window = STANDARD_WINDOW
        if messaging_type == "MESSAGE_TAG":
            if tag != "HUMAN_AGENT":
                return  # the other tags may be sent at any time
            window = HUMAN_AGENT_WINDOW
        if datetime.now(UTC) - last_wrote > window:
            raise _GraphError(10, 2018278)

    # --- webhooks (§5.3) ------------------------------------------------------------------------

    async def _confirm_delivery(self, received: ReceivedMessage, url: str) -> None:
        """Post the `message_deliveries` event Messenger sends once the user's device has it."""
        await asyncio.sleep(self._webhook_delay)
        now_ms = int(time.time() * 1000)
        event = {
            "sender": received.recipient,
            "recipient": {"id": received.page_id},
            "timestamp": now_ms,
            "delivery": {"mids": [received.message_id], "watermark": now_ms},
        }
        entry = {"id": received.page_id, "time": now_ms, "messaging": [event]}
        body = json.dumps({"object": "page", "entry": [entry]}).encode()
        digest = hmac.new(self._app_secret.encode(), body, hashlib.sha256).hexdigest()
        signature = f"sha256={digest}"
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
        response_status = await self._callbacks.post(url, data=body, headers=headers)
        self.webhook_posts.append(
            WebhookPost(body=body, signature=signature, response_status=response_status)
        )


def _parsed(body: Any) -> tuple[dict[str, str], str | None, str | None, dict[str, Any]]:
    """Recipient, messaging_type, tag and message of a Send API body, or Graph's #100 error."""
    if not isinstance(body, dict):
        raise _GraphError(100, message="(#100) The request body must be a JSON object")
    recipient = body.get("recipient")
    if not isinstance(recipient, dict) or len(recipient) != 1:
        raise _GraphError(100, message="(#100) The parameter recipient is required")
    ((kind, address),) = recipient.items()
    if kind not in ("id", "user_ref", "phone_number") or not isinstance(address, str):
        raise _GraphError(100, message="(#100) Invalid parameter recipient")
    message = body.get("message")
    if not isinstance(message, dict) or not message:
        raise _GraphError(100, message="(#100) param message must be non-empty.")
    messaging_type = body.get("messaging_type")
    if messaging_type is not None and messaging_type not in MESSAGING_TYPES:
        message_text = "(#100) Param messaging_type must be one of RESPONSE, UPDATE, MESSAGE_TAG"
        raise _GraphError(100, message=message_text)
    tag = body.get("tag")
    if messaging_type == "MESSAGE_TAG" and tag not in MESSAGE_TAGS:
        raise _GraphError(100, message="(#100) Param tag must be a valid message tag")
    return {kind: address}, messaging_type, tag, message


def _bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    return token if scheme.lower() in ("bearer", "oauth") and token else None


@web.middleware
async def _render_graph_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Graph's error envelope: {"error": {message, type, code, error_subcode, fbtrace_id}}."""
    try:
        response: web.StreamResponse = await handler(request)
    except _GraphError as error:
        envelope: dict[str, Any] = {
            "message": error.message,
            "type": "OAuthException",
            "code": error.code,
        }
        if error.subcode is not None:
            envelope["error_subcode"] = error.subcode
        envelope["fbtrace_id"] = secrets.token_urlsafe(8)
        return web.json_response({"error": envelope}, status=error.status)
    return response
