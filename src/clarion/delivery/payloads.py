"""Each channel's payload, built from a notification's content the way Twilio Notify maps it.

Apps written against Notify read what Notify sent them (`twi_body` in an FCM data message, the
alert in `aps`), so these mappings are the compatibility promise, not a choice
(reference/twilio-notify.md §4.4 and the spec's parameter descriptions):

| Content   | apn                        | fcm / gcm              | sms    | facebook-messenger |
|-----------|----------------------------|------------------------|--------|--------------------|
| Title     | aps.alert.title            | data.twi_title         | —      | —                  |
| Body      | aps.alert.body             | data.twi_body          | body   | text               |
| Sound     | aps.sound                  | data.twi_sound         | —      | —                  |
| Action    | aps.category               | data.twi_action        | —      | —                  |
| Data      | custom keys beside `aps`   | data (values as text)  | —      | —                  |
| override  | Apn, deep-merged, wins     | Fcm / Gcm, see below   | Sms    | FacebookMessenger  |
| receipt   | twi_receipt beside `aps`   | data.twi_receipt       | —      | —                  |

The spec names only GCM for Action; FCM bindings get the same `twi_action` because Notify's FCM
data message is otherwise identical to its GCM one.

Fcm and Gcm overrides arrive in the legacy FCM HTTP shape Notify documented; Clarion sends FCM
HTTP v1 (providers.md §2.2), so legacy root keys are translated and v1 keys pass through:

| Legacy root key            | FCM v1 `message` field                                        |
|----------------------------|---------------------------------------------------------------|
| notification.title/body/image | notification.title/body/image                              |
| notification.android_channel_id | android.notification.channel_id                          |
| notification.sound         | android.notification.sound and apns.payload.aps.sound         |
| notification.click_action  | android.notification.click_action and apns.payload.aps.category |
| notification.badge         | apns.payload.aps.badge                                        |
| notification.subtitle      | apns.payload.aps.alert.subtitle                               |
| notification.<other>       | android.notification.<other> (icon, color, tag, *_loc_*)      |
| priority                   | android.priority ("high" → "HIGH")                            |
| time_to_live               | android.ttl (3600 → "3600s")                                  |
| collapse_key               | android.collapse_key                                          |
| restricted_package_name    | android.restricted_package_name                               |
| content_available          | apns.payload.aps.content-available = 1                        |
| mutable_content            | apns.payload.aps.mutable-content = 1                          |
| data, android, apns, webpush, fcm_options, anything else | unchanged; FCM judges unknown keys |

Explicit v1 blocks are merged last, so `android.priority` beats a legacy `priority`.

Web push and e-mail have no Twilio counterpart. Web push sends the JSON a service worker reads:
`title`, `body`, `data` and `twi_receipt`. An e-mail's subject is Title and its plain text Body;
the Email override's `subject` and `text` win over them, and it adds `html` (an HTML
alternative, or the only part), `reply_to` and `headers` (api/notifications.py checks them).
A built payload may share nested values with the content: treat both as read-only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from clarion import errors

_Builder = Callable[[Mapping[str, Any], str | None], dict[str, Any]]
_Translate = Callable[[Any], dict[str, Any]]

# Clarion's reserved `twi_` key carrying the per-delivery receipt token (issue 4): the app
# posts it back to confirm receipt. Callers cannot send it (api/notifications.py rejects twi_).
RECEIPT_KEY = "twi_receipt"
# The channels whose payload carries it (the table above).
RECEIPT_CHANNELS = frozenset({"apn", "fcm", "gcm", "webpush"})

# Codes for a notification that carries nothing a channel can send (twilio-notify.md §7).
MISSING_APNS_PAYLOAD = 52136
MISSING_MESSENGER_BODY = 52203
# §7 has no Notify code for an SMS without body or media; Notify's SMS channel is Twilio
# Messaging, whose own answer for exactly this case is 21602 "Message body is required".
SMS_BODY_REQUIRED = 21602

# Email override keys passed to the e-mail channel as they are, when given.
EMAIL_EXTRAS = ("html", "reply_to", "headers")
# Generic fields Twilio copies into FCM/GCM data as `twi_<field>` (§4.4).
_FIREBASE_TEXT_FIELDS = ("title", "body", "sound", "action")
# aps keys that make an APNs push visible (or already a background one): without them, custom
# data alone would be a push iOS drops, so it is sent as a background push instead.
_VISIBLE_APS_KEYS = frozenset({"alert", "sound", "badge", "content-available"})
# Legacy `notification` keys valid on every platform in v1 (providers.md §2.2).
_NOTIFICATION_COMMON = frozenset({"title", "body", "image"})
# Legacy `notification` key → (its android.notification name or None, its path under
# apns.payload.aps or None). Keys not listed go to android.notification unchanged.
_LEGACY_NOTIFICATION: dict[str, tuple[str | None, tuple[str, ...] | None]] = {
    "android_channel_id": ("channel_id", None),
    "sound": ("sound", ("sound",)),
    "click_action": ("click_action", ("category",)),
    "badge": (None, ("badge",)),
    "subtitle": (None, ("alert", "subtitle")),
}


class PayloadError(ValueError):
    """The notification can never be sent on this channel as it is: fail the delivery with
    `code`, don't retry it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def build(
    binding_type: str, content: Mapping[str, Any], *, receipt: str | None = None
) -> dict[str, Any]:
    """The payload for `clarion.channels.base.Message.payload` on a `binding_type` binding.

    `receipt` only reaches channels that run app code able to post it back (APNs, FCM/GCM,
    web push); SMS, Messenger and e-mail deliveries are confirmed by their providers instead.
    """
    builder = _BUILDERS.get(binding_type)
    if builder is None:
        raise PayloadError(
            errors.INVALID_BINDING, f"Clarion cannot deliver to '{binding_type}' bindings"
        )
    return builder(content, receipt)


