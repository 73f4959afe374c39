"""A local Firebase Cloud Messaging HTTP v1 service (providers.md §10.2).

It speaks FCM's wire protocol on a real socket so the FCM channel is tested exactly as it runs:
a Google OAuth token endpoint that verifies service-account assertions, `messages:send` with
FCM's validation, quota and google.rpc error envelopes, and per-token outcomes scripted by tests
or by the sandbox prefixes (`dead…`, `bad…`, `slow…`). HTTP/1.1 only (aiohttp.web).
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import jwt
import msgspec
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from clarion.emulators.http_server import AiohttpEmulator
from clarion.emulators.records import Records

JWT_BEARER_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# providers.md §2.1: scopes that allow sending (cloud-platform covers firebase.messaging).
SEND_SCOPES: Final = frozenset(
    {
        "https://www.googleapis.com/auth/firebase.messaging",
        "https://www.googleapis.com/auth/cloud-platform",
    }
)
# providers.md §2.1: an assertion may live at most an hour.
MAX_ASSERTION_LIFETIME: Final = 3600
# providers.md §2.2: exactly one target; `fid` is new in 2026.
TARGETS: Final = ("token", "topic", "condition", "fid")
# providers.md §2.2: content limits (the target is not counted) and the TTL range.
MAX_PAYLOAD_BYTES: Final = 4096
MAX_TOPIC_PAYLOAD_BYTES: Final = 2048
MAX_TTL_SECONDS: Final = 2_419_200
TTL_FORMAT: Final = re.compile(r"\d+(\.\d{1,9})?s")
ANDROID_PRIORITIES: Final = frozenset({"NORMAL", "HIGH"})
# providers.md §2.2: data keys FCM keeps for itself.
RESERVED_DATA_KEYS: Final = frozenset({"from", "message_type"})
RESERVED_DATA_PREFIXES: Final = ("google.", "gcm.notification.")
# providers.md §2.4: the default project quota.
DEFAULT_QUOTA_PER_MINUTE: Final = 600_000

FCM_ERROR_TYPE: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
UNAUTHENTICATED_HINT: Final = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


class FcmAnswer(NamedTuple):
    http_status: int
    rpc_status: str
    message: str


# providers.md §2.3: how FCM answers each errorCode a test can script.
FCM_ERRORS: Final[Mapping[str, FcmAnswer]] = {
    "UNREGISTERED": FcmAnswer(404, "NOT_FOUND", "Requested entity was not found."),
    "INVALID_ARGUMENT": FcmAnswer(
        400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"
    ),
    "SENDER_ID_MISMATCH": FcmAnswer(403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": FcmAnswer(
        429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Messages sent per minute'."
    ),
    "UNAVAILABLE": FcmAnswer(503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": FcmAnswer(500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": FcmAnswer(
        401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"
    ),
}
# The sandbox conventions of issue 3: what a token's prefix scripts.
SANDBOX_PREFIXES: Final = (("dead", "UNREGISTERED"), ("bad", "INVALID_ARGUMENT"))


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message the emulator accepted, as FCM would have delivered it."""

    project_id: str
    name: str
    message: dict[str, Any]


@dataclass(slots=True)
class _Script:
    error: str
    retry_after: str | None
    # How many more sends get this answer; None: every send.
    remaining: int | None


@dataclass(frozen=True, slots=True)
class _Account:
    project_id: str
    public_key: rsa.RSAPublicKey


@dataclass(frozen=True, slots=True)
class _Grant:
    project_id: str
    expires_at: float


class _Violation(NamedTuple):
    field: str
    description: str


class _QuotaBucket:
    """A project's message quota, refilled continuously over a rolling minute (§2.4)."""

    def __init__(self, per_minute: int) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60
        self._level = self._capacity
        self._updated = time.monotonic()

    def wait(self) -> float:
        """Seconds until one more message fits; 0 when it fits now."""
        now = time.monotonic()
        self._level = min(self._capacity, self._level + (now - self._updated) * self._rate)
        self._updated = now
        return 0.0 if self._level >= 1 else (1 - self._level) / self._rate

    def take(self) -> None:
        self._level -= 1


