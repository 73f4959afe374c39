"""Assertions shared by the API tests."""

from __future__ import annotations

import httpx


def assert_error(response: httpx.Response, status: int, code: int, *fragments: str) -> None:
    """A Twilio error body with this status and code whose message names every fragment."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message", "more_info", "status"}
    assert body["code"] == code
    assert body["status"] == status
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    for fragment in fragments:
        assert fragment in body["message"], body["message"]