def with_receipt(binding_type: str, payload: dict[str, Any], receipt: str) -> dict[str, Any]:
    """`build(binding_type, content, receipt=receipt)`, from the payload built without one.

    The dispatcher builds a notification's payload once per channel and adds each delivery's
    token here: one shallow copy (two for FCM's `data`), the shared payload left untouched.
    """
    if binding_type in ("fcm", "gcm"):
        return {**payload, "data": {**payload.get("data", {}), RECEIPT_KEY: receipt}}
    if binding_type in RECEIPT_CHANNELS:
        return {**payload, RECEIPT_KEY: receipt}
    return payload


def _apn(content: Mapping[str, Any], receipt: str | None) -> dict[str, Any]:
    """The APNs JSON document: generic content first, then the Apn override on top."""
    aps: dict[str, Any] = {}
    alert = {key: value for key in ("title", "body") if (value := _text(content, key))}
    if alert:
        aps["alert"] = alert
    if sound := _text(content, "sound"):
        aps["sound"] = sound
    if category := _text(content, "action"):
        aps["category"] = category
    # `aps` is Apple's: a Data key of that name would clobber it, so it is set through Apn only.
    custom = {key: value for key, value in (content.get("data") or {}).items() if key != "aps"}
    document = _merge({**custom, "aps": aps}, content.get("apn") or {})
    aps = _object(document["aps"], "Apn 'aps'")
    has_custom = any(key not in ("aps", RECEIPT_KEY) for key in document)
    if not aps and not has_custom:
        raise PayloadError(
            MISSING_APNS_PAYLOAD,
            "Nothing to send to APNs: give Title, Body, Sound, Data or an Apn override",
        )
    if has_custom and not aps.keys() & _VISIBLE_APS_KEYS:
        document["aps"] = {**aps, "content-available": 1}
    return _with_receipt(document, receipt)


def _fcm(content: Mapping[str, Any], receipt: str | None) -> dict[str, Any]:
    return _firebase(content, override=content.get("fcm"), receipt=receipt)


