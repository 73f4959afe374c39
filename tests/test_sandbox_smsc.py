"""`clarion serve --sandbox` runs an SMSC emulator and announces how to reach it: an smpp
credential made of what it prints sends SMS and gets receipts; SMS stay on Twilio otherwise."""

from __future__ import annotations

import asyncio

from clarion.channels.base import Message, Outcome
from clarion.channels.smpp import DeliveryReceipt, SmppChannel
from clarion.channels.twilio_sms import TwilioSmsChannel
from clarion.delivery.channels import Endpoints
from clarion.sandbox import Sandbox


async def test_the_announced_smsc_takes_an_smpp_credential() -> None:
    sandbox = Sandbox(endpoints=Endpoints(public_url="http://127.0.0.1:9"))
    await sandbox.start()
    receipts: list[DeliveryReceipt] = []
    settings = sandbox.smpp_credential
    channel = SmppChannel(
        host=settings["Host"],
        port=int(settings["Port"]),
        system_id=settings["SystemId"],
        password=settings["Password"],
        source_addr=settings["SourceAddr"],
        on_receipt=receipts.append,
    )
    try:
        announced = "\n".join(sandbox.announcement())
        assert f"{settings['Host']}:{settings['Port']}" in announced
        assert f"SystemId {settings['SystemId']}, Password {settings['Password']}" in announced
        assert isinstance(sandbox.fallback("sms"), TwilioSmsChannel)

        result = await channel.send(
            Message(key="k", address="+14155550100", payload={"body": "hi"})
        )

        assert result.outcome is Outcome.ACCEPTED
        async with asyncio.timeout(15):
            while not receipts:  # noqa: ASYNC110 - the SMSC reports on its own time
                await asyncio.sleep(0.01)
        assert (receipts[0].message_id, receipts[0].status) == (result.provider_ref, "delivered")
        assert [message.text for message in sandbox.smsc.messages] == ["hi"]
    finally:
        await channel.close()
        await sandbox.stop()
