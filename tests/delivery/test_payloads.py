"""Per-channel payloads: Twilio Notify's mapping of Body/Title/Sound/Action/Data and overrides.

Each mapping rule of reference/twilio-notify.md §4.4 is one test; the content dicts have the
shape api/notifications.py stores (every key present, None when not given).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clarion.delivery.payloads import RECEIPT_KEY, PayloadError, build

FIELDS = (
    "title", "body", "sound", "action", "data", "apn", "gcm", "fcm", "sms",
    "facebook_messenger", "alexa",
)  # fmt: skip


def content(**given: Any) -> dict[str, Any]:
    """A notification's content as stored: every field present, None unless given."""
    assert set(given) <= set(FIELDS)
    return {field: given.get(field) for field in FIELDS}


def failure(binding_type: str, stored: dict[str, Any]) -> PayloadError:
    with pytest.raises(PayloadError) as raised:
        build(binding_type, stored)
    return raised.value


# APNs


def test_apn_title_and_body_become_the_alert() -> None:
    payload = build("apn", content(title="Sale", body="50% off"))
    assert payload == {"aps": {"alert": {"title": "Sale", "body": "50% off"}}}


def test_apn_sound_becomes_aps_sound() -> None:
    assert build("apn", content(body="hi", sound="ding.caf"))["aps"]["sound"] == "ding.caf"


def test_apn_action_becomes_the_category() -> None:
    assert build("apn", content(body="hi", action="REPLY"))["aps"]["category"] == "REPLY"


def test_apn_data_keys_sit_beside_aps() -> None:
    payload = build("apn", content(body="hi", data={"order": 42, "tags": ["a"]}))
    assert payload == {"aps": {"alert": {"body": "hi"}}, "order": 42, "tags": ["a"]}


def test_apn_data_cannot_replace_aps() -> None:
    payload = build("apn", content(body="hi", data={"aps": {"badge": 9}}))
    assert payload == {"aps": {"alert": {"body": "hi"}}}


def test_apn_override_wins_over_the_generic_fields() -> None:
    payload = build("apn", content(body="hi", sound="ding.caf", apn={"aps": {"sound": "bell"}}))
    assert payload["aps"]["sound"] == "bell"


def test_apn_override_merges_into_aps_key_by_key() -> None:
    override = {"aps": {"badge": 3, "alert": {"subtitle": "today"}}}
    payload = build("apn", content(title="Sale", body="50% off", apn=override))
    assert payload["aps"] == {
        "alert": {"title": "Sale", "body": "50% off", "subtitle": "today"},
        "badge": 3,
    }


def test_apn_override_may_replace_the_alert_outright() -> None:
    payload = build("apn", content(title="Sale", body="50% off", apn={"aps": {"alert": "Hi"}}))
    assert payload["aps"]["alert"] == "Hi"


def test_apn_override_adds_root_keys_and_beats_data() -> None:
    override = {"order": 7, "campaign": "spring"}
    payload = build("apn", content(body="hi", data={"order": 42}, apn=override))
    assert (payload["order"], payload["campaign"]) == (7, "spring")


def test_apn_data_alone_is_a_background_push() -> None:
    payload = build("apn", content(data={"sync": True}))
    assert payload == {"aps": {"content-available": 1}, "sync": True}


def test_apn_badge_alone_is_a_visible_push() -> None:
    payload = build("apn", content(data={"unread": 3}, apn={"aps": {"badge": 3}}))
    assert payload["aps"] == {"badge": 3}


def test_apn_override_can_make_a_background_push_itself() -> None:
    payload = build("apn", content(apn={"aps": {"content-available": 1}}))
    assert payload == {"aps": {"content-available": 1}}


def test_apn_with_nothing_to_show_fails_with_missing_payload() -> None:
    error = failure("apn", content(sms={"body": "text only"}))
    assert error.code == 52136


def test_apn_aps_override_must_be_an_object() -> None:
    error = failure("apn", content(body="hi", apn={"aps": "loud"}))
    assert "aps" in error.message


