"""Binding types and the address format each one accepts.

Addresses are normalised (lower-case APNs hex, E.164 phone numbers, compact web-push JSON) so
that re-registering the same device matches its existing binding.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from urllib.parse import urlsplit

import phonenumbers
from cryptography.hazmat.primitives.asymmetric import ec

# Twilio's binding types, then Clarion's extensions.
BINDING_TYPES = ("apn", "gcm", "sms", "fcm", "facebook-messenger", "alexa", "webpush", "email")

# Addresses whose outcome the sandbox's emulators script: unregistered, invalid, answered late.
SANDBOX_PREFIXES = ("dead", "bad", "slow")
SANDBOX_TYPES = ("apn", "fcm", "gcm", "facebook-messenger")

_HEX = re.compile(r"[0-9a-f]+")
_FCM_TOKEN = re.compile(r"[A-Za-z0-9_:\-.]+")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_MESSENGER_ID = re.compile(r"[0-9]{1,32}")


class InvalidAddressError(ValueError):
    """The reason an address cannot be used for its binding type, fit to show the caller."""


def normalize(binding_type: str, address: str, *, sandbox: bool = False) -> str:
    """The canonical spelling of `address`, or `InvalidAddressError` saying what is wrong.

    With `sandbox`, the emulators' magic addresses (`dead…`, `bad…`, `slow…`) are accepted for
    the channels whose real addresses could not spell them (README, "Sandbox").
    """
    if not address:
        raise InvalidAddressError("address must not be empty")
    if (
        sandbox
        and binding_type in SANDBOX_TYPES
        and address.startswith(SANDBOX_PREFIXES)
        and len(address) <= 200
    ):
        return address
    match binding_type:
        case "apn":
            return _apn(address)
        case "fcm" | "gcm":
            return _fcm(address)
        case "sms":
            return phone_number(address)
        case "facebook-messenger":
            return address if _MESSENGER_ID.fullmatch(address) else phone_number(address)
        case "webpush":
            return _webpush(address)
        case "email":
            return _email(address)
        case _:
            if len(address) > 4096:
                raise InvalidAddressError("address must be at most 4096 characters")
            return address


def phone_number(address: str) -> str:
    """E.164. Only the length is checked, so carriers' and Twilio's test ranges stay usable."""
    if not address.startswith("+"):
        raise InvalidAddressError("phone numbers must be in E.164 format, e.g. +14155550100")
    try:
        parsed = phonenumbers.parse(address, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidAddressError("not a phone number in E.164 format, e.g. +14155550100") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidAddressError("not a possible phone number for its country code")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def _apn(address: str) -> str:
    token = address.lower()
    if not _HEX.fullmatch(token) or len(token) % 2 or not 64 <= len(token) <= 200:
        raise InvalidAddressError("APNs device tokens are 64 or more hexadecimal characters")
    return token


def _fcm(address: str) -> str:
    if len(address) > 4096 or not _FCM_TOKEN.fullmatch(address):
        raise InvalidAddressError(
            "registration tokens are up to 4096 letters, digits and the characters _ : - ."
        )
    return address


def _email(address: str) -> str:
    if len(address) > 254 or not _EMAIL.fullmatch(address):
        raise InvalidAddressError("not an e-mail address")
    local, domain = address.rsplit("@", 1)
    return f"{local}@{domain.lower()}"


def _webpush(address: str) -> str:
    """A browser's PushSubscription JSON: endpoint plus the p256dh and auth keys (RFC 8291)."""
    try:
        subscription = json.loads(address)
        endpoint = subscription["endpoint"]
        p256dh = subscription["keys"]["p256dh"]
        auth = subscription["keys"]["auth"]
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidAddressError(
            'expected PushSubscription JSON: {"endpoint": "https://…", '
            '"keys": {"p256dh": "…", "auth": "…"}}'
        ) from exc
    if (
        not isinstance(endpoint, str)
        or urlsplit(endpoint).scheme != "https"
        or len(endpoint) > 2048
    ):
        raise InvalidAddressError("endpoint must be an https URL of at most 2048 characters")
    point = _b64url(p256dh, "keys.p256dh")
    try:
        if len(point) != 65:
            raise ValueError(point)
        # Rejects points off the curve, which could never be encrypted to (RFC 8291).
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise InvalidAddressError(
            "keys.p256dh must be an uncompressed P-256 public key (65 bytes)"
        ) from exc
    if len(_b64url(auth, "keys.auth")) != 16:
        raise InvalidAddressError("keys.auth must be a 16-byte secret")
    return json.dumps(
        {"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}, separators=(",", ":")
    )


def _b64url(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidAddressError(f"{name} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidAddressError(f"{name} must be a base64url string") from exc
