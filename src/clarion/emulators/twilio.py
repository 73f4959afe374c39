"""A local Twilio Programmable Messaging API: sends, Twilio's errors, signed status callbacks.

It answers `POST /2010-04-01/Accounts/{Sid}/Messages.json` the way api.twilio.com does
(providers.md §3, §10.3), so the SMS channel is tested against the real wire format and
`clarion serve --sandbox` can send SMS without a Twilio account. Outcomes are scripted by number:
Twilio's own magic test numbers fail synchronously, `script` sets the status a number's messages
end in, and every other valid E.164 number is reported `delivered`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import math
import re
import secrets
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from clarion.emulators.http_server import AiohttpEmulator
from clarion.emulators.records import Records

API_VERSION = "2010-04-01"
MAX_BODY_CHARS = 1600  # §3.3, error 21617
# The sender Twilio picks from a Messaging Service's pool (Twilio's magic "From" number).
POOL_NUMBER = "+15005550006"
FINAL_STATUSES = ("delivered", "undelivered", "failed")

# Twilio's magic "To" numbers for test credentials (twilio.com/docs/iam/test-credentials).
MAGIC_NUMBERS = {
    "+15005550001": 21211,  # invalid number
    "+15005550004": 21610,  # blocked: the recipient replied STOP
    "+15005550009": 21614,  # cannot receive SMS
}

# Error texts as api.twilio.com writes them; `{to}` and `{path}` are filled in per request.
ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource {path} was not found",
    20429: "Too Many Requests",
    20503: "Service Unavailable",
    21211: "The 'To' number {to} is not a valid phone number.",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Twilio API"'}


@dataclass(kw_only=True)
class SentMessage:
    """A message the emulator accepted; `status` moves on as its callbacks are made."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    media_urls: list[str]
    status_callback: str | None
    # The whole form as received, repeated keys included.
    params: dict[str, list[str]]
    status: str
    error_code: int | None = None
    date_created: datetime = field(default_factory=lambda: datetime.now(UTC))

    def resource(self) -> dict[str, Any]:
        """The Message resource JSON of §3.1."""
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}.json"
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": format_datetime(self.date_created),
            "date_updated": format_datetime(self.date_created),
            "date_sent": None,
            "direction": "outbound-api",
            "error_code": self.error_code,
            "error_message": None,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": str(len(self.media_urls)),
            "num_segments": str(_segments(self.body)),
            "price": None,
            "price_unit": "USD",
            "status": self.status,
            "subresource_uris": {"media": uri.removesuffix(".json") + "/Media.json"},
            "to": self.to,
            "uri": uri,
        }


@dataclass(frozen=True, kw_only=True)
class StatusCallback:
    """A status callback the emulator made."""

    url: str
    params: dict[str, str]
    signature: str
    # The receiver's HTTP status, or None when the URL could not be reached.
    response_status: int | None


@dataclass(frozen=True)
class _Fate:
    status: str
    error_code: int | None


class _TwilioError(Exception):
    """A request Twilio refuses; rendered as Twilio's error JSON by `_render_errors`."""

    def __init__(
        self, status: int, code: int, *, headers: Mapping[str, str] | None = None, **details: str
    ) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.headers = headers
        self.message = ERROR_MESSAGES[code].format(**details)


