"""Failover on `clarion serve --sandbox`: push first, SMS at once when the token is dead.

A real server with the built-in emulators; the Twilio SDK registers the bindings and sends, the
failover policy (an extension) and the Deliveries API are plain HTTP. The policy waits an hour,
so within the test only a failure can move a chain on: the identity whose APNs token is dead
gets an SMS, the one whose token is live gets none.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
from twilio.rest import Client

if TYPE_CHECKING:  # the fixtures' types; conftest modules are not imported by tests
    from conftest import ClarionServer

DEAD_TOKEN = "dead" + "1" * 60  # the sandbox's APNs answers 410 Unregistered
LIVE_TOKEN = "0" + "2" * 63
POLICY = {"channels": ["push", "sms"], "wait": 3600}
SETTLE_SECONDS = 30.0


def until(fetch: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    """`fetch()` until `done(result)`; the engine works asynchronously."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        result = fetch()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_a_dead_push_token_fails_over_to_sms_and_a_live_one_does_not(
    sandbox_server: ClarionServer,
) -> None:
    with httpx.Client(
        base_url=f"{sandbox_server.base_url}/v1",
        auth=(sandbox_server.account_sid, sandbox_server.auth_token),
    ) as client:
        created = client.post(
            "/Services", data={"FriendlyName": "failover", "Failover": json.dumps(POLICY)}
        )
        assert created.status_code == 201, created.text
        assert created.json()["failover"] == POLICY

        service_sid = created.json()["sid"]
        sdk = Client(sandbox_server.account_sid, sandbox_server.auth_token)
        sdk.notify.base_url = sandbox_server.base_url
        service = sdk.notify.v1.services(service_sid)
        for identity, binding_type, address in [
            ("dana", "apn", DEAD_TOKEN),
            ("dana", "sms", "+14155550101"),
            ("liam", "apn", LIVE_TOKEN),
            ("liam", "sms", "+14155550102"),
        ]:
            service.bindings.create(identity=identity, binding_type=binding_type, address=address)
        sid = service.notifications.create(identity=["dana", "liam"], body="Your order").sid

        base = f"/Services/{service_sid}/Notifications/{sid}"
        # Dana's SMS is confirmed by the emulator's `delivered` status callback; Liam's chain
        # still waits for a sign of life on push.
        body = until(
            lambda: client.get(base).json(),
            lambda body: body["failover"]["identities"]["confirmed"] == 1,
        )
        assert body["status"] != "completed"
        assert body["failover"]["identities"] == {
            "total": 2,
            "waiting": 1,
            "confirmed": 1,
            "exhausted": 0,
            "by_channel": {
                "push": {"reached": 1, "confirmed": 0},
                "sms": {"reached": 1, "confirmed": 1},
            },
        }

        rows = client.get(f"{base}/Deliveries").json()["deliveries"]
        deliveries = {(row["identity"], row["channel"]): row for row in rows}
        assert set(deliveries) == {("dana", "apn"), ("dana", "sms"), ("liam", "apn")}
        dead_push, sms, live_push = (
            deliveries[key] for key in [("dana", "apn"), ("dana", "sms"), ("liam", "apn")]
        )
        assert (dead_push["status"], dead_push["error_code"]) == ("failed", "Unregistered")
        assert (dead_push["failover_step"], dead_push["failover_reason"]) == (0, None)
        assert {
            key: sms[key]
            for key in ("address", "status", "failover_of", "failover_step", "failover_reason")
        } == {
            "address": "+14155550101",
            "status": "delivered",
            "failover_of": dead_push["sid"],
            "failover_step": 1,
            "failover_reason": "dead_token",
        }
        assert sms["provider_sid"].startswith("SM")
        assert (live_push["status"], live_push["failover_step"]) == ("sent", 0)

        dana_push = client.get(
            f"/Services/{service_sid}/Bindings", params={"Identity": "dana"}
        ).json()["bindings"]
        assert {(b["binding_type"], b["status"]) for b in dana_push} == {
            ("apn", "inactive"),
            ("sms", "active"),
        }