def _gcm(content: Mapping[str, Any], receipt: str | None) -> dict[str, Any]:
    return _firebase(content, override=content.get("gcm"), receipt=receipt)


def _firebase(
    content: Mapping[str, Any], *, override: Mapping[str, Any] | None, receipt: str | None
) -> dict[str, Any]:
    """An FCM v1 `message` without its target: the channel adds `token` (or `fid`)."""
    data = {
        f"twi_{field}": value for field in _FIREBASE_TEXT_FIELDS if (value := _text(content, field))
    }
    data.update(content.get("data") or {})
    message = _merge({"data": data}, _from_legacy(override or {}))
    data = {
        key: _string(value)
        for key, value in _object(message.pop("data"), "Fcm/Gcm 'data'").items()
        if key != RECEIPT_KEY
    }
    if not data and not message:
        raise PayloadError(
            errors.INVALID_PARAMETER,
            "Nothing to send to FCM: give Title, Body, Sound, Action, Data or an Fcm/Gcm override",
        )
    if receipt is not None:
        data[RECEIPT_KEY] = receipt
    return {**message, "data": data} if data else message


def _from_legacy(override: Mapping[str, Any]) -> dict[str, Any]:
    """A legacy-shaped (or v1-shaped) Fcm/Gcm override as v1 `message` fields."""
    translated: dict[str, Any] = {}
    explicit: dict[str, Any] = {}
    for key, value in override.items():
        translate = _LEGACY_ROOT.get(key)
        if translate is None:
            explicit[key] = value
        else:
            translated = _merge(translated, translate(value))
    return _merge(translated, explicit)


def _legacy_notification(value: Any) -> dict[str, Any]:
    """Split a legacy `notification` into its cross-platform, Android and APNs parts."""
    common: dict[str, Any] = {}
    android: dict[str, Any] = {}
    aps: dict[str, Any] = {}
    for key, field in _object(value, "Fcm/Gcm 'notification'").items():
        if key in _NOTIFICATION_COMMON:
            common[key] = field
            continue
        android_key, aps_path = _LEGACY_NOTIFICATION.get(key, (key, None))
        if android_key is not None:
            android[android_key] = field
        if aps_path is not None:
            aps = _merge(aps, _nested(aps_path, _badge(field) if key == "badge" else field))
    parts: dict[str, Any] = {}
    if common:
        parts["notification"] = common
    if android:
        parts["android"] = {"notification": android}
    return _merge(parts, _apns_aps(aps))


def _android(field: str, convert: Callable[[Any], Any] = lambda value: value) -> _Translate:
    """A translation of a legacy root key that v1 moved under `android`."""
    return lambda value: {"android": {field: convert(value)}}


def _aps_flag(name: str) -> _Translate:
    """A translation of a legacy boolean that v1 expresses as an `aps` flag for iOS targets."""
    return lambda value: _apns_aps({name: 1}) if value else {}


def _apns_aps(aps: dict[str, Any]) -> dict[str, Any]:
    return {"apns": {"payload": {"aps": aps}}} if aps else {}


def _seconds(value: Any) -> str:
    """v1 durations are strings like "3600s"; legacy `time_to_live` was whole seconds."""
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise PayloadError(
            errors.INVALID_PARAMETER,
            f"'time_to_live' in the Fcm/Gcm override must be whole seconds, got {value!r}",
        )
    return f"{int(value)}s"


