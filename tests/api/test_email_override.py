"""The `Email` override (an extension): validated at the API, shown back only when given, and
built into the e-mail channel's payload on top of Title and Body."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from assertions import assert_error
from clarion.delivery import payloads

TO_EMAIL = json.dumps({"binding_type": "email", "address": "ada@example.com"})


async def send(api: httpx.AsyncClient, service_sid: str, **params: Any) -> httpx.Response:
    return await api.post(
        f"/v1/Services/{service_sid}/Notifications", data={"ToBinding": TO_EMAIL, **params}
    )


async def test_an_email_override_is_stored_and_shown_back(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    override = {
        "subject": "Spring sale",
        "html": "<h1>Sale</h1>",
        "reply_to": "support@example.com",
        "headers": {"List-Unsubscribe": "<https://example.com/u>"},
    }

    created = await send(api, service_sid, Body="Sale", Email=json.dumps(override))

    assert created.status_code == 201, created.text
    assert created.json()["email"] == override
    fetched = await api.get(f"/v1/Services/{service_sid}/Notifications/{created.json()['sid']}")
    assert fetched.json()["email"] == override


async def test_without_an_email_override_the_response_keeps_the_spec_shape(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    created = await send(api, service_sid, Body="Hello")

    assert created.status_code == 201, created.text
    assert "email" not in created.json()


async def test_an_email_override_alone_is_content_enough(
    api: httpx.AsyncClient, service_sid: str
) -> None:
    created = await send(api, service_sid, Email=json.dumps({"html": "<p>Hi</p>"}))

    assert created.status_code == 201, created.text


INVALID = {
    "not an object": ("[1]", "must be a JSON object"),
    "an unknown key": ('{"cc": "x@example.com"}', "unknown key 'cc'"),
    "a number as text": ('{"text": 5}', "'text' must be a string"),
    "a two-line subject": ('{"subject": "Hi\\nBcc: x@example.com"}', "'subject' must be one line"),
    "a bad reply_to": ('{"reply_to": "nobody"}', "'reply_to' is not an e-mail address"),
    "headers as a list": ('{"headers": ["X-A"]}', "'headers' must be an object"),
    "a header Clarion writes": ('{"headers": {"Bcc": "x@example.com"}}', "may not set Bcc"),
    "a header name with a colon": ('{"headers": {"X:A": "1"}}', "not a header name"),
    "a header value on two lines": (
        '{"headers": {"X-A": "1\\r\\nBcc: x@example.com"}}',
        "the header X-A must be one line",
    ),
    "too many headers": (
        json.dumps({"headers": {f"X-{n}": "1" for n in range(21)}}),
        "at most 20 headers",
    ),
}


@pytest.mark.parametrize(("value", "fragment"), INVALID.values(), ids=INVALID.keys())
async def test_an_invalid_email_override_is_a_400_saying_why(
    api: httpx.AsyncClient, service_sid: str, value: str, fragment: str
) -> None:
    response = await send(api, service_sid, Body="Hello", Email=value)

    assert_error(response, 400, 20001, "Parameter 'Email' is invalid", fragment)


# --- the payload the e-mail channel gets ------------------------------------------------------


def test_title_and_body_are_the_subject_and_text() -> None:
    assert payloads.build("email", {"title": "T", "body": "B"}) == {"subject": "T", "text": "B"}


def test_the_override_wins_and_adds_html_reply_to_and_headers() -> None:
    override = {
        "subject": "S",
        "text": "plain",
        "html": "<p>rich</p>",
        "reply_to": "support@example.com",
        "headers": {"X-Campaign": "spring"},
    }

    built = payloads.build("email", {"title": "T", "body": "B", "email": override})

    assert built == override


def test_html_alone_makes_an_email() -> None:
    built = payloads.build("email", {"title": "T", "email": {"html": "<p>rich</p>"}})

    assert built == {"subject": "T", "text": None, "html": "<p>rich</p>"}


def test_an_email_with_neither_text_nor_html_fails() -> None:
    with pytest.raises(payloads.PayloadError) as raised:
        payloads.build("email", {"title": "T", "email": {"subject": "S"}})

    assert raised.value.code == 20001
    assert "Email override" in raised.value.message
