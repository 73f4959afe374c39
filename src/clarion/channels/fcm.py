"""Firebase Cloud Messaging over the HTTP v1 API (providers.md §2).

One POST per message (FCM has no batch API any more, §2.5) over a pooled keep-alive aiohttp
session, authorised by the service account's cached OAuth2 token. Every answer is classified
from FCM's `errorCode` (§2.3), never from the HTTP status alone: a 404 from a misrouted request
must not retire a token that only UNREGISTERED proves dead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, NamedTuple

import aiohttp
import msgspec

from clarion.channels.base import Message, Outcome, Result, refused
from clarion.channels.google_oauth import GrantError, GrantRefusedError, ServiceAccountTokens
from clarion.channels.http1 import PooledSession
from clarion.destinations import PERMISSIVE, DestinationNotAllowedError, DestinationPolicy

FCM_URL: Final = "https://fcm.googleapis.com"
# providers.md §2.2: at most 4096 bytes of message content (the target is not counted).
MAX_PAYLOAD_BYTES: Final = 4096
# providers.md §2.2: android.ttl is 0 to 4 weeks.
MAX_TTL_SECONDS: Final = 2_419_200
# providers.md §2.2: AndroidMessagePriority for the notification's Priority.
ANDROID_PRIORITY: Final = {"high": "HIGH", "low": "NORMAL"}
# providers.md §2.3: QUOTA_EXCEEDED wants a minimum initial delay of one minute when FCM names
# no Retry-After.
QUOTA_RETRY_AFTER: Final = 60.0
# Answers without an FcmError worth trying again: throttling, overload, proxies in between.
RETRYABLE_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


class _Rule(NamedTuple):
    outcome: Outcome
    meaning: str


# providers.md §2.3 (firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode): what each
# FcmError errorCode means for the delivery.
ERROR_RULES: Final[Mapping[str, _Rule]] = {
    "UNREGISTERED": _Rule(
        Outcome.DEAD_ADDRESS,
        "The app instance is no longer registered with FCM (uninstalled, or its token expired).",
    ),
    # "A registration token is tied to a certain group of senders … If you switch to a different
    # sender, the existing registration tokens won't work." The token can never receive messages
    # from this credential's project, so for the binding it is as dead as an unregistered one.
    "SENDER_ID_MISMATCH": _Rule(
        Outcome.DEAD_ADDRESS,
        "The token belongs to another Firebase project than this credential's.",
    ),
    "QUOTA_EXCEEDED": _Rule(
        Outcome.RETRY, "FCM throttled the sending rate (project, device or topic quota)."
    ),
    "UNAVAILABLE": _Rule(Outcome.RETRY, "FCM is overloaded and asked to try again later."),
    "INTERNAL": _Rule(Outcome.RETRY, "FCM hit an internal error."),
    "THIRD_PARTY_AUTH_ERROR": _Rule(
        Outcome.FAILED,
        "The Firebase project's APNs certificate/key or web-push key is missing or invalid.",
    ),
    # Deprecated alias of THIRD_PARTY_AUTH_ERROR.
    "APNS_AUTH_ERROR": _Rule(
        Outcome.FAILED,
        "The Firebase project's APNs certificate/key or web-push key is missing or invalid.",
    ),
    "INVALID_ARGUMENT": _Rule(Outcome.FAILED, "FCM rejected the message as invalid."),
}
# providers.md §2.3: INVALID_ARGUMENT retires the token only when the token is the problem.
INVALID_ADDRESS_TEXT: Final = "not a valid fcm registration token"
INVALID_ADDRESS_RULE: Final = _Rule(
    Outcome.DEAD_ADDRESS, "FCM does not recognise the address as a registration token."
)
# providers.md §2.3, last row: 401/403 without an FcmError concern our credential, not the token.
STATUS_RULES: Final[Mapping[int, _Rule]] = {
    401: _Rule(Outcome.FAILED, "FCM refused the service account's access token."),
    403: _Rule(
        Outcome.FAILED,
        "The service account may not send for this project (wrong project_id, missing IAM role "
        "or FCM API disabled).",
    ),
}
AUTH_ERROR_CODES: Final = frozenset({"THIRD_PARTY_AUTH_ERROR", "APNS_AUTH_ERROR"})


class _Detail(msgspec.Struct, rename={"type": "@type", "error_code": "errorCode"}):
    type: str = ""
    error_code: str | None = None


class _RpcStatus(msgspec.Struct):
    """The google.rpc.Status of an error answer."""

    code: int = 0
    message: str = ""
    status: str = ""
    details: list[_Detail] = msgspec.field(default_factory=list)

    @property
    def fcm_error(self) -> str | None:
        return next((detail.error_code for detail in self.details if detail.error_code), None)


class _ErrorBody(msgspec.Struct):
    error: _RpcStatus


class _Sent(msgspec.Struct):
    name: str


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    retry_after: str | None

    def error(self) -> _RpcStatus:
        try:
            return msgspec.json.decode(self.body, type=_ErrorBody).error
        except msgspec.DecodeError:
            return _RpcStatus(code=self.status)

    def refuses_access_token(self) -> bool:
        return self.status == 401 and self.error().fcm_error not in AUTH_ERROR_CODES


class FcmChannel:
    """Sends to FCM registration tokens of one Firebase project.

    A `session` given by the caller (e.g. shared by several credentials) is used as it is:
    `connections` and `timeout` only shape the session the channel makes for itself.
    """

    def __init__(
        self,
        *,
        service_account: Mapping[str, Any],
        base_url: str = FCM_URL,
        session: aiohttp.ClientSession | None = None,
        connections: int = 64,
        timeout: float = 10.0,
        destinations: DestinationPolicy = PERMISSIVE,
    ) -> None:
        self._tokens = ServiceAccountTokens(service_account)
        self._url = (
            f"{base_url.rstrip('/')}/v1/projects/{service_account['project_id']}/messages:send"
        )
        self._http = PooledSession(
            limit=connections,
            limit_per_host=connections,
            # Per socket operation, not in total: waiting for a free pooled connection under load
            # is not the provider being slow.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            session=session,
            destinations=destinations,
        )

    async def send(self, message: Message) -> Result:
        content = _content(message)
        if len(msgspec.json.encode(content)) > MAX_PAYLOAD_BYTES:
            return Result(
                outcome=Outcome.FAILED,
                error_message=f"payload too large: FCM accepts at most {MAX_PAYLOAD_BYTES} bytes",
            )
        body = msgspec.json.encode({"message": {**content, "token": message.address}})
        session = self._http.client()
        try:
            token = await self._tokens.access_token(session)
            reply = await self._post(session, body, token)
            if reply.refuses_access_token():
                # An expired or revoked token: one fresh grant, then believe the answer.
                self._tokens.invalidate(token)
                reply = await self._post(session, body, await self._tokens.access_token(session))
        except DestinationNotAllowedError as exc:
            return refused(exc)
        except GrantRefusedError as exc:
            return Result(
                outcome=Outcome.FAILED,
                error_code=exc.error,
                error_message=f"Google refused the service account: {exc}",
            )
        except GrantError as exc:
            return Result(outcome=Outcome.RETRY, error_message=str(exc))
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Result(outcome=Outcome.RETRY, error_message=f"FCM unreachable: {exc!r}")
        return _classify(reply)

    async def close(self) -> None:
        await self._http.close()

    async def _post(self, session: aiohttp.ClientSession, body: bytes, token: str) -> _Reply:
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json; charset=UTF-8",
            # providers.md §2.1: what the Admin SDK sends.
            "X-GOOG-API-FORMAT-VERSION": "2",
        }
        async with session.post(self._url, data=body, headers=headers) as response:
            return _Reply(
                status=response.status,
                body=await response.read(),
                retry_after=response.headers.get("Retry-After"),
            )


def _content(message: Message) -> dict[str, Any]:
    """The FCM v1 message without its target, completed from the delivery's settings.

    The payload's own android settings win; a collapse_key is only ever the payload's, since
    collapsing unrelated notifications would lose all but the last.
    """
    android = dict(message.payload.get("android") or {})
    android.setdefault("priority", ANDROID_PRIORITY.get(message.priority, "HIGH"))
    if message.expires_at is not None:
        android.setdefault("ttl", _ttl(message.expires_at))
    return {**message.payload, "android": android}


def _ttl(expires_at: datetime) -> str:
    # The store keeps naive UTC.
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    seconds = math.ceil((expires_at - datetime.now(UTC)).total_seconds())
    return f"{min(max(seconds, 0), MAX_TTL_SECONDS)}s"


def _classify(reply: _Reply) -> Result:
    if reply.status == 200:
        try:
            name: str | None = msgspec.json.decode(reply.body, type=_Sent).name
        except msgspec.DecodeError:
            name = None  # accepted all the same: a retry would send the message twice
        return Result(outcome=Outcome.ACCEPTED, provider_ref=name)
    error = reply.error()
    code = error.fcm_error or error.status or str(reply.status)
    if code == "INVALID_ARGUMENT" and INVALID_ADDRESS_TEXT in error.message.lower():
        rule = INVALID_ADDRESS_RULE
    elif code in ERROR_RULES:
        rule = ERROR_RULES[code]
    elif reply.status in STATUS_RULES:
        rule = STATUS_RULES[reply.status]
    elif reply.status in RETRYABLE_STATUSES:
        rule = _Rule(Outcome.RETRY, f"FCM answered HTTP {reply.status}.")
    else:
        rule = _Rule(Outcome.FAILED, f"FCM refused the message (HTTP {reply.status}).")
    retry_after = None
    if rule.outcome is Outcome.RETRY:
        retry_after = _seconds(reply.retry_after)
        if retry_after is None and code == "QUOTA_EXCEEDED":
            retry_after = QUOTA_RETRY_AFTER
    detail = f" FCM said: {error.message}" if error.message else ""
    return Result(
        outcome=rule.outcome,
        retry_after=retry_after,
        error_code=code,
        error_message=rule.meaning + detail,
    )


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After as a delay: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if retry_after is None:
        return None
    if retry_after.strip().isdigit():
        return float(retry_after)
    try:
        when = parsedate_to_datetime(retry_after)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
