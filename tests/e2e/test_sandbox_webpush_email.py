"""`clarion serve --sandbox` delivers web pushes and e-mails too: any subscription goes to the
built-in push service, any address to the built-in SMTP relay, and the README's magic
addresses retire bindings. Web push is part of the `push` failover group."""

from __future__ import annotations

import base64
import json
import secrets
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_sandbox import api, settled

if TYPE_CHECKING:  # the fixtures' types; conftest modules are not imported by tests
    from conftest import ClarionServer


def subscription(endpoint: str) -> str:
    """What a browser's `pushManager.subscribe()` gives a page: endpoint and fresh keys."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    keys = {"p256dh": _b64url(point), "auth": _b64url(secrets.token_bytes(16))}
    return json.dumps({"endpoint": endpoint, "expirationTime": None, "keys": keys})


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_web_pushes_and_emails_reach_every_sandbox_outcome(sandbox_server: ClarionServer) -> None:
    with api(sandbox_server) as client:
        service = client.post("/Services", data={"FriendlyName": "web and mail"}).json()["sid"]
        for identity, binding_type, address in [
            ("alice", "webpush", subscription("https://push.example.com/sub/alice-1")),
            ("bob", "webpush", subscription("https://push.example.com/sub/dead-bob")),
            ("carol", "email", "carol@example.com"),
            ("dave", "email", "dead-dave@example.com"),
        ]:
            registered = client.post(
                f"/Services/{service}/Bindings",
                data={"Identity": identity, "BindingType": binding_type, "Address": address},
            )
            assert registered.status_code == 201, registered.text

        sid = client.post(
            f"/Services/{service}/Notifications",
            data={"Tag": "all", "Title": "Hello", "Body": "From the sandbox"},
        ).json()["sid"]
        base = f"/Services/{service}/Notifications/{sid}"
        settled(client, base, lambda body: body["status"] == "completed")
        rows = client.get(f"{base}/Deliveries").json()["deliveries"]

        outcomes = {row["identity"]: (row["status"], row["error_code"]) for row in rows}
        assert outcomes == {
            "alice": ("sent", None),
            "bob": ("failed", "410"),
            "carol": ("sent", None),
            "dave": ("failed", "550"),
        }
        provider_sids = {row["identity"]: row["provider_sid"] for row in rows}
        assert "/message/" in provider_sids["alice"]
        assert provider_sids["carol"].endswith("@clarion.invalid>")
        dead = client.get(f"/Services/{service}/Bindings", params={"Status": "inactive"}).json()[
            "bindings"
        ]
        assert sorted(binding["identity"] for binding in dead) == ["bob", "dave"]


def test_a_gone_web_push_subscription_fails_over_to_email(sandbox_server: ClarionServer) -> None:
    with api(sandbox_server) as client:
        service = client.post("/Services", data={"FriendlyName": "failover"}).json()["sid"]
        for binding_type, address in [
            ("webpush", subscription("https://push.example.com/sub/dead-erin")),
            ("email", "erin@example.com"),
        ]:
            client.post(
                f"/Services/{service}/Bindings",
                data={"Identity": "erin", "BindingType": binding_type, "Address": address},
            )

        sid = client.post(
            f"/Services/{service}/Notifications",
            data={
                "Identity": "erin",
                "Body": "Your code is 123456",
                "Failover": json.dumps({"channels": ["push", "email"], "wait": 60}),
            },
        ).json()["sid"]
        # The chain then waits for a sign of life from the e-mail: the deliveries are the story.
        rows = settled(
            client,
            f"/Services/{service}/Notifications/{sid}/Deliveries",
            lambda body: any(
                row["channel"] == "email" and row["status"] not in ("pending", "sending")
                for row in body["deliveries"]
            ),
        )["deliveries"]

        by_channel = {row["channel"]: row for row in rows}
        assert (by_channel["webpush"]["status"], by_channel["webpush"]["error_code"]) == (
            "failed",
            "410",
        )
        assert by_channel["email"]["status"] == "sent"
        assert by_channel["email"]["failover_of"] == by_channel["webpush"]["sid"]
