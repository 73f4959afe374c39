"""Twilio's OpenAPI contract for Notify v1, fuzzed against a real `clarion serve` (schemathesis).

Every operation in the spec is exercised with generated requests, valid and invalid, most of them
aimed at resources that exist (so the 2xx paths are reached, not only 404s). What must hold for
every response: no 5xx; 2xx bodies match the spec's schema; any other status is a 4xx in
Twilio's error format. The spec documents only success codes, so a 4xx is Clarion saying no
to a request, which is allowed; its body shape is what clients parse.

twilio_notify_v1.json is Twilio's published spec (twilio-oai, Apache-2.0), copied verbatim.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, Case, GenerationMode
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

if TYPE_CHECKING:  # the fixtures' types; conftest modules are not imported by tests
    from conftest import ClarionServer

SPEC = Path(__file__).with_name("twilio_notify_v1.json")
LABELS = sorted(
    result.ok().label for result in schemathesis.openapi.from_path(SPEC).get_all_operations()
)
MAX_EXAMPLES = 25

APN_TOKEN = "c0" * 32


def status_is_documented_or_4xx(ctx: CheckContext, response: Any, case: Case) -> bool | None:
    """The spec lists only success codes; refusals must be 4xx, never another success."""
    documented = {
        int(code) for code in case.operation.definition.raw["responses"] if code.isdigit()
    }
    status = response.status_code
    assert status in documented or 400 <= status < 500, (
        f"{status} is neither documented ({sorted(documented)}) nor a 4xx"
    )
    return None


def errors_are_twilio_shaped(ctx: CheckContext, response: Any, case: Case) -> bool | None:
    """A 4xx carries {code, message, more_info, status}: what the SDKs turn into exceptions."""
    if not 400 <= response.status_code < 500:
        return None
    body = response.json()
    assert set(body) == {"code", "message", "more_info", "status"}, body
    assert body["status"] == response.status_code, body
    assert isinstance(body["code"], int), body
    assert body["code"] >= 20000, body
    assert isinstance(body["message"], str), body
    assert body["message"], body
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{body['code']}", body
    return None


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_is_documented_or_4xx,
    errors_are_twilio_shaped,
]


class Fixtures:
    """Real resources of the server's account, created afresh for each operation under test."""

    def __init__(self, api: httpx.Client) -> None:
        self.credential = _created(api, "/v1/Credentials", {"Type": "gcm", "ApiKey": "AIza-e2e"})
        self.service = _created(
            api,
            "/v1/Services",
            {"FriendlyName": "conformance", "GcmCredentialSid": self.credential},
        )
        self.binding = _created(
            api,
            f"/v1/Services/{self.service}/Bindings",
            {"Identity": "alice", "BindingType": "apn", "Address": APN_TOKEN, "Tag": "vip"},
        )

    def path_parameters(self, path: str) -> dict[str, str]:
        """The real SIDs for `path`'s parameters."""
        params: dict[str, str] = {}
        if "{ServiceSid}" in path:
            params["ServiceSid"] = self.service
        if "{Sid}" in path:
            if path.startswith("/v1/Credentials"):
                params["Sid"] = self.credential
            elif "/Bindings/" in path:
                params["Sid"] = self.binding
            else:
                params["Sid"] = self.service
        return params

    def plausible(self, case: Case) -> Case:
        """`case` with the values the spec leaves free made valid, so it can succeed.

        The spec types most parameters as any string (addresses, URLs, JSON payloads), and
        generated strings are almost never valid ones; without this only the refusals of
        create and update operations would be checked, never their 2xx bodies.
        """
        if isinstance(case.body, dict):
            _replace_present(case.body, self._plausible_body_values(case))
            for name in (
                "ToBinding",
                "Segment",
                "PageToken",
                "Certificate",
                "PrivateKey",
                "Secret",
            ):
                case.body.pop(name, None)
            for name in ("ApnCredentialSid", "FcmCredentialSid", "CredentialSid"):
                case.body.pop(name, None)
            if case.operation.path.endswith("/Notifications"):
                case.body["Identity"] = ["alice"]
                case.body.setdefault("Body", "Hello")
            if case.operation.path == "/v1/Credentials":
                case.body.update(Type="gcm", ApiKey="AIza-e2e")
        if isinstance(case.query, dict):
            _replace_present(
                case.query,
                {"Identity": ["alice"], "Tag": ["vip"], "Page": 0, "FriendlyName": "conformance"},
            )
            case.query.pop("PageToken", None)
        return case

    def _plausible_body_values(self, case: Case) -> dict[str, Any]:
        assert isinstance(case.body, dict)
        binding_type = case.body.get("BindingType")
        payload = json.dumps({"key": "value"})
        return {
            "FriendlyName": "plausible",
            "Identity": "alice",
            "Address": PLAUSIBLE_ADDRESSES.get(str(binding_type), "address-1"),
            "Tag": ["vip"],
            "NotificationProtocolVersion": "3",
            "Endpoint": "endpoint-1",
            "GcmCredentialSid": self.credential,
            "FacebookMessengerPageId": "1234567890",
            "AlexaSkillId": "amzn1.ask.skill.1",
            "DefaultApnNotificationProtocolVersion": "3",
            "DefaultGcmNotificationProtocolVersion": "3",
            "DefaultFcmNotificationProtocolVersion": "3",
            "DefaultAlexaNotificationProtocolVersion": "3",
            "DeliveryCallbackUrl": "https://example.com/callback",
            "ApiKey": "AIza-e2e",
            "Ttl": 3600,
            **dict.fromkeys(
                ("Data", "Apn", "Gcm", "Fcm", "Sms", "FacebookMessenger", "Alexa"), payload
            ),
        }


PLAUSIBLE_ADDRESSES = {
    "apn": APN_TOKEN,
    "gcm": "registration-token:1",
    "fcm": "registration-token:1",
    "sms": "+14155550123",
    "facebook-messenger": "1234567890",
    "alexa": "amzn1.ask.account.1",
}


def _replace_present(values: dict[str, Any], replacements: dict[str, Any]) -> None:
    for name, value in replacements.items():
        if name in values:
            values[name] = value


def _created(api: httpx.Client, path: str, data: dict[str, str]) -> str:
    response = api.post(path, data=data)
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])


@pytest.fixture(scope="module")
def api(clarion_server: ClarionServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=clarion_server.base_url,
        auth=(clarion_server.account_sid, clarion_server.auth_token),
    ) as client:
        yield client


@pytest.fixture(scope="module")
def schema(clarion_server: ClarionServer) -> BaseSchema:
    """The spec, aimed at the live server and authenticated as its account."""
    loaded = schemathesis.openapi.from_path(SPEC)
    loaded.config.update(
        base_url=clarion_server.base_url,
        basic_auth=(clarion_server.account_sid, clarion_server.auth_token),
    )
    return loaded


@pytest.mark.parametrize("label", LABELS)
def test_operation_conforms_to_the_twilio_spec(
    label: str, schema: BaseSchema, api: httpx.Client
) -> None:
    operation = schema.find_operation_by_label(label)
    assert operation is not None
    fixtures = Fixtures(api)
    real = fixtures.path_parameters(operation.path)
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real).map(
            fixtures.plausible
        ),
        operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real),
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=real),
    )
    statuses: set[int] = set()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Case) -> None:
        response = case.call()
        statuses.add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    check()
    # Some request must have succeeded on the real resource: otherwise only refusals were checked.
    assert any(200 <= status < 300 for status in statuses), sorted(statuses)
