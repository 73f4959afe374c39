"""The APNs channel: Apple's HTTP/2 provider API, with token (ES256 JWT) or certificate auth.

One channel per credential keeps one small HTTP/2 connection pool to APNs (reference/providers.md
§1.6: long-lived connections, many concurrent streams). Every answer, and every request that got
none, is classified with the tables below into the four outcomes of `clarion.channels.base`.
"""

from __future__ import annotations

import email.utils
import re
import ssl
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID

from clarion.channels.base import Message, Outcome, Result, refused
from clarion.channels.http2 import Header, Http2Client, Http2Error, Response, unindexed
from clarion.destinations import PERMISSIVE, DestinationNotAllowedError, DestinationPolicy

# providers.md §1.1
PRODUCTION_URL = "https://api.push.apple.com"
SANDBOX_URL = "https://api.sandbox.push.apple.com"

# providers.md §1.4: every push type we send (alert, background) is limited to 4 KB.
MAX_PAYLOAD_BYTES = 4096

# providers.md §1.2: a provider token may be renewed at most every 20 minutes and must be renewed
# within 60; APNs answers 403 ExpiredProviderToken to one older than an hour.
MIN_TOKEN_LIFETIME = 20 * 60.0
MAX_TOKEN_LIFETIME = 60 * 60.0

