"""Web Push: RFC 8030 delivery, RFC 8291 message encryption, RFC 8292 VAPID (providers.md §6).

The binding address is the browser's PushSubscription (clarion.addresses): the push service's
endpoint URL plus the browser's P-256 key (`p256dh`) and 16-byte `auth` secret. Each push is
encrypted to those keys with a fresh sender key (aes128gcm, one record) and POSTed to the
endpoint, on whichever push service the browser chose — FCM, Mozilla autopush, Apple, WNS — so
one channel talks to many hosts over one pooled session. The VAPID header is signed once per
push-service origin and reused until shortly before it expires, not once per message.
"""

from __future__ import annotations

import base64
import re
import ssl
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import http_ece  # type: ignore[import-untyped]
import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.channels.base import Message, Outcome, Result, refused
from clarion.channels.http1 import PooledSession, retry_after_seconds
from clarion.destinations import PERMISSIVE, DestinationNotAllowedError, DestinationPolicy

# Push services must accept 4096 bytes of body (RFC 8030 §7.2); aes128gcm adds a 86-byte header
# (salt 16, record size 4, key id length 1, sender key 65), a padding delimiter and a 16-byte tag.
MAX_BODY_BYTES: Final = 4096
MAX_PLAINTEXT_BYTES: Final = MAX_BODY_BYTES - 86 - 1 - 16
# Twilio's default and maximum TTL, for a message without an expiry.
DEFAULT_TTL: Final = 2_419_200
# A notification's Priority as RFC 8030 §5.3 Urgency: `high` may wake a device on low battery;
# `low` waits until it is on power or Wi-Fi.
URGENCY: Final = {"high": "high", "low": "low"}
# VAPID JWTs are signed for 12 hours and re-signed with an hour left: Apple refuses an `exp`
# more than 24 hours ahead (providers.md §6), and a push service's clock may run ahead of ours.
VAPID_LIFETIME: Final = 12 * 3600
VAPID_REFRESH_MARGIN: Final = 3600
# Distinct push-service origins whose VAPID header is kept; browsers use a handful.
VAPID_CACHE_SIZE: Final = 1024

# RFC 8030 §7.3 and the services' documentation (providers.md §6): the subscription expired or
# was never valid (404), or the user unsubscribed (410). Retire the binding.
GONE_STATUSES: Final = frozenset({404, 410})
PAYLOAD_TOO_LARGE: Final = 413
TOO_MANY_REQUESTS: Final = 429
VAPID_REFUSED: Final = frozenset({401, 403})


class _Keys(msgspec.Struct):
    p256dh: str
    auth: str


class _Subscription(msgspec.Struct):
    endpoint: str
    keys: _Keys


_subscription_decoder = msgspec.json.Decoder(_Subscription)
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")


class VapidSigner:
    """RFC 8292 `Authorization: vapid t=<JWT>, k=<public key>` headers, one per origin."""

    def __init__(
        self, *, private_key: str, subject: str, clock: Callable[[], float] = time.time
    ) -> None:
        """`private_key` is the raw 32-byte P-256 scalar, base64url (what the webpush credential
        stores); `subject` the operator's contact, a mailto: or https: URL."""
        raw = _b64decode(private_key)
        if len(raw) != 32:
            raise ValueError("a VAPID private key is 32 bytes, base64url-encoded")
        self._key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
        self._subject = subject
        self._clock = clock
        self.public_key = _b64encode(
            self._key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )
        self._headers: dict[str, tuple[str, int]] = {}

    def authorization(self, origin: str) -> str:
        """The header for a push service at `origin` (`scheme://host[:port]`, the JWT's aud)."""
        now = self._clock()
        cached = self._headers.get(origin)
        if cached is not None and cached[1] - VAPID_REFRESH_MARGIN > now:
            return cached[0]
        expires = int(now) + VAPID_LIFETIME
        claims = {"aud": origin, "exp": expires, "sub": self._subject}
        token = jwt.encode(claims, self._key, algorithm="ES256")
        header = f"vapid t={token}, k={self.public_key}"
        if len(self._headers) >= VAPID_CACHE_SIZE:
            self._headers.clear()
        self._headers[origin] = (header, expires)
        return header


