"""SMS over SMPP through a real `clarion serve --sandbox`: a service whose SMS credential is an
`smpp` one aimed at an SMSC emulator sends over its bind instead of the sandbox's Twilio, a
delivery receipt on the bind makes the delivery `delivered`, a failed one `failed`, and a
number the SMSC refuses retires its binding."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from clarion.emulators.smsc import SmscEmulator

if TYPE_CHECKING:  # the fixtures' types; conftest modules are not imported by tests
    from conftest import ClarionServer

SYSTEM_ID = "e2e-smpp"
PASSWORD = "e2e-pw"
SETTLE_SECONDS = 30.0


@pytest.fixture
async def smsc() -> AsyncIterator[SmscEmulator]:
    emulator = SmscEmulator(accounts={SYSTEM_ID: PASSWORD}, receipt_delay=0.2)
    await emulator.start()
    yield emulator
    await emulator.close()


async def settled(
    client: httpx.AsyncClient, path: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """GET `path` until `done(body)`; the engine and the SMSC work asynchronously."""
    async with asyncio.timeout(SETTLE_SECONDS):
        while True:
            body: dict[str, Any] = (await client.get(path)).json()
            if done(body):
                return body
            await asyncio.sleep(0.1)


async def test_sms_over_smpp_ends_with_the_receipts_word(
    sandbox_server: ClarionServer, smsc: SmscEmulator
) -> None:
    async with httpx.AsyncClient(
        base_url=f"{sandbox_server.base_url}/v1",
        auth=(sandbox_server.account_sid, sandbox_server.auth_token),
        timeout=10.0,
    ) as client:
        credential = await client.post(
            "/Credentials",
            data={
                "Type": "smpp",
                "Host": smsc.host,
                "Port": str(smsc.port),
                "SystemId": SYSTEM_ID,
                "Password": PASSWORD,
                "SourceAddr": "+15005550006",
            },
        )
        assert credential.status_code == 201, credential.text
        service = (
            await client.post(
                "/Services",
                data={"FriendlyName": "smpp", "SmsCredentialSid": credential.json()["sid"]},
            )
        ).json()["sid"]
        for identity, address in [
            ("alice", "+14155550100"),
            ("bob", "+15005550001"),  # the SMSC refuses it: ESME_RINVDSTADR
            ("carol", "+15005550007"),  # accepted, then reported UNDELIV
        ]:
            registered = await client.post(
                f"/Services/{service}/Bindings",
                data={"Identity": identity, "BindingType": "sms", "Address": address},
            )
            assert registered.status_code == 201, registered.text

        sid = (
            await client.post(
                f"/Services/{service}/Notifications",
                data={"Tag": "all", "Body": "Grüße aus der Sandbox — über SMPP"},
            )
        ).json()["sid"]
        final = {"delivered", "failed"}
        rows = (
            await settled(
                client,
                f"/Services/{service}/Notifications/{sid}/Deliveries",
                lambda body: (
                    len(body["deliveries"]) == 3
                    and all(row["status"] in final for row in body["deliveries"])
                ),
            )
        )["deliveries"]

        outcomes = {row["identity"]: (row["status"], row["error_code"]) for row in rows}
        assert outcomes == {
            "alice": ("delivered", None),
            "bob": ("failed", "SMPP 0x0B"),
            "carol": ("failed", "SMPP UNDELIV err:001"),
        }
        # The SMSC got the text itself, as UCS-2 ("—" is not in GSM 7), from the sender.
        texts = {message.destination_addr: message for message in smsc.messages}
        assert texts["14155550100"].text == "Grüße aus der Sandbox — über SMPP"
        assert texts["14155550100"].data_coding == 8
        provider_sids = {row["identity"]: row["provider_sid"] for row in rows}
        assert provider_sids["alice"] == texts["14155550100"].message_ids[0]

        inactive = (
            await client.get(f"/Services/{service}/Bindings", params={"Status": "inactive"})
        ).json()["bindings"]
        assert [binding["identity"] for binding in inactive] == ["bob"]
