"""A local Web Push service (RFC 8030) that also plays the browsers subscribed to it.

It hands out subscriptions — an https endpoint on itself plus a browser key pair and auth
secret — and keeps the private halves, so it can decrypt every push (RFC 8291) and tests assert
the plaintext the service worker would get. It checks what a real push service checks
(providers.md §6, §10.6): the VAPID JWT (ES256 by the `k` key, `aud` = its origin, `exp` within
24 h, a mailto:/https: `sub`, `k` = the key a restricted subscription was made with), a `TTL`,
`Content-Encoding: aes128gcm`, `Urgency` and `Topic` values, and the 4096-byte body limit.

Endpoints script the answer: a last path segment starting `dead` is an unsubscribed browser
(410), `bad` an unknown subscription (404), `slow` is answered late; `script()` sets any status
(429 with Retry-After, 413, 5xx) for one endpoint. With `accept_unknown` (the sandbox) a push to
a subscription it did not issue is accepted and recorded without plaintext.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import http_ece  # type: ignore[import-untyped]
import jwt
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.emulators.http_server import AiohttpEmulator
from clarion.emulators.records import Records

MAX_BODY_BYTES = 4096
MAX_JWT_LIFETIME = 24 * 3600
URGENCIES = ("very-low", "low", "normal", "high")
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Verified VAPID tokens kept, so a cached header costs one lookup, not one ECDSA verification.
_TOKEN_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Subscription:
    """What `pushManager.subscribe()` resolves to in a browser, as its `toJSON()` spells it."""

    endpoint: str
    p256dh: str
    auth: str

    def address(self) -> str:
        """The JSON a page posts to its server: a `webpush` binding's address."""
        return json.dumps(
            {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}
        )


@dataclass(frozen=True, kw_only=True)
class PushMessage:
    """A push the emulator accepted, as the service stored it and the browser decrypted it."""

    endpoint: str
    ttl: int
    urgency: str
    topic: str | None
    # The VAPID JWT's `sub` (the sender's contact), None for an unsigned push.
    subject: str | None
    body: bytes
    # What the service worker's `event.data` holds; None when the emulator does not hold the
    # subscription's keys (accept_unknown) or could not decrypt (see `decrypt_error`).
    plaintext: bytes | None
    decrypt_error: str | None = None

    def json(self) -> Any:
        if self.plaintext is None:
            raise ValueError(f"no plaintext for this push: {self.decrypt_error or 'unknown keys'}")
        return json.loads(self.plaintext)


@dataclass(frozen=True, kw_only=True)
class Reply:
    status: int
    retry_after: int | None = None
    message: str = ""


@dataclass
class _Browser:
    """The browser's half of a subscription: what only it knows."""

    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    # The applicationServerKey the subscription is restricted to (RFC 8292 §3.2), if any.
    server_key: str | None
    unsubscribed: bool = False