def test_apn_receipt_is_a_reserved_key_beside_aps() -> None:
    payload = build("apn", content(body="hi"), receipt="rc_123")
    assert payload == {"aps": {"alert": {"body": "hi"}}, RECEIPT_KEY: "rc_123"}


def test_apn_receipt_is_absent_when_not_given() -> None:
    assert RECEIPT_KEY not in build("apn", content(body="hi"))


def test_apn_receipt_does_not_make_a_push_out_of_nothing() -> None:
    with pytest.raises(PayloadError):
        build("apn", content(sms={"body": "text only"}), receipt="rc_123")


# FCM and GCM share Notify's data-message format.

FIREBASE = pytest.mark.parametrize("binding_type", ["fcm", "gcm"])


@FIREBASE
def test_firebase_generic_fields_become_twi_data_keys(binding_type: str) -> None:
    stored = content(title="Sale", body="50% off", sound="ding", action="OPEN")
    assert build(binding_type, stored) == {
        "data": {
            "twi_title": "Sale",
            "twi_body": "50% off",
            "twi_sound": "ding",
            "twi_action": "OPEN",
        }
    }


@FIREBASE
def test_firebase_message_has_no_target(binding_type: str) -> None:
    payload = build(binding_type, content(body="hi"))
    assert not payload.keys() & {"token", "topic", "condition", "fid"}


@FIREBASE
def test_firebase_data_keys_join_the_twi_keys(binding_type: str) -> None:
    payload = build(binding_type, content(body="hi", data={"order": "42"}))
    assert payload["data"] == {"twi_body": "hi", "order": "42"}


@FIREBASE
def test_firebase_data_values_are_strings_non_strings_as_json(binding_type: str) -> None:
    data = {"n": 42, "flag": True, "nothing": None, "obj": {"a": [1, "b"]}, "text": "plain"}
    payload = build(binding_type, content(data=data))
    assert payload["data"] == {
        "n": "42",
        "flag": "true",
        "nothing": "null",
        "obj": '{"a":[1,"b"]}',
        "text": "plain",
    }


@given(
    data=st.dictionaries(
        st.text(min_size=1).filter(lambda key: not key.startswith("twi_")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda children: st.lists(children) | st.dictionaries(st.text(), children),
            max_leaves=5,
        ),
        min_size=1,
    )
)
def test_firebase_data_values_are_always_strings_that_decode_back(data: dict[str, Any]) -> None:
    sent = build("fcm", content(data=data))["data"]
    assert all(isinstance(value, str) for value in sent.values())
    assert {
        key: value if isinstance(data[key], str) else json.loads(value)
        for key, value in sent.items()
    } == data


def test_fcm_binding_uses_the_fcm_override_and_gcm_the_gcm_one() -> None:
    stored = content(body="hi", fcm={"collapse_key": "f"}, gcm={"collapse_key": "g"})
    assert build("fcm", stored)["android"] == {"collapse_key": "f"}
    assert build("gcm", stored)["android"] == {"collapse_key": "g"}


def test_firebase_override_data_wins_over_generic_data() -> None:
    stored = content(body="hi", data={"order": 1}, fcm={"data": {"order": 2, "extra": "x"}})
    assert build("fcm", stored)["data"] == {"twi_body": "hi", "order": "2", "extra": "x"}


def test_firebase_legacy_notification_splits_into_common_and_android_parts() -> None:
    override = {
        "notification": {
            "title": "T",
            "body": "B",
            "image": "https://example.com/i.png",
            "icon": "ic_sale",
            "color": "#ff0000",
            "android_channel_id": "offers",
        }
    }
    payload = build("fcm", content(fcm=override))
    assert payload == {
        "notification": {"title": "T", "body": "B", "image": "https://example.com/i.png"},
        "android": {
            "notification": {"icon": "ic_sale", "color": "#ff0000", "channel_id": "offers"}
        },
    }