class FcmEmulator(AiohttpEmulator):
    """FCM HTTP v1 plus Google's token endpoint on 127.0.0.1. `keep` is how many of the latest
    records of each kind it keeps, and of access tokens it honours (None: all)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime: int = 3600,
        slow_delay: float = 5.0,
        quota_per_minute: int = DEFAULT_QUOTA_PER_MINUTE,
        keep: int | None = None,
    ) -> None:
        # Closing gives open requests a second, then cuts off `slow…` answers still waiting.
        super().__init__(host=host, port=port, shutdown_timeout=1.0)
        # Seconds an access token lives; tests shorten it to exercise refreshing.
        self.token_lifetime = token_lifetime
        # How long `slow…` tokens wait for their answer.
        self.slow_delay = slow_delay
        self.quota_per_minute = quota_per_minute
        self.received: Records[ReceivedMessage] = Records(maxlen=keep)
        # The client_email of every access token granted, in order.
        self.grants: Records[str] = Records(maxlen=keep)
        self._keep = keep
        # What bounds each piece of state: `_accounts` and `_scripts` hold what the caller put
        # there (a script used up is removed); `_quotas` has one bucket per project of those
        # accounts (a send is authorized before its project gets one); `_access_tokens` loses
        # expired tokens at each grant, and holds at most `keep` (oldest revoked first).
        self._accounts: dict[str, _Account] = {}
        self._access_tokens: dict[str, _Grant] = {}
        self._scripts: dict[str, _Script] = {}
        self._quotas: dict[str, _QuotaBucket] = {}

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self._grant_token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        # providers.md §2.5: the legacy HTTP API and the batch API are shut down.
        app.router.add_post("/fcm/send", _shut_down)
        app.router.add_post("/batch", _shut_down)

    def new_service_account(self, project_id: str = "clarion-sandbox") -> dict[str, str]:
        """A service-account JSON (fresh RSA key) this emulator trusts, as the Firebase console
        would download it but with `token_uri` aimed here."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = f"firebase-adminsdk-{secrets.token_hex(3)}@{project_id}.iam.gserviceaccount.com"
        self._accounts[email] = _Account(project_id, key.public_key())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem.decode(),
            "client_email": email,
            "client_id": str(secrets.randbelow(10**21)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
        }

    def script(
        self, token: str, error: str, *, retry_after: str | None = None, times: int | None = None
    ) -> None:
        """Answer sends to `token` with FCM's `error` (a key of FCM_ERRORS), optionally with a
        Retry-After header, for the next `times` sends or for good."""
        if error not in FCM_ERRORS:
            raise ValueError(f"unknown FCM errorCode {error!r}")
        self._scripts[token] = _Script(error, retry_after, times)

    def revoke_tokens(self) -> None:
        """Invalidate every access token granted so far, as Google does on key rotation."""
        self._access_tokens.clear()

    async def _grant_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER_GRANT:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type.")
        assertion = str(form.get("assertion", ""))
        try:
            issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return _oauth_error("invalid_grant", "Invalid JWT.")
        account = self._accounts.get(str(issuer))
        if account is None:
            return _oauth_error("invalid_grant", "Invalid grant: account not found")
        try:
            claims = jwt.decode(
                assertion,
                account.public_key,
                algorithms=["RS256"],
                audience=self.token_uri,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.InvalidSignatureError:
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        except jwt.PyJWTError as exc:
            return _oauth_error("invalid_grant", f"Invalid JWT: {exc}")
        if claims["exp"] - claims["iat"] > MAX_ASSERTION_LIFETIME:
            return _oauth_error(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                "timeframe. Check your iat and exp values in the JWT claim.",
            )
        if not SEND_SCOPES & set(str(claims["scope"]).split()):
            # What Google answers for a scope the API does not accept (RFC 6749 §5.2).
            return _oauth_error(
                "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        access_token = f"ya29.{secrets.token_urlsafe(32)}"
        self._forget_access_tokens()
        self._access_tokens[access_token] = _Grant(
            account.project_id, time.monotonic() + self.token_lifetime
        )
        self.grants.append(str(issuer))
        return _json(
            {
                "access_token": access_token,
                "expires_in": self.token_lifetime,
                "token_type": "Bearer",
            }
        )

    async def _send(self, request: web.Request) -> web.Response:
        project = request.match_info["project"]
        refusal = self._authorize(request.headers.get("Authorization", ""), project)
        if refusal is not None:
            return refusal
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError as exc:
            return _invalid_argument(_Violation("", f"Invalid JSON payload received. {exc}"))
        violation = _validate(body)
        message: dict[str, Any] = body["message"] if violation is None else {}
        token = message.get("token")
        if isinstance(token, str) and token.startswith("slow"):
            await asyncio.sleep(self.slow_delay)
        quota = self._quotas.setdefault(project, _QuotaBucket(self.quota_per_minute))
        wait = quota.wait()
        if wait > 0:
            return _fcm_error(project, "QUOTA_EXCEEDED", retry_after=str(math.ceil(wait)))
        if violation is not None:
            response = _invalid_argument(violation)
        elif (script := self._script_for(token)) is not None:
            response = _fcm_error(project, script.error, retry_after=script.retry_after)
        elif body.get("validate_only") is True:
            response = _json({"name": f"projects/{project}/messages/fake_message_id"})
        else:
            name = f"projects/{project}/messages/0:{time.time_ns()}%{secrets.token_hex(8)}"
            self.received.append(ReceivedMessage(project, name, message))
            response = _json({"name": name})
        # providers.md §2.4: the quota counts messages, client errors included, but not 429s.
        if response.status == 200 or (400 <= response.status < 500 and response.status != 429):
            quota.take()
        return response

    def _forget_access_tokens(self) -> None:
        """Make room for one more grant: expired tokens go (they are refused the same way
        whether remembered or not), then the oldest beyond `keep`."""
        now = time.monotonic()
        expired = [token for token, grant in self._access_tokens.items() if grant.expires_at <= now]
        for token in expired:
            del self._access_tokens[token]
        if self._keep is not None:
            while self._access_tokens and len(self._access_tokens) >= self._keep:
                del self._access_tokens[next(iter(self._access_tokens))]

    def _authorize(self, authorization: str, project: str) -> web.Response | None:
        scheme, _, access_token = authorization.partition(" ")
        if scheme != "Bearer" or not access_token:
            return _unauthenticated(
                "Request is missing required authentication credential. " + UNAUTHENTICATED_HINT,
                reason="CREDENTIALS_MISSING",
            )
        grant = self._access_tokens.get(access_token)
        if grant is None or grant.expires_at <= time.monotonic():
            return _unauthenticated(
                "Request had invalid authentication credentials. " + UNAUTHENTICATED_HINT,
                reason="ACCESS_TOKEN_EXPIRED",
            )
        if grant.project_id != project:
            resource = f"//cloudresourcemanager.googleapis.com/projects/{project}"
            return _rpc_error(
                403,
                "PERMISSION_DENIED",
                f"Permission 'cloudmessaging.messages.create' denied on resource '{resource}' "
                "(or it may not exist).",
                [_error_info("IAM_PERMISSION_DENIED")],
            )
        return None

    def _script_for(self, token: Any) -> _Script | None:
        if not isinstance(token, str):
            return None
        script = self._scripts.get(token)
        if script is not None:
            if script.remaining is not None:
                script.remaining -= 1
                if script.remaining <= 0:
                    del self._scripts[token]
            return script
        for prefix, error in SANDBOX_PREFIXES:
            if token.startswith(prefix):
                return _Script(error, retry_after=None, remaining=None)
        return None


def _validate(body: Any) -> _Violation | None:
    """The first reason FCM would refuse this request body, if any (providers.md §10.2.3)."""
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        return _Violation("message", "Invalid JSON payload received. 'message' must be an object.")
    unknown = sorted(body.keys() - {"message", "validate_only"})
    if unknown:
        return _Violation(
            "", f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
        )
    message: dict[str, Any] = body["message"]
    targets = [name for name in TARGETS if name in message]
    if not targets:
        return _Violation("message", "Recipient of the message is not set.")
    if len(targets) > 1:
        return _Violation(
            "message",
            "Invalid value at 'message' (oneof), oneof field 'target' is already set. "
            f"Cannot set '{targets[1]}'",
        )
    violation = _validate_data(message.get("data", {}))
    if violation is not None:
        return violation
    android = message.get("android", {})
    if not isinstance(android, dict):
        return _Violation(
            "message.android", "Invalid value at 'message.android': expected an object."
        )
    priority = android.get("priority", "NORMAL")
    if priority not in ANDROID_PRIORITIES:
        return _Violation(
            "message.android.priority",
            "Invalid value at 'message.android.priority' "
            f"(type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), {priority!r}",
        )
    ttl = android.get("ttl", "0s")
    if not (isinstance(ttl, str) and TTL_FORMAT.fullmatch(ttl)):
        return _Violation(
            "message.android.ttl",
            "Invalid value at 'message.android.ttl' "
            f"(type.googleapis.com/google.protobuf.Duration), {ttl!r}",
        )
    if float(ttl[:-1]) > MAX_TTL_SECONDS:
        return _Violation("message.android.ttl", "TTL must be between 0 and 4 weeks.")
    limit = MAX_PAYLOAD_BYTES if targets[0] in ("token", "fid") else MAX_TOPIC_PAYLOAD_BYTES
    content = {name: value for name, value in message.items() if name not in TARGETS}
    if len(msgspec.json.encode(content)) > limit:
        return _Violation("message", "Message is too big")
    return None


def _validate_data(data: Any) -> _Violation | None:
    if not isinstance(data, dict):
        return _Violation("message.data", "Invalid value at 'message.data': expected a map.")
    for index, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            field = f"message.data[{index}].value"
            encoded = msgspec.json.encode(value).decode()
            return _Violation(field, f"Invalid value at '{field}' (TYPE_STRING), {encoded}")
        if key in RESERVED_DATA_KEYS or key.startswith(RESERVED_DATA_PREFIXES):
            return _Violation("message.data", f"Invalid data payload key: {key}")
    return None


def _json(
    document: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(document),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="UTF-8",
    )


def _oauth_error(error: str, description: str) -> web.Response:
    return _json({"error": error, "error_description": description}, status=400)


def _rpc_error(
    status: int,
    rpc_status: str,
    message: str,
    details: list[dict[str, Any]],
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The google.rpc.Status envelope of providers.md §2.3."""
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = details
    return _json({"error": error}, status=status, headers=headers)


def _fcm_error(project: str, error: str, *, retry_after: str | None) -> web.Response:
    answer = FCM_ERRORS[error]
    details: list[dict[str, Any]] = [{"@type": FCM_ERROR_TYPE, "errorCode": error}]
    if error == "QUOTA_EXCEEDED":
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"subject": f"project:{project}", "description": answer.message}],
            }
        )
    headers = {"Retry-After": retry_after} if retry_after else None
    return _rpc_error(
        answer.http_status, answer.rpc_status, answer.message, details, headers=headers
    )


def _invalid_argument(violation: _Violation) -> web.Response:
    return _rpc_error(
        400,
        "INVALID_ARGUMENT",
        violation.description,
        [
            {"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"},
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {"field": violation.field, "description": violation.description}
                ],
            },
        ],
    )


def _unauthenticated(message: str, *, reason: str) -> web.Response:
    return _rpc_error(401, "UNAUTHENTICATED", message, [_error_info(reason)])


def _error_info(reason: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": "fcm.googleapis.com"},
    }


async def _shut_down(request: web.Request) -> web.Response:
    return web.Response(
        status=404, text="The legacy FCM APIs were shut down in 2024; use HTTP v1 messages:send."
    )
