"""`clarion serve --sandbox`: the whole flow with no provider account, as the README promises.

A service without credentials sends through the built-in emulators, whose magic addresses
script each provider's answer; the test follows one notification to every kind of outcome.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
from twilio.rest import Client

if TYPE_CHECKING:  # the fixtures' types; conftest modules are not imported by tests
    from conftest import ClarionServer

ALICE_TOKEN = "ab" * 32
DEAD_TOKEN = "dead" + "0" * 60
SETTLE_SECONDS = 30.0


def api(server: ClarionServer) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.base_url}/v1", auth=(server.account_sid, server.auth_token)
    )


def settled(client: httpx.Client, path: str, done: Any) -> dict[str, Any]:
    """GET `path` until `done(body)`; the engine works asynchronously."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        body: dict[str, Any] = client.get(path).json()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_one_notification_reaches_every_sandbox_outcome(sandbox_server: ClarionServer) -> None:
    sdk = Client(sandbox_server.account_sid, sandbox_server.auth_token)
    sdk.notify.base_url = sandbox_server.base_url
    service = sdk.notify.v1.services.create(friendly_name="sandbox demo")
    for identity, binding_type, address in [
        ("alice", "apn", ALICE_TOKEN),
        ("alice", "sms", "+14155550100"),
        ("bob", "apn", DEAD_TOKEN),
        ("carol", "fcm", "bad-token-1"),
        ("dave", "sms", "+15005550001"),  # Twilio's magic "invalid number"
        ("erin", "facebook-messenger", "dead-psid"),
    ]:
        service.bindings.create(identity=identity, binding_type=binding_type, address=address)

    sid = service.notifications.create(tag=["all"], body="Hello from the sandbox").sid

    with api(sandbox_server) as client:
        base = f"/Services/{service.sid}/Notifications/{sid}"
        # SMS "delivered" arrives later, through Twilio's signed status callback.
        settled(
            client,
            base,
            lambda body: body["status"] == "completed" and body["deliveries"].get("sent", 0) == 1,
        )
        rows = client.get(f"{base}/Deliveries").json()["deliveries"]
        outcomes = {(row["identity"], row["channel"]): row for row in rows}
        assert {key: (row["status"], row["error_code"]) for key, row in outcomes.items()} == {
            ("alice", "apn"): ("sent", None),
            ("alice", "sms"): ("delivered", None),
            ("bob", "apn"): ("failed", "Unregistered"),
            ("carol", "fcm"): ("failed", "INVALID_ARGUMENT"),
            ("dave", "sms"): ("failed", "21211"),
            ("erin", "facebook-messenger"): ("failed", "551/1545041"),
        }
        assert outcomes[("alice", "apn")]["provider_sid"]
        assert outcomes[("alice", "sms")]["provider_sid"].startswith("SM")

        dead = client.get(
            f"/Services/{service.sid}/Bindings", params={"Status": "inactive"}
        ).json()["bindings"]
        assert sorted(binding["identity"] for binding in dead) == ["bob", "carol", "dave", "erin"]
        assert all(binding["inactive_reason"] and binding["inactive_since"] for binding in dead)


def test_a_retired_binding_receives_nothing_until_registered_again(
    sandbox_server: ClarionServer,
) -> None:
    with api(sandbox_server) as client:
        service = client.post("/Services", data={"FriendlyName": "retire"}).json()["sid"]
        register = {"Identity": "bob", "BindingType": "apn", "Address": DEAD_TOKEN}
        binding = client.post(f"/Services/{service}/Bindings", data=register).json()
        first = client.post(
            f"/Services/{service}/Notifications", data={"Identity": "bob", "Body": "1"}
        ).json()["sid"]
        settled(
            client,
            f"/Services/{service}/Notifications/{first}",
            lambda body: body["status"] == "completed",
        )
        assert (
            client.get(f"/Services/{service}/Bindings/{binding['sid']}").json()["status"]
            == "inactive"
        )

        second = client.post(
            f"/Services/{service}/Notifications", data={"Identity": "bob", "Body": "2"}
        ).json()["sid"]
        body = settled(
            client,
            f"/Services/{service}/Notifications/{second}",
            lambda body: body["status"] == "completed",
        )
        assert body["deliveries"] == {"total": 0}

        again = client.post(f"/Services/{service}/Bindings", data=register).json()
        assert again["sid"] == binding["sid"]
        assert again["status"] == "active"