def test_firebase_legacy_notification_keeps_ios_fields_for_ios_devices() -> None:
    override = {
        "notification": {
            "body": "B",
            "sound": "ding",
            "click_action": "OPEN",
            "badge": "4",
            "subtitle": "S",
        }
    }
    payload = build("fcm", content(fcm=override))
    assert payload["android"] == {"notification": {"sound": "ding", "click_action": "OPEN"}}
    assert payload["apns"] == {
        "payload": {
            "aps": {"sound": "ding", "category": "OPEN", "badge": 4, "alert": {"subtitle": "S"}}
        }
    }


@pytest.mark.parametrize(
    ("legacy", "android"),
    [
        ({"priority": "high"}, {"priority": "HIGH"}),
        ({"priority": "normal"}, {"priority": "NORMAL"}),
        ({"time_to_live": 3600}, {"ttl": "3600s"}),
        ({"time_to_live": "60"}, {"ttl": "60s"}),
        ({"collapse_key": "score"}, {"collapse_key": "score"}),
        ({"restricted_package_name": "com.example"}, {"restricted_package_name": "com.example"}),
    ],
)
def test_firebase_legacy_root_keys_move_under_android(
    legacy: dict[str, Any], android: dict[str, Any]
) -> None:
    assert build("fcm", content(body="hi", fcm=legacy))["android"] == android


@pytest.mark.parametrize("ttl", [-1, 1.5, "1h", True, None])
def test_firebase_legacy_time_to_live_must_be_whole_seconds(ttl: object) -> None:
    error = failure("fcm", content(body="hi", fcm={"time_to_live": ttl}))
    assert "time_to_live" in error.message


def test_firebase_legacy_ios_flags_become_aps_flags() -> None:
    override = {"content_available": True, "mutable_content": True}
    payload = build("fcm", content(data={"sync": "1"}, fcm=override))
    assert payload["apns"] == {"payload": {"aps": {"content-available": 1, "mutable-content": 1}}}


def test_firebase_false_ios_flags_add_nothing() -> None:
    payload = build("fcm", content(body="hi", fcm={"content_available": False}))
    assert "apns" not in payload


def test_firebase_v1_blocks_pass_through_and_beat_legacy_keys() -> None:
    override = {
        "priority": "normal",
        "android": {"priority": "HIGH", "direct_boot_ok": True},
        "webpush": {"headers": {"Urgency": "high"}},
        "fcm_options": {"analytics_label": "sale"},
    }
    payload = build("fcm", content(body="hi", fcm=override))
    assert payload["android"] == {"priority": "HIGH", "direct_boot_ok": True}
    assert payload["webpush"] == {"headers": {"Urgency": "high"}}
    assert payload["fcm_options"] == {"analytics_label": "sale"}


def test_firebase_unknown_keys_pass_through_for_fcm_to_judge() -> None:
    assert build("fcm", content(body="hi", fcm={"dry_run": True}))["dry_run"] is True


def test_firebase_override_alone_is_enough_to_send() -> None:
    assert build("fcm", content(fcm={"notification": {"title": "T"}})) == {
        "notification": {"title": "T"}
    }


def test_firebase_with_nothing_to_send_fails() -> None:
    error = failure("fcm", content(apn={"aps": {"badge": 1}}))
    assert error.code == 20001


def test_firebase_receipt_goes_into_data() -> None:
    payload = build("fcm", content(body="hi"), receipt="rc_123")
    assert payload["data"] == {"twi_body": "hi", RECEIPT_KEY: "rc_123"}


def test_firebase_receipt_is_absent_when_not_given() -> None:
    assert RECEIPT_KEY not in build("fcm", content(body="hi"))["data"]


def test_firebase_receipt_cannot_be_forged_through_the_override() -> None:
    forged = content(body="hi", fcm={"data": {RECEIPT_KEY: "forged"}})
    assert RECEIPT_KEY not in build("fcm", forged)["data"]
    assert build("fcm", forged, receipt="rc_123")["data"][RECEIPT_KEY] == "rc_123"


# SMS