def _badge(value: Any) -> Any:
    """Legacy FCM took the badge as a string; `aps.badge` must be a number."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


# Legacy FCM root keys → their v1 translation (table in the module docstring).
_LEGACY_ROOT: dict[str, _Translate] = {
    "notification": _legacy_notification,
    "priority": _android("priority", lambda value: str(value).upper()),
    "time_to_live": _android("ttl", _seconds),
    "collapse_key": _android("collapse_key"),
    "restricted_package_name": _android("restricted_package_name"),
    "content_available": _aps_flag("content-available"),
    "mutable_content": _aps_flag("mutable-content"),
}


def _sms(content: Mapping[str, Any], receipt: str | None) -> dict[str, Any]:
    """Twilio Messaging form fields in snake case; Title, Sound, Action and Data don't apply.

    Only given fields are present, so the channel's own defaults (the Messaging Service's
    status callback) apply to the rest.
    """
    sms = content.get("sms") or {}
    payload: dict[str, Any] = {}
    if body := sms["body"] if "body" in sms else _text(content, "body"):
        payload["body"] = body
    if media_urls := sms.get("media_urls"):
        payload["media_urls"] = list(media_urls)
    if not payload:
        raise PayloadError(
            SMS_BODY_REQUIRED,
            "Message body is required: give Body, or body or media_urls in the Sms override",
        )
    for field in ("status_callback", "max_price"):
        if sms.get(field) is not None:
            payload[field] = sms[field]
    return payload


def _facebook_messenger(content: Mapping[str, Any], receipt: str | None) -> dict[str, Any]:
    """Text plus the Send API's messaging_type/tag (providers.md §5.1).

    A notification is proactive, so the default type is UPDATE (inside the 24-hour window); a
    `tag` alone implies MESSAGE_TAG, the only type Graph accepts a tag with.
    """
    override = content.get("facebook_messenger") or {}
    text = override.get("text") or _text(content, "body")
    if not text:
        raise PayloadError(
            MISSING_MESSENGER_BODY,
            "Messenger needs a body: give Body or text in the FacebookMessenger override",
        )
    tag = override.get("tag")
    payload = {
        "text": text,
        "messaging_type": override.get("messaging_type") or ("MESSAGE_TAG" if tag else "UPDATE"),
    }
    if tag:
        payload["tag"] = tag
    return payload


def _webpush(content: Mapping[str, Any], receipt: str | None) -> dict[str, Any]:
    """The JSON a service worker receives; minimal until the web-push channel needs more."""
    payload: dict[str, Any] = {
        key: value for key in ("title", "body") if (value := _text(content, key))
    }
    if data := content.get("data"):
        payload["data"] = data
    if not payload:
        raise PayloadError(
            errors.INVALID_PARAMETER, "Nothing to send by web push: give Title, Body or Data"
        )
    return _with_receipt(payload, receipt)


def _email(content: Mapping[str, Any], receipt: str | None) -> dict[str, Any]:
    """What clarion.channels.email composes: subject, text and the Email override's extras."""
    override = content.get("email") or {}
    text = override.get("text") or _text(content, "body")
    html = override.get("html")
    if not text and not html:
        raise PayloadError(
            errors.INVALID_PARAMETER,
            "An e-mail needs a Body, or text or html in the Email override",
        )
    payload = {"subject": override.get("subject") or _text(content, "title"), "text": text}
    payload.update({key: override[key] for key in EMAIL_EXTRAS if override.get(key)})
    return payload


_BUILDERS: dict[str, _Builder] = {
    "apn": _apn,
    "fcm": _fcm,
    "gcm": _gcm,
    "sms": _sms,
    "facebook-messenger": _facebook_messenger,
    "webpush": _webpush,
    "email": _email,
}


def _with_receipt(document: dict[str, Any], receipt: str | None) -> dict[str, Any]:
    """Only Clarion sets the receipt key, so a stray one is dropped before ours goes in."""
    document = {key: value for key, value in document.items() if key != RECEIPT_KEY}
    if receipt is not None:
        document[RECEIPT_KEY] = receipt
    return document


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, objects merged key by key at every depth, neither mutated."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} for the path ("a", "b")."""
    nested: dict[str, Any] = {path[-1]: value}
    for key in reversed(path[:-1]):
        nested = {key: nested}
    return nested


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(errors.INVALID_PARAMETER, f"{name} must be a JSON object")
    return value


def _text(content: Mapping[str, Any], field: str) -> str | None:
    """A generic text field; an empty string counts as not given."""
    value = content.get(field)
    return value if isinstance(value, str) and value else None


def _string(value: Any) -> str:
    """FCM data values must be strings (providers.md §2.2): non-strings go as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