class TwilioEmulator(AiohttpEmulator):
    """Twilio's Messages API on 127.0.0.1; records `messages` and `callbacks` for tests, the
    latest `keep` of each (None: all). A message no longer kept can't be fetched (404), but its
    status callbacks are still made."""

    def __init__(
        self,
        *,
        accounts: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        callback_delay: float = 1.0,
        max_concurrent: int = 100,
        keep: int | None = None,
    ) -> None:
        # Closing cuts off held and in-flight requests rather than waiting them out.
        super().__init__(host=host, port=port, shutdown_timeout=0.01)
        # Account SID → auth token.
        self.accounts = dict(accounts or {})
        # What bounds each piece of state: the records hold at most `keep`; a message awaiting
        # its status callbacks is held by its callback task alone, until the last one is made;
        # `accounts` and `_fates` hold what the caller put there; `_in_flight` one count per
        # account; `_held` one entry per request held open by `holding_answers` (tests only).
        self.messages: Records[SentMessage] = Records(maxlen=keep)
        self.callbacks: Records[StatusCallback] = Records(maxlen=keep)
        self._callback_delay = callback_delay
        self._max_concurrent = max_concurrent
        self._in_flight: Counter[str] = Counter()
        self._fates: dict[str, _Fate] = {}
        # Headers of the 503 every send gets during an outage; None when Twilio is up.
        self._outage: dict[str, str] | None = None
        self._answering = asyncio.Event()
        self._answering.set()
        self._held: asyncio.Queue[None] = asyncio.Queue()

    def add_account(self, account_sid: str, auth_token: str) -> None:
        self.accounts[account_sid] = auth_token

    def script(self, number: str, *, status: str, error_code: int | None = None) -> None:
        """Make every later message to `number` end in `status` (with Twilio's `error_code`)."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}")
        if (status == "delivered") != (error_code is None):
            raise ValueError("undelivered and failed need an error code; delivered has none")
        self._fates[number] = _Fate(status, error_code)

    @contextlib.contextmanager
    def holding_answers(self) -> Iterator[None]:
        """Keep sends open until the block ends, so a test can fill the concurrency cap."""
        self._answering.clear()
        try:
            yield
        finally:
            self._answering.set()

    @contextlib.contextmanager
    def unavailable(self, *, retry_after: int | None = None) -> Iterator[None]:
        """Answer every send 503 (Twilio 20503) until the block ends, as during an outage."""
        self._outage = {} if retry_after is None else {"Retry-After": str(retry_after)}
        try:
            yield
        finally:
            self._outage = None

    async def held_request(self) -> None:
        """Wait until one more send is being held open by `holding_answers`."""
        await self._held.get()

    def routes(self, app: web.Application) -> None:
        app.middlewares.append(_render_errors)
        app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", self._create)
        app.router.add_get("/2010-04-01/Accounts/{account}/Messages/{sid}.json", self._fetch)

    # --- requests -------------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        account_sid = self._authenticate(request)
        if self._outage is not None:
            raise _TwilioError(503, 20503, headers=self._outage)
        if self._in_flight[account_sid] >= self._max_concurrent:
            raise _TwilioError(429, 20429)
        self._in_flight[account_sid] += 1
        try:
            form = await request.post()
            params = {name: [str(value) for value in form.getall(name)] for name in form}
            if not self._answering.is_set():
                self._held.put_nowait(None)
                await self._answering.wait()
            message = _validated(account_sid, params)
        finally:
            self._in_flight[account_sid] -= 1
        self.messages.append(message)
        self._callbacks.spawn(self._report(message, self._fates.get(message.to)))
        return web.json_response(message.resource(), status=201)

    async def _fetch(self, request: web.Request) -> web.Response:
        account_sid = self._authenticate(request)
        sid = request.match_info["sid"]
        for message in reversed(self.messages):
            if message.sid == sid and message.account_sid == account_sid:
                return web.json_response(message.resource())
        raise _TwilioError(404, 20404, path=request.path)

    def _authenticate(self, request: web.Request) -> str:
        account_sid = request.match_info["account"]
        token = self.accounts.get(account_sid)
        credentials = _basic_credentials(request.headers.get("Authorization", ""))
        if token is None or credentials != (account_sid, token):
            raise _TwilioError(401, 20003, headers=_CHALLENGE)
        return account_sid

    # --- status callbacks (§3.2) ----------------------------------------------------------------

    async def _report(self, message: SentMessage, fate: _Fate | None) -> None:
        """Walk the message to its final status, with one callback per change after creation."""
        fate = fate or _Fate("delivered", None)
        steps = ["queued"] if message.status == "accepted" else []
        steps += ["failed"] if fate.status == "failed" else ["sent", fate.status]
        # A Messaging Service picks the sender from its pool once the message is queued.
        message.from_ = message.from_ or POOL_NUMBER
        for status in steps:
            await asyncio.sleep(self._callback_delay)
            message.status = status
            if status == fate.status:
                message.error_code = fate.error_code
            if message.status_callback is not None:
                await self._call_back(message, message.status_callback)

    async def _call_back(self, message: SentMessage, url: str) -> None:
        params = {
            "AccountSid": message.account_sid,
            "ApiVersion": API_VERSION,
            "From": str(message.from_),
            "MessageSid": message.sid,
            "MessageStatus": message.status,
            "SmsSid": message.sid,
            "SmsStatus": message.status,
            "To": message.to,
        }
        if message.messaging_service_sid is not None:
            params["MessagingServiceSid"] = message.messaging_service_sid
        if message.error_code is not None:
            params["ErrorCode"] = str(message.error_code)
        if message.status in ("delivered", "undelivered"):
            params["RawDlrDoneDate"] = datetime.now(UTC).strftime("%y%m%d%H%M")
        signature = _signature(url, params, self.accounts[message.account_sid])
        response_status = await self._callbacks.post(
            url, data=params, headers={"X-Twilio-Signature": signature}
        )
        self.callbacks.append(
            StatusCallback(
                url=url, params=params, signature=signature, response_status=response_status
            )
        )


def _validated(account_sid: str, params: dict[str, list[str]]) -> SentMessage:
    """The message a valid form describes, or the error Twilio gives for the first problem."""

    def first(name: str) -> str | None:
        values = params.get(name)
        return values[0] if values else None

    to = first("To")
    body = first("Body") or ""
    media_urls = params.get("MediaUrl", [])
    messaging_service_sid = first("MessagingServiceSid")
    if not to:
        raise _TwilioError(400, 21604)
    if not first("From") and not messaging_service_sid:
        raise _TwilioError(400, 21603)
    if not body and not media_urls:
        raise _TwilioError(400, 21602)
    if len(body) > MAX_BODY_CHARS:
        raise _TwilioError(400, 21617)
    if not _E164.fullmatch(to):
        raise _TwilioError(400, 21211, to=to)
    if to in MAGIC_NUMBERS:
        raise _TwilioError(400, MAGIC_NUMBERS[to], to=to)
    return SentMessage(
        sid="SM" + secrets.token_hex(16),
        account_sid=account_sid,
        to=to,
        from_=first("From"),
        messaging_service_sid=messaging_service_sid,
        body=body,
        media_urls=media_urls,
        status_callback=first("StatusCallback"),
        params=params,
        # With a Messaging Service Twilio first accepts the message, then queues it (§3.1).
        status="accepted" if messaging_service_sid else "queued",
    )


@web.middleware
async def _render_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except _TwilioError as error:
        body = {
            "code": error.code,
            "message": error.message,
            "more_info": f"https://www.twilio.com/docs/errors/{error.code}",
            "status": error.status,
        }
        return web.json_response(body, status=error.status, headers=error.headers)
    return response


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """(username, password) of an HTTP Basic Authorization header, or None."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except ValueError:
        return None
    return username, password


def _signature(url: str, params: Mapping[str, str], auth_token: str) -> str:
    """X-Twilio-Signature (§3.4): base64 HMAC-SHA1 of the URL and the sorted name+value pairs."""
    signed = url + "".join(name + params[name] for name in sorted(params))
    mac = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def _segments(body: str) -> int:
    """SMS segments: 160 GSM characters (153 when split), 70 UCS-2 (67 when split).

    ASCII stands in for the GSM-7 alphabet; close enough for the count a test reads.
    """
    single, split = (160, 153) if body.isascii() else (70, 67)
    return 1 if len(body) <= single else math.ceil(len(body) / split)