# providers.md §1.5. Apple: "Don't retry … BadDeviceToken, DeviceTokenNotForTopic, ExpiredToken,
# Unregistered": the token will never work again. Any 410 means the token is gone.
DEAD_TOKEN_STATUS = 410
DEAD_TOKEN_REASONS = frozenset(
    {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"}
)
# providers.md §1.5: 429 (TooManyRequests, TooManyProviderTokenUpdates) and every 5xx
# (InternalServerError, ServiceUnavailable, Shutdown) are transient; so is an idle connection.
RETRY_STATUS = 429
RETRY_REASONS = frozenset({"IdleTimeout"})
# providers.md §1.5: the provider token is over an hour old: renew it and resend once.
RENEW_AND_RESEND_REASONS = frozenset({"ExpiredProviderToken"})

# providers.md §1.5: what each reason means, for `Result.error_message`.
REASON_MESSAGES = {
    "BadDeviceToken": "The device token is malformed or belongs to the other APNs environment.",
    "DeviceTokenNotForTopic": "The device token belongs to another app.",
    "Unregistered": "The device token is no longer active for this app.",
    "ExpiredToken": "The device token has expired.",
    "PayloadTooLarge": f"The payload is larger than APNs' {MAX_PAYLOAD_BYTES} bytes.",
    "TooManyRequests": "Too many notifications to this device: APNs asks to slow down.",
    "TooManyProviderTokenUpdates": "The provider token changed too often on one connection.",
    "InternalServerError": "APNs had an internal error.",
    "ServiceUnavailable": "APNs is unavailable.",
    "Shutdown": "The APNs server is shutting down.",
    "IdleTimeout": "The connection to APNs was idle for too long.",
    "ExpiredProviderToken": "APNs finds the provider token over an hour old: check the clock.",
    "InvalidProviderToken": "APNs rejects the provider token: check key id, team id and key.",
    "MissingProviderToken": "APNs got neither a provider token nor a push certificate.",
    "BadEnvironmentKeyInToken": "The signing key is not enabled for this APNs environment.",
    "UnrelatedKeyIdInToken": "The signing key changed on an open connection.",
    "BadCertificate": "APNs rejects the push certificate.",
    "BadCertificateEnvironment": "The push certificate is for the other APNs environment.",
    "Forbidden": "APNs does not allow this.",
    "TopicDisallowed": "This credential may not push to the app's topic.",
    "BadTopic": "The apns-topic is invalid.",
    "MissingTopic": "The apns-topic header is missing.",
    "BadCollapseId": "The collapse id is longer than 64 bytes.",
    "BadExpirationDate": "The expiration date is invalid.",
    "BadMessageId": "The apns-id is not a UUID.",
    "BadPriority": "The priority is invalid for this push type.",
    "DuplicateHeaders": "A header was sent twice.",
    "InvalidPushType": "The apns-push-type is invalid.",
    "MissingDeviceToken": "The device token is missing.",
    "PayloadEmpty": "The payload is empty.",
    "BadPath": "The request path is invalid.",
    "MethodNotAllowed": "APNs only accepts POST.",
}

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# `aps` keys that show something to the user; without them a content-available push is silent.
_VISIBLE_APS_KEYS = frozenset({"alert", "badge", "sound"})
_ALERT = (b"apns-push-type", b"alert")
_BACKGROUND = (b"apns-push-type", b"background")
_PRIORITY_HIGH = (b"apns-priority", b"10")
_PRIORITY_LOW = (b"apns-priority", b"5")
_error_decoder = msgspec.json.Decoder()


class ApnsChannel:
    """Sends to APNs with one credential: a `.p8` signing key, or a push certificate.

    Token auth needs `key_id`, `team_id`, `bundle_id` and the key as `private_key` (PEM).
    Certificate auth needs `certificate` and its `private_key` (PEM); the topic is the
    certificate's UID unless `bundle_id` says otherwise. `base_url` and `ssl_context` aim the
    channel elsewhere (an emulator, a proxy), where `destinations` allows (a private `base_url`
    fails every send with DestinationNotAllowed); `clock` exists so tests can age provider
    tokens.
    """

    def __init__(
        self,
        *,
        private_key: str | bytes,
        key_id: str | None = None,
        team_id: str | None = None,
        bundle_id: str | None = None,
        certificate: str | bytes | None = None,
        sandbox: bool = False,
        base_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        token_lifetime: float = 40 * 60.0,
        max_connections: int = 4,
        clock: Callable[[], float] = time.time,
        destinations: DestinationPolicy = PERMISSIVE,
    ) -> None:
        context = ssl_context or ssl.create_default_context()
        self._provider_token: _ProviderToken | None = None
        if certificate is not None:
            certificate_pem = _pem(certificate)
            bundle_id = bundle_id or _certificate_topic(certificate_pem)
            _load_client_certificate(context, certificate_pem, _pem(private_key))
        elif key_id and team_id:
            self._provider_token = _ProviderToken(
                key_id=key_id,
                team_id=team_id,
                private_key=_pem(private_key),
                lifetime=token_lifetime,
                clock=clock,
            )
        else:
            raise ValueError("APNs needs key_id and team_id (token auth) or a certificate")
        if not bundle_id:
            raise ValueError("APNs needs the app's bundle_id as its topic")
        self._topic: Header = (b"apns-topic", bundle_id.encode())
        self._timeout = timeout
        self._client = Http2Client(
            base_url or (SANDBOX_URL if sandbox else PRODUCTION_URL),
            ssl_context=context,
            max_connections=max_connections,
            request_timeout=timeout,
            destinations=destinations,
        )

    @property
    def url(self) -> str:
        return self._client.origin

    async def send(self, message: Message) -> Result:
        body = msgspec.json.encode(message.payload)
        if len(body) > MAX_PAYLOAD_BYTES:
            return Result(
                outcome=Outcome.FAILED,
                error_code="PayloadTooLarge",
                error_message=f"The payload is {len(body)} bytes, over APNs' {MAX_PAYLOAD_BYTES}.",
            )
        path = "/3/device/" + message.address
        headers = self._headers(message)
        if self._provider_token is None:  # the TLS client certificate authenticates
            answer = await self._post(path, headers, body)
        else:
            answer = await self._post_with_token(self._provider_token, path, headers, body)
        return answer if isinstance(answer, Result) else _classify(answer)

    async def close(self) -> None:
        await self._client.close()

    def _headers(self, message: Message) -> list[Header]:
        """The apns-* headers of providers.md §1.3 for one message."""
        background = _is_background(message.payload)
        headers = [
            self._topic,
            _BACKGROUND if background else _ALERT,
            _PRIORITY_LOW if background or message.priority == "low" else _PRIORITY_HIGH,
        ]
        if message.expires_at is not None:
            headers.append((b"apns-expiration", b"%d" % _unix_seconds(message.expires_at)))
        if _UUID.fullmatch(message.key):
            # Unique per request: kept out of the HPACK table (perf-limits.md).
            headers.append(unindexed(b"apns-id", message.key.lower().encode()))
        return headers

    async def _post_with_token(
        self, provider_token: _ProviderToken, path: str, headers: list[Header], body: bytes
    ) -> Response | Result:
        """Token auth: a token APNs calls expired is renewed, if Apple allows it yet, and the
        request sent once more."""
        token = provider_token.current()
        answer = await self._post(path, [(b"authorization", token), *headers], body)
        if (
            isinstance(answer, Response)
            and _reason(answer) in RENEW_AND_RESEND_REASONS
            and provider_token.renew(rejected=token)
        ):
            renewed = provider_token.current()
            answer = await self._post(path, [(b"authorization", renewed), *headers], body)
        return answer

    async def _post(self, path: str, headers: list[Header], body: bytes) -> Response | Result:
        try:
            return await self._client.request(
                "POST", path, headers=headers, body=body, index_path=False
            )
        except TimeoutError:  # the client's request timeout
            return _unanswered("Timeout", f"No answer from APNs within {self._timeout:g} s.")
        except DestinationNotAllowedError as error:
            return refused(error)
        except Http2Error as error:
            goaway_reason = _decode_error(error.debug_data).get("reason")
            code = str(goaway_reason) if goaway_reason else type(error).__name__
            return _unanswered(code, f"No answer from APNs: {error}.")


class _ProviderToken:
    """The ES256 provider JWT: shared by all sends, renewed within Apple's 20 to 60 minutes."""

    def __init__(
        self,
        *,
        key_id: str,
        team_id: str,
        private_key: bytes,
        lifetime: float,
        clock: Callable[[], float],
    ) -> None:
        if not MIN_TOKEN_LIFETIME <= lifetime < MAX_TOKEN_LIFETIME:
            raise ValueError("APNs provider tokens must be renewed every 20 to 60 minutes")
        key = load_pem_private_key(private_key, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("an APNs signing key is a P-256 EC key (.p8)")
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._lifetime = lifetime
        self._clock = clock
        self._issued_at = 0.0
        self._header = b""

    def current(self) -> bytes:
        """The `authorization` header value, renewed once it reaches its lifetime."""
        if self._clock() - self._issued_at >= self._lifetime:
            self._issue()
        return self._header

    def renew(self, *, rejected: bytes) -> bool:
        """APNs called `rejected` expired: is there a different token to resend with now?

        A token is never replaced sooner than Apple allows (that earns 429
        TooManyProviderTokenUpdates), so a young token called expired means a wrong clock.
        """
        if rejected != self._header:
            return True  # a concurrent send renewed it already
        if self._clock() - self._issued_at < MIN_TOKEN_LIFETIME:
            return False
        self._issue()
        return True

    def _issue(self) -> None:
        now = self._clock()
        token = jwt.encode(
            {"iss": self._team_id, "iat": int(now)},
            self._key,
            algorithm="ES256",
            headers={"kid": self._key_id},
        )
        self._issued_at = now
        self._header = b"bearer " + token.encode()


def _classify(response: Response) -> Result:
    """An APNs answer as an outcome, per the tables above (providers.md §1.5)."""
    if response.status == 200:
        return Result(outcome=Outcome.ACCEPTED, provider_ref=response.headers.get("apns-id"))
    error = _error_body(response)
    reason = str(error.get("reason") or response.status)
    message = REASON_MESSAGES.get(reason, f"APNs answered {response.status} {reason}.")
    if response.status == DEAD_TOKEN_STATUS or reason in DEAD_TOKEN_REASONS:
        if isinstance(error.get("timestamp"), int):
            since = datetime.fromtimestamp(error["timestamp"] / 1000, UTC)
            message += f" APNs knows this since {since:%Y-%m-%d %H:%M:%S} UTC."
        return Result(outcome=Outcome.DEAD_ADDRESS, error_code=reason, error_message=message)
    if response.status == RETRY_STATUS or response.status >= 500 or reason in RETRY_REASONS:
        return Result(
            outcome=Outcome.RETRY,
            retry_after=_retry_after(response.headers.get("retry-after")),
            error_code=reason,
            error_message=message,
        )
    return Result(outcome=Outcome.FAILED, error_code=reason, error_message=message)


def _unanswered(code: str, message: str) -> Result:
    """No answer (timeout, connection lost, GOAWAY): always worth another try later."""
    return Result(outcome=Outcome.RETRY, error_code=code, error_message=message)


def _reason(response: Response) -> str | None:
    reason = _error_body(response).get("reason")
    return str(reason) if reason else None


def _error_body(response: Response) -> dict[str, Any]:
    return _decode_error(response.body) if response.status != 200 else {}


def _decode_error(body: bytes) -> dict[str, Any]:
    """APNs' `{"reason": …, "timestamp": …}`; anything else counts as no detail."""
    try:
        decoded = _error_decoder.decode(body) if body else {}
    except msgspec.DecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _is_background(payload: dict[str, Any]) -> bool:
    """Only `content-available`, nothing to show: a background push (providers.md §1.3)."""
    aps = payload.get("aps")
    return (
        isinstance(aps, dict)
        and aps.get("content-available") == 1
        and not _VISIBLE_APS_KEYS & aps.keys()
    )


def _unix_seconds(moment: datetime) -> int:
    """Clarion stores naive datetimes in UTC (clarion.store.clock)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0, int(moment.timestamp()))


def _pem(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _certificate_topic(certificate_pem: bytes) -> str | None:
    """A push certificate names its app in the subject's UID (providers.md §1.2)."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.USER_ID):
        return str(attribute.value)
    return None


def _load_client_certificate(context: ssl.SSLContext, certificate: bytes, key: bytes) -> None:
    """`ssl` loads certificates only from files: use a private temporary directory."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "client.pem"
        path.write_bytes(certificate + b"\n" + key)
        context.load_cert_chain(path)
