"""How the portal shows records: masked addresses, times, and what an error code means.

Addresses are personal data (phone numbers, e-mail addresses, device tokens): pages show enough
of one to recognise it, never the whole of it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import urlsplit

CHANNEL_NAMES = {
    "apn": "APNs",
    "fcm": "FCM",
    "gcm": "GCM",
    "sms": "SMS",
    "facebook-messenger": "Messenger",
    "alexa": "Alexa",
    "webpush": "Web push",
    "email": "E-mail",
}

FAILOVER_REASONS = {
    "no_binding": "no address on the earlier channels",
    "dead_token": "the earlier address is dead",
    "failed": "every earlier delivery failed",
    "no_receipt": "no sign of life before the wait ran out",
}


def channel_name(channel: str) -> str:
    return CHANNEL_NAMES.get(channel, channel)


def mask(channel: str, address: str) -> str:
    """Enough of an address to recognise it: `+4477••••5678`, `a••••@example.com`."""
    if channel == "email" and "@" in address:
        local, domain = address.rsplit("@", 1)
        return f"{local[:1]}••••@{domain}"
    if channel == "webpush":
        try:
            endpoint = json.loads(address)["endpoint"]
        except (ValueError, TypeError, KeyError):
            endpoint = address
        parts = urlsplit(str(endpoint))
        return f"{parts.hostname or '?'}/…{parts.path[-6:]}"
    if len(address) <= 8:
        return address[:2] + "••••"
    keep = 5 if address.startswith("+") else 6
    return f"{address[:keep]}••••{address[-4:]}"


def when(value: datetime | None) -> str:
    """A stored (naive UTC) time as the page shows it."""
    if value is None:
        return "—"
    return value.replace(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: datetime | None) -> str:
    return "" if value is None else value.replace(tzinfo=UTC).isoformat()


# What an error code means and what to do about it, by code (provider codes as the provider
# spells them, Notify's as numbers). The delivery's own error message says what happened; this
# says how to fix it.
ERROR_HELP: dict[str, tuple[str, str]] = {
    # APNs (providers.md §1.5)
    "Unregistered": (
        "The app was uninstalled or the user turned notifications off.",
        "Nothing to fix: Clarion retired the binding. The app registers a new token if it is "
        "installed again.",
    ),
    "BadDeviceToken": (
        "The token is malformed, or it belongs to the other APNs environment.",
        "Check that development builds use a credential with Sandbox=true and App Store builds "
        "one without.",
    ),
    "DeviceTokenNotForTopic": (
        "The token belongs to another app than the credential's bundle id.",
        "Register the token under the service whose APNs credential has that app's bundle id.",
    ),
    "ExpiredToken": (
        "The device token has expired.",
        "The app must register again; Clarion retired the binding.",
    ),
    "InvalidProviderToken": (
        "APNs refused the signed provider token.",
        "Check the credential's KeyId, TeamId and .p8 key; rotate the credential if the key "
        "was revoked.",
    ),
    "ExpiredProviderToken": (
        "APNs thinks the provider token is over an hour old.",
        "Check the server's clock (NTP).",
    ),
    "TopicDisallowed": (
        "The credential may not push to this app.",
        "Use a key or certificate of the team that owns the bundle id.",
    ),
    "BadCertificateEnvironment": (
        "The push certificate is for the other APNs environment.",
        "Flip the credential's Sandbox setting, or upload the matching certificate.",
    ),
    "PayloadTooLarge": (
        "The push payload is over the provider's size limit.",
        "Shorten the body or move data out of the push (send an id and fetch the rest).",
    ),
    "TooManyRequests": (
        "The provider asked to slow down for this device.",
        "Clarion retries with back-off; send fewer notifications to one device.",
    ),
    # FCM (providers.md §2.3)
    "UNREGISTERED": (
        "The app instance is no longer registered with FCM.",
        "Nothing to fix: Clarion retired the binding.",
    ),
    "SENDER_ID_MISMATCH": (
        "The token belongs to another Firebase project than the credential's.",
        "Register it under a service whose FCM credential is that project's service account.",
    ),
    "INVALID_ARGUMENT": (
        "FCM refused the message or the token as invalid.",
        "Check the Fcm override's keys and the registration token.",
    ),
    "THIRD_PARTY_AUTH_ERROR": (
        "The Firebase project's APNs key or web-push key is missing or invalid.",
        "Upload the APNs key in the Firebase console (Project settings → Cloud Messaging).",
    ),
    "QUOTA_EXCEEDED": (
        "FCM throttled the sending rate.",
        "Clarion retries with back-off; set a RateLimit on the credential to stay under quota.",
    ),
    # Twilio Messaging (providers.md §3.3)
    "21211": (
        "The phone number is not valid.",
        "Fix the number (E.164, e.g. +14155550100); Clarion retired the binding.",
    ),
    "21610": (
        "The recipient replied STOP and unsubscribed.",
        "Only the recipient can opt in again (by texting START).",
    ),
    "21614": (
        "The number is not a mobile number.",
        "Use a mobile number; Clarion retired the binding.",
    ),
    "30003": ("The handset is unreachable (off or out of coverage).", "Try again later."),
    "30005": ("The number is unknown or no longer in service.", "Ask the user for a new number."),
    "30006": (
        "The number is a landline or the carrier cannot take SMS.",
        "Use a mobile number.",
    ),
    "30007": (
        "The carrier filtered the message as spam.",
        "Register your sender (A2P 10DLC, toll-free verification) and avoid URL shorteners.",
    ),
    # Notify's own codes (twilio-notify.md §7)
    "52000": ("Clarion hit an internal error on this delivery.", "Check the server's log."),
    "52001": (
        "The address is not valid for its binding type.",
        "Fix the address or binding type of the binding (or ToBinding item).",
    ),
    "52002": (
        "The service has no credential for this channel.",
        "Open the service and choose a credential for the channel.",
    ),
    "52182": (
        "The service has no SMS credential.",
        "Create a Twilio SMS or SMPP credential and choose it on the service.",
    ),
}


def error_help(code: str | None) -> tuple[str, str] | None:
    """(what it means, how to fix it) for an error code, when the portal knows the code."""
    if code is None:
        return None
    return ERROR_HELP.get(code)
