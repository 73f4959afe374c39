"""SMS over SMPP 3.4: the channel against the SMSC emulator, over real sockets.

Every submit_sm answer is classified (accepted, retry, dead number, failed), texts go as GSM 7
or UCS-2 and long ones in UDH parts the SMSC reassembles, throttling narrows the window, a lost
bind comes back, a refused bind fails at once, and receipts reach the callback.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import smpp34

from clarion.channels.base import Message, Outcome, Result
from clarion.channels.smpp import (
    QUEUE_FULL_DELAY,
    THROTTLED_DELAY,
    DeliveryReceipt,
    SmppChannel,
    encode_text,
    parse_receipt,
)
from clarion.emulators.smsc import Script, SmscEmulator
from support import closed_port

SYSTEM_ID = "clarion-test"
PASSWORD = "secret12"
SENDER = "+15005550006"
NUMBER = "+15551230001"


@pytest.fixture
async def smsc() -> AsyncIterator[SmscEmulator]:
    emulator = SmscEmulator(accounts={SYSTEM_ID: PASSWORD})
    await emulator.start()
    yield emulator
    await emulator.close()


class Receipts(list[DeliveryReceipt]):
    def for_id(self, message_id: str | None) -> list[DeliveryReceipt]:
        return [receipt for receipt in self if receipt.message_id == message_id]


@pytest.fixture
async def channels(smsc: SmscEmulator) -> AsyncIterator[Callable[..., SmppChannel]]:
    """Channels aimed at the emulator (`receipts=` collects their receipts), closed after."""
    built: list[SmppChannel] = []

    def build(*, receipts: Receipts | None = None, **options: Any) -> SmppChannel:
        settings: dict[str, Any] = {
            "host": smsc.host,
            "port": smsc.port,
            "system_id": SYSTEM_ID,
            "password": PASSWORD,
            "source_addr": SENDER,
            "connect_timeout": 2.0,
            "on_receipt": None if receipts is None else receipts.append,
        } | options
        channel = SmppChannel(**settings)
        built.append(channel)
        return channel

    yield build
    for channel in built:
        await channel.close()


def sms(body: str, address: str = NUMBER) -> Message:
    return Message(key="0" * 32, address=address, payload={"body": body})


async def eventually(condition: Callable[[], bool]) -> None:
    """Until `condition()` holds (the SMSC and the bind work on their own time)."""
    async with asyncio.timeout(15):
        while not condition():  # noqa: ASYNC110 - state of several objects, no one event
            await asyncio.sleep(0.01)


async def test_a_message_is_accepted_and_its_receipt_reported(
    smsc: SmscEmulator, channels: Callable[..., SmppChannel]
) -> None:
    receipts = Receipts()
    channel = channels(receipts=receipts)

    result = await channel.send(sms("Your code is 123456"))

    assert result.outcome is Outcome.ACCEPTED
    [received] = smsc.messages
    assert result.provider_ref == received.message_ids[0]
    assert (received.text, received.data_coding, received.parts) == ("Your code is 123456", 0, 1)
    assert (received.source_addr, received.destination_addr) == ("15005550006", "15551230001")
    [submit] = smsc.submits
    assert (submit.registered_delivery, submit.system_id) == (1, SYSTEM_ID)
    await eventually(lambda: bool(receipts))
    assert receipts == [
        DeliveryReceipt(message_id=result.provider_ref, state="DELIVRD", status="delivered")
    ]


@pytest.mark.parametrize(
    ("text", "data_coding"),
    [
        ("Plain ASCII, @ and £ too", 0),
        ("GSM extension: {[~]} ^ | \\ €5", 0),
        ("Ελληνικά ΔΦΓ are in GSM 7 as capitals only: ΔΦΓΛΩΠΨΣΘΞ", 8),
        ("Привет", 8),
        ("emoji 😀 needs UCS-2", 8),
    ],
)
async def test_text_goes_as_gsm7_when_it_fits_and_as_ucs2_otherwise(
    smsc: SmscEmulator, channels: Callable[..., SmppChannel], text: str, data_coding: int
) -> None:
    result = await channels().send(sms(text))

    assert result.outcome is Outcome.ACCEPTED
    [received] = smsc.messages
    assert (received.text, received.data_coding, received.parts) == (text, data_coding, 1)


@pytest.mark.parametrize(
    ("text", "data_coding", "parts"),
    [
        ("0123456789" * 16, 0, 1),  # 160 septets: still one SMS
        ("0123456789" * 16 + "!", 0, 2),
        ("€" * 100, 0, 2),  # 200 septets; an escape pair never split across parts
        ("ж" * 70, 8, 1),
        ("ж" * 71, 8, 2),
        ("😀" * 100, 8, 4),  # surrogate pairs never split across parts
    ],
)
async def test_long_text_is_split_in_udh_parts_that_the_smsc_reassembles(
    smsc: SmscEmulator,
    channels: Callable[..., SmppChannel],
    text: str,
    data_coding: int,
    parts: int,
) -> None:
    result = await channels().send(sms(text))

    assert result.outcome is Outcome.ACCEPTED
    [received] = smsc.messages
    assert (received.text, received.data_coding, received.parts) == (text, data_coding, parts)
    assert result.provider_ref == received.message_ids[0]
    assert all(submit.esm_class == (0x40 if parts > 1 else 0) for submit in smsc.submits)
    assert all(len(submit.short_message) <= 160 for submit in smsc.submits)


def test_one_udh_reference_per_message() -> None:
    first = encode_text("x" * 200, reference=7)
    second = encode_text("x" * 200, reference=8)
    assert [part[:6] for part in first.parts] == [bytes((5, 0, 3, 7, 2, n)) for n in (1, 2)]
    assert second.parts[0][3] == 8


@pytest.mark.parametrize(
    ("status", "outcome", "error_code"),
    [
        (0x0B, Outcome.DEAD_ADDRESS, "SMPP 0x0B"),  # ESME_RINVDSTADR
        (0x0A, Outcome.FAILED, "SMPP 0x0A"),  # ESME_RINVSRCADR
        (0x45, Outcome.FAILED, "SMPP 0x45"),  # ESME_RSUBMITFAIL
        (0x01, Outcome.FAILED, "SMPP 0x01"),  # ESME_RINVMSGLEN
        (0x08, Outcome.RETRY, "SMPP 0x08"),  # ESME_RSYSERR
        (0x58, Outcome.RETRY, "SMPP 0x58"),  # ESME_RTHROTTLED
        (0x14, Outcome.RETRY, "SMPP 0x14"),  # ESME_RMSGQFUL
    ],
)
async def test_submit_sm_refusals_are_classified(
    smsc: SmscEmulator,
    channels: Callable[..., SmppChannel],
    status: int,
    outcome: Outcome,
    error_code: str,
) -> None:
    smsc.script(NUMBER, Script(status=status))

    result = await channels().send(sms("hello"))

    assert (result.outcome, result.error_code) == (outcome, error_code)
    assert result.error_message
    assert result.provider_ref is None


async def test_the_magic_invalid_number_retires_the_binding(
    channels: Callable[..., SmppChannel],
) -> None:
    result = await channels().send(sms("hello", address="+15005550001"))
    assert result.outcome is Outcome.DEAD_ADDRESS
    assert result.error_message == "ESME_RINVDSTADR: invalid destination address"


async def test_throttling_retries_shortly_and_narrows_the_window(
    smsc: SmscEmulator, channels: Callable[..., SmppChannel]
) -> None:
    smsc.max_per_second = 2
    channel = channels(window=8)

    results = await asyncio.gather(*(channel.send(sms(f"n{i}")) for i in range(12)))

    throttled = [result for result in results if result.error_code == "SMPP 0x58"]
    assert throttled
    assert all(
        (result.outcome, result.retry_after) == (Outcome.RETRY, THROTTLED_DELAY)
        for result in throttled
    )
    assert channel.window < 8
    accepted = [result for result in results if result.outcome is Outcome.ACCEPTED]
    assert len(accepted) == len(smsc.messages) == 12 - len(throttled)


async def test_a_full_queue_retries_after_a_pause(
    smsc: SmscEmulator, channels: Callable[..., SmppChannel]
) -> None:
    smsc.queue_limit = 1
    smsc.receipt_delay = 60.0  # the first message's receipt keeps the queue full
    channel = channels(window=4)

    first = await channel.send(sms("one"))
    second = await channel.send(sms("two"))

    assert first.outcome is Outcome.ACCEPTED
    assert (second.outcome, second.error_code, second.retry_after) == (
        Outcome.RETRY,
        "SMPP 0x14",
        QUEUE_FULL_DELAY,
    )
    assert channel.window == 2


async def test_a_lost_bind_is_reestablished_and_held_receipts_arrive(
    smsc: SmscEmulator, channels: Callable[..., SmppChannel]
) -> None:
    receipts = Receipts()
    channel = channels(receipts=receipts)
    smsc.receipt_delay = 0.5
    before = await channel.send(sms("before"))
    assert before.outcome is Outcome.ACCEPTED

    await smsc.disconnect()  # a TCP reset, no unbind
    await eventually(lambda: not channel.bound)
    during = await channel.send(sms("during"))
    assert during.outcome is Outcome.RETRY
    assert during.retry_after is not None
    assert "reconnecting" in (during.error_message or "")

    await eventually(lambda: channel.bound)
    after = await channel.send(sms("after"))
    assert after.outcome is Outcome.ACCEPTED
    # The receipt due while the bind was down waited for the new bind.
    await eventually(lambda: len(receipts) == 2)
    assert {receipt.message_id for receipt in receipts} == {
        before.provider_ref,
        after.provider_ref,
    }
    assert [message.text for message in smsc.messages] == ["before", "after"]


@pytest.mark.parametrize(
    ("system_id", "password", "error_code"),
    [
        (SYSTEM_ID, "wrong", "SMPP 0x0E"),  # ESME_RINVPASWD
        ("nobody", PASSWORD, "SMPP 0x0F"),  # ESME_RINVSYSID
    ],
)
async def test_a_refused_bind_fails_at_once_and_is_not_retried_on_every_send(
    smsc: SmscEmulator,
    channels: Callable[..., SmppChannel],
    system_id: str,
    password: str,
    error_code: str,
) -> None:
    channel = channels(system_id=system_id, password=password)

    first = await channel.send(sms("hello"))
    binds = len(smsc.binds)
    second = await channel.send(sms("hello again"))

    for result in (first, second):
        assert (result.outcome, result.error_code) == (Outcome.FAILED, error_code)
        assert "SystemId, Password" in (result.error_message or "")
    assert binds >= 1
    assert len(smsc.binds) == binds  # the second send did not bind again
    assert smsc.messages == []


async def test_an_unreachable_smsc_is_retried(channels: Callable[..., SmppChannel]) -> None:
    result = await channels(port=closed_port()).send(sms("hello"))
    assert result.outcome is Outcome.RETRY
    assert result.retry_after is not None


@pytest.mark.parametrize(
    ("number", "states", "error_code"),
    [
        ("+15551230002", [("DELIVRD", "delivered")], None),
        ("+15005550004", [("REJECTD", "failed")], "SMPP REJECTD err:021"),
        ("+15005550005", [("EXPIRED", "failed")], "SMPP EXPIRED"),
        ("+15005550007", [("UNDELIV", "failed")], "SMPP UNDELIV err:001"),
        ("+15005550008", [("ENROUTE", None), ("DELIVRD", "delivered")], None),
    ],
)
async def test_receipts_are_read_into_states(
    channels: Callable[..., SmppChannel],
    number: str,
    states: list[tuple[str, str | None]],
    error_code: str | None,
) -> None:
    receipts = Receipts()
    result = await channels(receipts=receipts).send(sms("hello", address=number))

    assert result.outcome is Outcome.ACCEPTED
    await eventually(lambda: len(receipts) == len(states))
    assert [(receipt.state, receipt.status) for receipt in receipts] == states
    assert {receipt.message_id for receipt in receipts} == {result.provider_ref}
    assert receipts[-1].error_code == error_code
    if error_code == "SMPP UNDELIV err:001":
        assert "network error GSM 1" in (receipts[-1].error_message or "")


async def test_a_failed_part_fails_the_whole_long_message(
    smsc: SmscEmulator, channels: Callable[..., SmppChannel]
) -> None:
    receipts = Receipts()
    smsc.script(NUMBER, Script(receipt="UNDELIV", err=1))

    result = await channels(receipts=receipts).send(sms("x" * 400))

    await eventually(lambda: len(receipts) == 3)
    assert {receipt.message_id for receipt in receipts} == {result.provider_ref}
    assert {receipt.status for receipt in receipts} == {"failed"}


async def test_delivered_later_parts_are_not_reported_twice(
    smsc: SmscEmulator, channels: Callable[..., SmppChannel]
) -> None:
    receipts = Receipts()
    channel = channels(receipts=receipts)
    result = await channel.send(sms("x" * 400))
    await eventually(lambda: len(smsc.receipts) == 3)

    # Receipts come in order on the bind: once the next message's is in, all three were read.
    later = await channel.send(sms("later"))
    await eventually(lambda: bool(receipts.for_id(later.provider_ref)))
    assert [receipt.message_id for receipt in receipts] == [
        result.provider_ref,
        later.provider_ref,
    ]


async def test_mobile_originated_messages_are_acknowledged_and_ignored(
    smsc: SmscEmulator, channels: Callable[..., SmppChannel]
) -> None:
    receipts = Receipts()
    channel = channels(receipts=receipts)
    await channel.send(sms("hello"))
    await eventually(lambda: len(receipts) == 1)

    acked = await smsc.send_mo(source=NUMBER, destination="15005550006", text="STOP id:123")

    assert acked == 1
    assert len(receipts) == 1


async def test_media_without_text_cannot_go_over_smpp(
    channels: Callable[..., SmppChannel],
) -> None:
    message = Message(key="k", address=NUMBER, payload={"media_urls": ["https://x/y.png"]})
    result: Result = await channels().send(message)
    assert result.outcome is Outcome.FAILED
    assert "Body" in (result.error_message or "")


def deliver_sm(text: str, *, esm_class: int = 0x04, tlvs: list[smpp34.Tlv] | None = None) -> Any:
    return smpp34.DeliverSm(
        "15551230001", "CLARION", text.encode(), esm_class=esm_class, tlvs=tlvs or []
    )


def test_receipt_text_alone_is_enough() -> None:
    receipt = parse_receipt(
        deliver_sm(
            "id:0123456789 sub:001 dlvrd:000 submit date:2611261200 done date:2611261201 "
            "stat:UNDELIV err:034 text:Your code is"
        )
    )
    assert receipt == DeliveryReceipt(
        message_id="0123456789",
        state="UNDELIV",
        status="failed",
        error_code="SMPP UNDELIV err:034",
        error_message="UNDELIV: the SMSC could not deliver the message",
    )


def test_receipt_tlvs_win_over_the_text() -> None:
    receipt = parse_receipt(
        deliver_sm(
            "id:999 stat:ACCEPTD err:000",
            tlvs=[smpp34.Tlv(0x001E, b"abc\0"), smpp34.Tlv(0x0427, bytes([2]))],
        )
    )
    assert receipt is not None
    assert (receipt.message_id, receipt.state, receipt.status) == ("abc", "DELIVRD", "delivered")


def test_a_mobile_originated_message_is_no_receipt() -> None:
    assert parse_receipt(deliver_sm("id:1 stat:DELIVRD", esm_class=0)) is None


async def test_the_smsc_refuses_a_submit_before_a_bind(smsc: SmscEmulator) -> None:
    reader, writer = await asyncio.open_connection(smsc.host, smsc.port)
    try:
        writer.write(struct.pack(">IIII", 16 + 17, 0x04, 0, 5) + bytes(17))  # a bare submit_sm
        header = await asyncio.wait_for(reader.readexactly(16), 10)
    finally:
        writer.close()
    _length, command_id, status, sequence = struct.unpack(">IIII", header)
    assert (command_id, status, sequence) == (0x80000000, 0x04, 5)  # generic_nack RINVBNDSTS