class WebPushChannel:
    """Sends web pushes with one VAPID key pair (one webpush credential)."""

    def __init__(
        self,
        *,
        vapid_private_key: str,
        subject: str,
        push_service_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        connections_per_host: int = 64,
        clock: Callable[[], float] = time.time,
        destinations: DestinationPolicy = PERMISSIVE,
    ) -> None:
        """`clock` (Unix seconds) dates the VAPID JWTs and counts down the TTL.
        `push_service_url` sends every push to that origin instead of its endpoint's, the
        endpoint's path kept: how the sandbox aims any subscription at its emulator.
        `ssl_context` is the trust for that origin (the emulator's test CA)."""
        self._vapid = VapidSigner(private_key=vapid_private_key, subject=subject, clock=clock)
        self._clock = clock
        self._push_service_url = push_service_url.rstrip("/") if push_service_url else None
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._http = PooledSession(
            # Many push services, each with its own pool: FCM, Mozilla, Apple, WNS hosts.
            limit=4 * connections_per_host,
            limit_per_host=connections_per_host,
            # Per socket operation, not in total: waiting for a pooled connection under load is
            # not the push service being slow.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
            destinations=destinations,
        )

    @property
    def vapid_public_key(self) -> str:
        """What a page passes to `pushManager.subscribe({applicationServerKey})`."""
        return self._vapid.public_key

    async def send(self, message: Message) -> Result:
        try:
            subscription = _subscription_decoder.decode(message.address)
            p256dh, auth = _b64decode(subscription.keys.p256dh), _b64decode(subscription.keys.auth)
        except (msgspec.DecodeError, ValueError):
            return Result(
                outcome=Outcome.DEAD_ADDRESS,
                error_message="not a PushSubscription JSON with endpoint, p256dh and auth",
            )
        plaintext = msgspec.json.encode(message.payload)
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            return Result(
                outcome=Outcome.FAILED,
                error_code=str(PAYLOAD_TOO_LARGE),
                error_message=f"payload too large: web push carries at most "
                f"{MAX_PLAINTEXT_BYTES} bytes of JSON, this one is {len(plaintext)}",
            )
        try:
            body = encrypt(plaintext, p256dh=p256dh, auth=auth)
        except (ValueError, http_ece.ECEException) as exc:
            return Result(
                outcome=Outcome.DEAD_ADDRESS,
                error_message=f"cannot encrypt to this subscription's keys: {exc}",
            )
        url, origin = self._target(subscription.endpoint)
        headers = {
            "TTL": str(_ttl(message.expires_at, now=self._clock())),
            "Urgency": URGENCY.get(message.priority, "normal"),
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Authorization": self._vapid.authorization(origin),
        }
        if topic := _topic(message.key):
            headers["Topic"] = topic
        try:
            async with self._http.client().post(
                url, data=body, headers=headers, ssl=self._ssl
            ) as response:
                text = await response.text(errors="replace")
                return _classify(response.status, response.headers, text)
        except DestinationNotAllowedError as exc:
            return refused(exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Result(outcome=Outcome.RETRY, error_message=f"push service unreachable: {exc!r}")

    async def close(self) -> None:
        await self._http.close()

    def _target(self, endpoint: str) -> tuple[str, str]:
        """The URL to POST to and its origin, the VAPID audience (RFC 8292 §2)."""
        parts = urlsplit(endpoint)
        if self._push_service_url is not None:
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            return self._push_service_url + path, self._push_service_url
        host = parts.netloc.rpartition("@")[2]
        return endpoint, f"{parts.scheme}://{host}"


def encrypt(plaintext: bytes, *, p256dh: bytes, auth: bytes) -> bytes:
    """RFC 8291: ECDH with a sender key made for this message alone, HKDF with the browser's
    auth secret, one aes128gcm record whose header carries the sender's public key."""
    sender = ec.generate_private_key(ec.SECP256R1())
    body: bytes = http_ece.encrypt(
        plaintext,
        private_key=sender,
        dh=p256dh,
        auth_secret=auth,
        version="aes128gcm",
        rs=MAX_BODY_BYTES,
    )
    return body


def _classify(status: int, headers: Mapping[str, str], text: str) -> Result:
    """One push service answer in the engine's vocabulary (providers.md §6, RFC 8030 §5)."""
    if 200 <= status < 300:
        # 201 Created with the push message resource in Location; some services answer 200/202.
        return Result(outcome=Outcome.ACCEPTED, provider_ref=headers.get("Location"))
    said = " ".join(text.split())[:300]
    detail = f" The push service said: {said}" if said else ""
    code = str(status)
    if status in GONE_STATUSES:
        meaning = "The subscription has expired or the user unsubscribed."
        return Result(outcome=Outcome.DEAD_ADDRESS, error_code=code, error_message=meaning + detail)
    if status == TOO_MANY_REQUESTS or status >= 500:
        return Result(
            outcome=Outcome.RETRY,
            retry_after=retry_after_seconds(headers.get("Retry-After")),
            error_code=code,
            error_message=f"The push service answered HTTP {status}.{detail}",
        )
    if status == PAYLOAD_TOO_LARGE:
        meaning = "The push service refuses a payload this large."
    elif status in VAPID_REFUSED:
        meaning = (
            "The push service refused the VAPID signature: check the webpush credential's keys "
            "and Subject, and that the page subscribed with this credential's public key."
        )
    else:
        meaning = f"The push service refused the message (HTTP {status})."
    return Result(outcome=Outcome.FAILED, error_code=code, error_message=meaning + detail)


def _ttl(expires_at: datetime | None, *, now: float) -> int:
    """Seconds the push service may hold the message for an offline browser."""
    if expires_at is None:
        return DEFAULT_TTL
    # The store keeps naive UTC.
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    return max(0, int(expires_at.timestamp() - now))


def _topic(key: str) -> str | None:
    """The delivery's key as its Topic (≤ 32 base64url characters, RFC 8030 §5.4): a retry of a
    push whose answer was lost replaces the copy still waiting for the browser, rather than
    showing the notification twice."""
    topic = key.replace("-", "")
    return topic if _TOPIC.fullmatch(topic) else None


def _b64decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