class _RefusedError(Exception):
    """A push the service refuses: rendered as autopush's error JSON by `_push`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # Apple's `{"reason": "BadJwtToken"}`, beside autopush's fields.
        self.reason = reason
        self.headers = headers or {}


class WebPushEmulator(AiohttpEmulator):
    """A push service on https://127.0.0.1 (trust `ca`, or use `client_ssl_context()`)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        slow_delay: float = 5.0,
        accept_unknown: bool = False,
        strict_subject: bool = False,
        clock: Callable[[], float] = time.time,
        keep: int | None = None,
    ) -> None:
        """`strict_subject` refuses a VAPID `sub` Apple refuses (a malformed mailto:, a
        localhost contact) with 403 BadJwtToken. `clock` is the push service's time, for JWT
        expiry checks. `keep` is how many of the latest pushes `received` keeps (None: all);
        `pending()` only sees those."""
        self.ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(host, "localhost").configure_cert(context)
        # Closing cuts off `slow…` answers rather than waiting them out.
        super().__init__(host=host, port=port, shutdown_timeout=0.01, ssl_context=context)
        # What bounds each piece of state: `received` holds at most `keep`; `_browsers` one
        # entry per `subscribe()`, `_scripts` what the caller scripted; `_verified` at most
        # _TOKEN_CACHE_SIZE tokens.
        self.received: Records[PushMessage] = Records(maxlen=keep)
        self._slow_delay = slow_delay
        self._accept_unknown = accept_unknown
        self._strict_subject = strict_subject
        self._clock = clock
        self._browsers: dict[str, _Browser] = {}
        self._scripts: dict[str, Reply] = {}
        # token → (its `k`, its `sub`, its `exp`), for tokens whose signature checked out.
        self._verified: dict[str, tuple[str, str, float]] = {}

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this emulator's certificate."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def subscribe(
        self, *, application_server_key: str | None = None, prefix: str = ""
    ) -> Subscription:
        """A new subscription, as a browser gets from `pushManager.subscribe()`: its endpoint
        on this service, its key pair and auth secret. With `application_server_key` (a VAPID
        public key, base64url) only pushes signed with that key are accepted. `prefix` starts
        the endpoint's last segment, e.g. `dead` for a browser that has unsubscribed."""
        private_key = ec.generate_private_key(ec.SECP256R1())
        auth = secrets.token_bytes(16)
        path = f"/push/{prefix}{secrets.token_urlsafe(16)}"
        self._browsers[path] = _Browser(private_key, auth, application_server_key)
        public = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return Subscription(
            endpoint=self.url + path, p256dh=_b64encode(public), auth=_b64encode(auth)
        )

    def unsubscribe(self, endpoint: str) -> None:
        """The user revoked permission: later pushes get 410 Gone."""
        self._browsers[urlsplit(endpoint).path].unsubscribed = True

    def script(
        self, endpoint: str, *, status: int, retry_after: int | None = None, message: str = ""
    ) -> None:
        """Answer every later push to `endpoint` with `status` (and Retry-After)."""
        self._scripts[urlsplit(endpoint).path] = Reply(
            status=status, retry_after=retry_after, message=message
        )

    def pending(self, endpoint: str) -> list[PushMessage]:
        """What the browser would receive on its next connection: a later push with the same
        Topic replaces an earlier one still stored (RFC 8030 §5.4)."""
        kept: list[PushMessage] = []
        for message in (m for m in self.received if m.endpoint == endpoint):
            if message.topic is not None:
                kept = [m for m in kept if m.topic != message.topic]
            kept.append(message)
        return kept

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{path:.*}", self._push)

    # --- RFC 8030 §5: requesting push message delivery ----------------------------------------

    async def _push(self, request: web.Request) -> web.Response:
        try:
            return await self._accept(request)
        except _RefusedError as refusal:
            body: dict[str, Any] = {
                "code": refusal.status,
                "error": HTTPStatus(refusal.status).phrase,
                "message": refusal.message,
            }
            if refusal.reason is not None:
                body["reason"] = refusal.reason
            return web.json_response(body, status=refusal.status, headers=refusal.headers)

    async def _accept(self, request: web.Request) -> web.Response:
        path = request.path
        scripted = self._scripts.get(path)
        if scripted is not None:
            headers = (
                {} if scripted.retry_after is None else {"Retry-After": str(scripted.retry_after)}
            )
            raise _RefusedError(
                scripted.status, scripted.message or "scripted answer", headers=headers
            )
        segment = path.rpartition("/")[2]
        if segment.startswith("dead"):
            raise _RefusedError(410, "the user unsubscribed: remove this subscription")
        browser = self._browsers.get(path)
        if segment.startswith("bad") or (browser is None and not self._accept_unknown):
            raise _RefusedError(404, "no such subscription: remove it")
        if browser is not None and browser.unsubscribed:
            raise _RefusedError(410, "the user unsubscribed: remove this subscription")
        ttl = _ttl(request.headers.get("TTL"))
        urgency = request.headers.get("Urgency", "normal")
        if urgency not in URGENCIES:
            raise _RefusedError(400, f"Urgency must be one of {', '.join(URGENCIES)}")
        topic = request.headers.get("Topic")
        if topic is not None and not _TOPIC.fullmatch(topic):
            raise _RefusedError(
                400, "Topic must be at most 32 characters of the base64url alphabet"
            )
        subject = self._authenticate(request.headers.get("Authorization"), browser)
        body = await request.read()
        if len(body) > MAX_BODY_BYTES:
            raise _RefusedError(413, f"the body is {len(body)} bytes; at most {MAX_BODY_BYTES}")
        if body and request.headers.get("Content-Encoding") != "aes128gcm":
            raise _RefusedError(
                400, "an encrypted body needs Content-Encoding: aes128gcm (RFC 8291)"
            )
        if segment.startswith("slow"):
            await asyncio.sleep(self._slow_delay)
        plaintext, error = _decrypt(body, browser) if body else (b"", None)
        self.received.append(
            PushMessage(
                endpoint=self.url + path,
                ttl=ttl,
                urgency=urgency,
                topic=topic,
                subject=subject,
                body=body,
                plaintext=plaintext,
                decrypt_error=error,
            )
        )
        location = f"{self.url}/message/{secrets.token_urlsafe(16)}"
        return web.Response(status=201, headers={"Location": location, "TTL": str(ttl)})

    def _authenticate(self, header: str | None, browser: _Browser | None) -> str | None:
        """The JWT's `sub` once `vapid t=…, k=…` checks out (RFC 8292 §3, §4.2); a restricted
        subscription must be signed with the key it was made with."""
        restricted = browser is not None and browser.server_key is not None
        if header is None:
            if restricted:
                raise _RefusedError(401, "this subscription needs a VAPID Authorization header")
            return None
        scheme, _, rest = header.partition(" ")
        params = dict(part.strip().partition("=")[::2] for part in rest.split(","))
        token, key = params.get("t"), params.get("k")
        if scheme.lower() != "vapid" or not token or not key:
            raise _RefusedError(401, "Authorization must be 'vapid t=<JWT>, k=<public key>'")
        if restricted and browser is not None and key != browser.server_key:
            raise _RefusedError(403, "k is not the key this subscription was created with")
        key_in_token, subject, expires = self._verified.get(token) or self._verify(token, key)
        if key_in_token != key:
            raise _RefusedError(403, "the JWT was not signed with k", reason="BadJwtToken")
        now = self._clock()
        if expires <= now:
            raise _RefusedError(403, "the VAPID JWT has expired", reason="BadJwtToken")
        if expires > now + MAX_JWT_LIFETIME:
            raise _RefusedError(
                403, "the VAPID JWT expires more than 24 hours ahead", reason="BadJwtToken"
            )
        return subject

    def _verify(self, token: str, key: str) -> tuple[str, str, float]:
        try:
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), _b64decode(key)
            )
            claims = jwt.decode(
                token,
                public_key,
                algorithms=["ES256"],
                audience=self.url,
                options={"require": ["aud", "exp", "sub"], "verify_exp": False},
            )
        except (ValueError, jwt.InvalidTokenError) as exc:
            raise _RefusedError(403, f"invalid VAPID JWT: {exc}", reason="BadJwtToken") from exc
        subject, expires = claims["sub"], claims["exp"]
        if not isinstance(subject, str) or not _valid_subject(subject, strict=self._strict_subject):
            raise _RefusedError(
                403, "the VAPID sub must be a mailto: or https: contact", reason="BadJwtToken"
            )
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise _RefusedError(403, "the VAPID exp must be a number", reason="BadJwtToken")
        if len(self._verified) >= _TOKEN_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (key, subject, expires)
        return key, subject, expires


