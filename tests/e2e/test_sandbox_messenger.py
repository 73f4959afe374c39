"""`clarion serve --sandbox`: the Messenger emulator confirms what it delivers, as Meta does.

After accepting a message the emulator posts a signed `message_deliveries` event to Clarion's
webhook for the sandbox's Messenger credential, so a Messenger send ends `delivered` and stops
a failover chain waiting on it, with no page and no Meta app.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from test_sandbox import api, settled

if TYPE_CHECKING:  # the fixtures' types; conftest modules are not imported by tests
    from conftest import ClarionServer


def test_a_messenger_send_is_confirmed_by_the_delivery_webhook(
    sandbox_server: ClarionServer,
) -> None:
    with api(sandbox_server) as client:
        policy = json.dumps({"channels": ["messenger", "sms"], "wait": 3600})
        service = client.post(
            "/Services", data={"FriendlyName": "messenger", "Failover": policy}
        ).json()["sid"]
        for binding_type, address in (
            ("facebook-messenger", "2400000000000042"),
            ("sms", "+14155550100"),
        ):
            client.post(
                f"/Services/{service}/Bindings",
                data={"Identity": "erin", "BindingType": binding_type, "Address": address},
            ).raise_for_status()

        sid = client.post(
            f"/Services/{service}/Notifications", data={"Identity": "erin", "Body": "Shipped"}
        ).json()["sid"]

        # Completed long before the hour's wait: only a confirmation ends the chain this soon.
        body = settled(
            client,
            f"/Services/{service}/Notifications/{sid}",
            lambda body: body["status"] == "completed",
        )
        assert body["failover"]["identities"]["confirmed"] == 1
        rows = client.get(f"/Services/{service}/Notifications/{sid}/Deliveries").json()
        assert [(row["channel"], row["status"]) for row in rows["deliveries"]] == [
            ("facebook-messenger", "delivered")
        ]
