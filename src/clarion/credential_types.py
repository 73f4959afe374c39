"""What each credential type holds, which parts are secret, and how each is checked.

A credential is stored as two JSON objects keyed by API parameter name: `settings` (shown back
to the caller, snake_cased) and `secret` (sealed, never shown). Create validates the given
parameters; update validates the stored ones overlaid with the new ones, so a partial update
can never leave a credential half-valid.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from clarion import errors, sids
from clarion.addresses import InvalidAddressError, phone_number
from clarion.destinations import PERMISSIVE, DestinationPolicy

Params = Mapping[str, str]

# Extension setting of every HTTP provider's credential: where its API lives, so a staging
# setup, a test or a benchmark aims the channel at an emulator or a sink (default: the real one).
PROVIDER_URL = "ProviderUrl"
# Extension setting of every credential: at most this many messages per second on it, across all
# workers (clarion.store.send_slots); unset means as fast as the provider takes them.
RATE_LIMIT = "RateLimit"
MAX_RATE_LIMIT = 100_000.0


@dataclass(frozen=True)
class CredentialType:
    name: str
    settings: tuple[str, ...]
    secrets: tuple[str, ...]
    check: Callable[[dict[str, str]], None]
    # Fills in what may be generated instead of given (e.g. a VAPID key pair).
    complete: Callable[[dict[str, str]], None] = field(default=lambda params: None)

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.settings + self.secrets


@dataclass(frozen=True, kw_only=True)
class Checked:
    settings: dict[str, str]
    secret: dict[str, str]


def checked(
    kind: CredentialType, params: dict[str, str], *, destinations: DestinationPolicy = PERMISSIVE
) -> Checked:
    """Complete and validate `params`, split into settings and secret. Where the channel would
    connect (ProviderUrl, Host, an FCM service account's token_uri) must be a destination
    `destinations` allows, as far as can be known without DNS."""
    params = {name: value for name, value in params.items() if value != ""}
    kind.complete(params)
    kind.check(params)
    if PROVIDER_URL in params:
        _check_provider_url(params[PROVIDER_URL])
    _check_destinations(kind, params, destinations)
    if RATE_LIMIT in params:
        rate_limit(params[RATE_LIMIT])
    return Checked(
        settings={name: params[name] for name in kind.settings if name in params},
        secret={name: params[name] for name in kind.secrets if name in params},
    )


def _check_provider_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise errors.invalid_parameter(
            PROVIDER_URL, "expected the provider's base URL, such as https://api.example.com:8443"
        )


def _check_destinations(
    kind: CredentialType, params: dict[str, str], destinations: DestinationPolicy
) -> None:
    problems = {PROVIDER_URL: destinations.url_problem(params.get(PROVIDER_URL))}
    if kind.name in ("smpp", "smtp"):
        problems["Host"] = destinations.host_problem(params.get("Host"))
    if kind.name == "fcm":
        token_uri = json.loads(params["Secret"]).get("token_uri")
        if isinstance(token_uri, str):
            problem = destinations.url_problem(token_uri)
            problems["Secret"] = None if problem is None else f"its token_uri: {problem}"
    for name, problem in problems.items():
        if problem is not None:
            raise errors.invalid_parameter(name, problem)


def rate_limit(value: str) -> float:
    """A `RateLimit` setting as messages per second; raises the 400 that says what is wrong."""
    try:
        per_second = float(value)
    except ValueError:
        per_second = 0.0
    if not 0 < per_second <= MAX_RATE_LIMIT:  # also refuses nan and inf
        raise errors.invalid_parameter(
            RATE_LIMIT,
            f"expected messages per second, a number above 0 and at most {MAX_RATE_LIMIT:,.0f}"
            " (0.5 is one message every 2 seconds)",
        )
    return per_second


def _require(params: dict[str, str], *names: str, code: int = errors.INVALID_PARAMETER) -> None:
    for name in names:
        if name not in params:
            raise errors.bad_request(f"Missing required parameter {name} in the post body", code)


def _bad(name: str, problem: str, code: int) -> errors.ClarionError:
    return errors.bad_request(f"Parameter '{name}' is invalid: {problem}", code)


def _private_key(pem: str, code: int) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise _bad("PrivateKey", "expected an unencrypted PEM private key", code) from exc


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_apn(params: dict[str, str]) -> None:
    code = errors.INVALID_APN_CREDENTIALS
    if "Certificate" in params:
        _require(params, "PrivateKey", code=code)
        try:
            certificate = x509.load_pem_x509_certificate(params["Certificate"].encode())
        except ValueError as exc:
            raise _bad("Certificate", "expected a PEM certificate", code) from exc
        key = _private_key(params["PrivateKey"], code)
        if _public_der(certificate.public_key()) != _public_der(key.public_key()):
            raise _bad("PrivateKey", "is not the private key of Certificate", code)
        return
    # Token-based authentication (extension): a .p8 signing key with its key and team ids.
    _require(params, "PrivateKey", "KeyId", "TeamId", "BundleId", code=code)
    key = _private_key(params["PrivateKey"], code)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise _bad("PrivateKey", "token authentication needs the P-256 key of a .p8 file", code)
    for name in ("KeyId", "TeamId"):
        if not re.fullmatch(r"[A-Z0-9]{10}", params[name]):
            raise _bad(name, "expected the 10-character identifier Apple shows", code)
    if not re.fullmatch(r"[A-Za-z0-9.\-]{1,155}", params["BundleId"]):
        raise _bad("BundleId", "expected an app bundle id such as com.example.app", code)


def _check_fcm(params: dict[str, str]) -> None:
    code = errors.INVALID_FCM_SECRET
    _require(params, "Secret", code=code)
    try:
        account = json.loads(params["Secret"])
        valid = account.get("type") == "service_account" and all(
            isinstance(account.get(key), str) and account[key]
            for key in ("project_id", "private_key", "client_email")
        )
    except (ValueError, AttributeError):
        valid = False
    if not valid:
        raise _bad(
            "Secret",
            "expected the service-account JSON downloaded from the Firebase console "
            "(type service_account with project_id, private_key and client_email); "
            "FCM legacy server keys no longer work",
            code,
        )
    try:
        serialization.load_pem_private_key(account["private_key"].encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise _bad("Secret", "its private_key is not an unencrypted PEM private key", code) from exc


def _fcm_project(params: dict[str, str]) -> None:
    """Show which Firebase project an FCM credential sends for, without its key."""
    if "Secret" in params:
        try:
            params["ProjectId"] = str(json.loads(params["Secret"]).get("project_id", ""))
        except (ValueError, AttributeError):
            return


def _check_gcm(params: dict[str, str]) -> None:
    _require(params, "ApiKey", code=errors.INVALID_FCM_SECRET)


def _check_twilio_sms(params: dict[str, str]) -> None:
    _require(params, "AccountSid", "AuthToken")
    if not sids.is_sid(params["AccountSid"], sids.ACCOUNT):
        raise errors.invalid_parameter("AccountSid", "expected AC followed by 32 hex digits")
    if "MessagingServiceSid" in params:
        if not sids.is_sid(params["MessagingServiceSid"], sids.MESSAGING_SERVICE):
            raise errors.invalid_parameter(
                "MessagingServiceSid", "expected MG followed by 32 hex digits"
            )
    elif "From" in params:
        _phone("From", params["From"])
    else:
        raise errors.missing_parameter("MessagingServiceSid or From")


def _check_smpp(params: dict[str, str]) -> None:
    _require(params, "Host", "SystemId", "Password", "SourceAddr")
    _port(params, default="2775")
    if len(params["SystemId"]) > 15:
        raise errors.invalid_parameter("SystemId", "SMPP 3.4 allows at most 15 characters")
    if len(params["Password"]) > 8:
        raise errors.invalid_parameter("Password", "SMPP 3.4 allows at most 8 characters")


def _check_messenger(params: dict[str, str]) -> None:
    _require(params, "PageId", "PageAccessToken")
    if not params["PageId"].isdigit():
        raise errors.invalid_parameter("PageId", "expected the numeric Facebook page id")


def _check_webpush(params: dict[str, str]) -> None:
    _require(params, "Subject")
    if not params["Subject"].startswith(("mailto:", "https://")):
        raise errors.invalid_parameter(
            "Subject", "VAPID needs a contact: a mailto: address or an https URL (RFC 8292)"
        )
    private = _vapid_private_key(params["VapidPrivateKey"])
    if _vapid_public_key(private) != params.get("VapidPublicKey"):
        raise errors.invalid_parameter(
            "VapidPublicKey", "does not belong to VapidPrivateKey; give both or neither"
        )


def _complete_webpush(params: dict[str, str]) -> None:
    """Generate a VAPID key pair when the caller gives none (RFC 8292 §3.2 keys are P-256)."""
    if "VapidPrivateKey" not in params:
        if "VapidPublicKey" in params:
            raise errors.missing_parameter("VapidPrivateKey")
        key = ec.generate_private_key(ec.SECP256R1())
        raw = key.private_numbers().private_value.to_bytes(32, "big")
        params["VapidPrivateKey"] = _b64url(raw)
        params["VapidPublicKey"] = _vapid_public_key(key)
    elif "VapidPublicKey" not in params:
        params["VapidPublicKey"] = _vapid_public_key(_vapid_private_key(params["VapidPrivateKey"]))


def _vapid_private_key(value: str) -> ec.EllipticCurvePrivateKey:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        if len(raw) != 32:
            raise ValueError(value)
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    except ValueError as exc:
        raise errors.invalid_parameter(
            "VapidPrivateKey", "expected the 32-byte P-256 private key, base64url-encoded"
        ) from exc


def _vapid_public_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The uncompressed public point, base64url: what a page passes to `subscribe()`."""
    return _b64url(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _check_smtp(params: dict[str, str]) -> None:
    _require(params, "Host", "From")
    _port(params, default="587")
    security = params.setdefault("Security", "starttls")
    if security not in ("starttls", "tls", "none"):
        raise errors.invalid_parameter("Security", "must be starttls, tls or none")
    if ("Username" in params) != ("Password" in params):
        raise errors.invalid_parameter("Username", "give Username and Password together")
    if not re.fullmatch(r"[^@\s]+@[^@\s]+", params["From"]):
        raise errors.invalid_parameter("From", "expected an e-mail address")


def _port(params: dict[str, str], *, default: str) -> None:
    port = params.setdefault("Port", default)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.invalid_parameter("Port", "expected a port number 1-65535")


def _phone(name: str, value: str) -> None:
    try:
        phone_number(value)
    except InvalidAddressError as exc:
        raise errors.invalid_parameter(name, str(exc)) from exc


TYPES: dict[str, CredentialType] = {
    kind.name: kind
    for kind in (
        CredentialType(
            "apn",
            ("KeyId", "TeamId", "BundleId", PROVIDER_URL, RATE_LIMIT),
            ("Certificate", "PrivateKey"),
            _check_apn,
        ),
        CredentialType(
            "fcm",
            ("ProjectId", PROVIDER_URL, RATE_LIMIT),
            ("Secret",),
            _check_fcm,
            complete=_fcm_project,
        ),
        CredentialType("gcm", (RATE_LIMIT,), ("ApiKey",), _check_gcm),
        CredentialType(
            "twilio-sms",
            ("AccountSid", "MessagingServiceSid", "From", PROVIDER_URL, RATE_LIMIT),
            ("AuthToken",),
            _check_twilio_sms,
        ),
        CredentialType(
            "smpp",
            ("Host", "Port", "SystemId", "SystemType", "SourceAddr", RATE_LIMIT),
            ("Password",),
            _check_smpp,
        ),
        CredentialType(
            "messenger",
            ("PageId", PROVIDER_URL, RATE_LIMIT),
            ("PageAccessToken", "AppSecret"),
            _check_messenger,
        ),
        CredentialType(
            "webpush",
            ("Subject", "VapidPublicKey", RATE_LIMIT),
            ("VapidPrivateKey",),
            _check_webpush,
            complete=_complete_webpush,
        ),
        CredentialType(
            "smtp",
            ("Host", "Port", "Security", "Username", "From", RATE_LIMIT),
            ("Password",),
            _check_smtp,
        ),
    )
}

# Which credential types a service or binding may use for each of its channels.
CHANNEL_CREDENTIAL_TYPES: dict[str, tuple[str, ...]] = {
    "apn": ("apn",),
    "gcm": ("gcm", "fcm"),
    "fcm": ("fcm",),
    "sms": ("twilio-sms", "smpp"),
    "facebook-messenger": ("messenger",),
    "webpush": ("webpush",),
    "email": ("smtp",),
}