def _ttl(value: str | None) -> int:
    """The TTL header is mandatory (providers.md §6; autopush errno 111 when missing)."""
    if value is None:
        raise _RefusedError(400, "Missing TTL header")
    if not value.isdigit():
        raise _RefusedError(400, "TTL must be a whole number of seconds")
    return int(value)


def _valid_subject(subject: str, *, strict: bool) -> bool:
    """RFC 8292 §2.1 asks for a mailto: or https: URL. Apple also refuses spaces, brackets and
    localhost contacts (pywebpush issue #175)."""
    if not subject.startswith(("mailto:", "https://")):
        return False
    if not strict:
        return True
    if subject.startswith("mailto:"):
        match = re.fullmatch(r"mailto:[^\s<>@]+@([^\s<>@]+)", subject)
        host = match.group(1) if match else None
    else:
        host = urlsplit(subject).hostname
    return host is not None and host != "localhost" and not host.startswith("127.")


def _decrypt(body: bytes, browser: _Browser | None) -> tuple[bytes | None, str | None]:
    """What the browser's service worker would read, or why it would drop the push."""
    if browser is None:
        return None, None
    try:
        plaintext: bytes = http_ece.decrypt(
            body, private_key=browser.private_key, auth_secret=browser.auth, version="aes128gcm"
        )
    except (http_ece.ECEException, ValueError) as exc:
        return None, str(getattr(exc, "message", exc))
    return plaintext, None


def _b64decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