def test_sms_body_comes_from_body_and_nothing_else_applies() -> None:
    stored = content(title="Sale", body="50% off", sound="ding", action="OPEN", data={"a": 1})
    assert build("sms", stored) == {"body": "50% off"}


def test_sms_override_fields_win() -> None:
    override = {
        "body": "Short text",
        "media_urls": ["https://example.com/a.png"],
        "status_callback": "https://example.com/status",
        "max_price": "0.05",
    }
    assert build("sms", content(body="Long text", sms=override)) == override


def test_sms_media_alone_is_enough() -> None:
    payload = build("sms", content(sms={"media_urls": ["https://example.com/a.png"]}))
    assert payload == {"media_urls": ["https://example.com/a.png"]}


def test_sms_without_body_or_media_fails_as_message_body_required() -> None:
    error = failure("sms", content(title="Only a title", data={"a": 1}))
    assert error.code == 21602
    assert "body is required" in error.message


def test_sms_never_carries_a_receipt() -> None:
    assert build("sms", content(body="hi"), receipt="rc_123") == {"body": "hi"}


# Facebook Messenger


def test_messenger_text_is_the_body_sent_as_an_update() -> None:
    payload = build("facebook-messenger", content(title="ignored", body="Your order shipped"))
    assert payload == {"text": "Your order shipped", "messaging_type": "UPDATE"}


def test_messenger_override_sets_the_messaging_type_and_tag() -> None:
    override = {"messaging_type": "MESSAGE_TAG", "tag": "POST_PURCHASE_UPDATE", "text": "Shipped"}
    payload = build("facebook-messenger", content(body="hi", facebook_messenger=override))
    assert payload == override


def test_messenger_tag_alone_implies_message_tag() -> None:
    override = {"tag": "ACCOUNT_UPDATE"}
    payload = build("facebook-messenger", content(body="hi", facebook_messenger=override))
    assert payload["messaging_type"] == "MESSAGE_TAG"


def test_messenger_without_body_fails_as_missing_body() -> None:
    assert failure("facebook-messenger", content(title="no body")).code == 52203


# Web push and e-mail: minimal shapes until their channels need more.


def test_webpush_carries_title_body_data_and_receipt() -> None:
    payload = build("webpush", content(title="T", body="B", data={"a": 1}), receipt="rc_1")
    assert payload == {"title": "T", "body": "B", "data": {"a": 1}, RECEIPT_KEY: "rc_1"}


def test_webpush_with_nothing_to_show_fails() -> None:
    assert failure("webpush", content(sms={"body": "x"})).code == 20001


def test_email_subject_is_the_title_and_text_the_body() -> None:
    assert build("email", content(title="T", body="B")) == {"subject": "T", "text": "B"}


def test_email_without_body_fails() -> None:
    assert failure("email", content(title="T")).code == 20001


# Everything


@pytest.mark.parametrize("binding_type", ["alexa", "carrier-pigeon"])
def test_channels_clarion_cannot_deliver_to_fail_as_invalid_binding(binding_type: str) -> None:
    assert failure(binding_type, content(body="hi")).code == 52001


def test_empty_text_counts_as_not_given() -> None:
    assert build("apn", content(title="", body="hi")) == {"aps": {"alert": {"body": "hi"}}}


@pytest.mark.parametrize(
    "binding_type", ["apn", "fcm", "gcm", "sms", "facebook-messenger", "webpush", "email"]
)
def test_building_never_changes_the_stored_content(binding_type: str) -> None:
    stored = content(
        title="T",
        body="B",
        sound="s",
        action="a",
        data={"nested": {"x": 1}},
        apn={"aps": {"alert": {"subtitle": "S"}}, "nested": {"y": 2}},
        fcm={"notification": {"title": "F", "badge": "2"}, "data": {"z": 3}},
        gcm={"android": {"priority": "HIGH"}},
        sms={"media_urls": ["https://example.com/a.png"]},
        facebook_messenger={"tag": "ACCOUNT_UPDATE"},
    )
    before = copy.deepcopy(stored)
    build(binding_type, stored, receipt="rc_1")
    assert stored == before
