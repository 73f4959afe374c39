"""SMS over SMPP 3.4: one transceiver bind to a carrier's or aggregator's SMSC per credential.

The link (reference/providers.md §4) is `smpp34`'s Rust core: framing, sequence numbers,
`enquire_link` keep-alive every 30 s and `deliver_sm_resp` happen there. This module adds what
a delivery engine needs on top:

- **A window**: at most `window` `submit_sm` await their response at once. The SMSC's
  `ESME_RTHROTTLED` / `ESME_RMSGQFUL` halve it and pause new submits briefly; accepted submits
  grow it back one step at a time.
- **Reconnects**: a lost bind is re-established in the background with exponential backoff
  (0.5 s doubling to 30 s); sends meanwhile answer RETRY at once. A bind the SMSC *refuses*
  (wrong SystemId / Password / SystemType) is a configuration error: sends fail at once, and
  the bind is tried again only after `BIND_FAILURE_HOLD` seconds.
- **Encoding**: GSM 03.38 (`data_coding` 0, unpacked septets) when every character is in the
  default alphabet or its extension table, UCS-2 (`data_coding` 8) otherwise. A text longer
  than one SMS is split into concatenated parts with a UDH (`esm_class` 0x40, 8-bit reference):
  one delivery is all of its parts, and its `provider_ref` is the first part's message_id.
- **Receipts**: `deliver_sm` with `esm_class` 0x04 on the bind are parsed (the Appendix B text
  and the `receipted_message_id` / `message_state` / `network_error_code` TLVs) and handed to
  `on_receipt`; the channel does no bookkeeping of its own (no SQL here). Mobile-originated
  `deliver_sm` are acknowledged (by the core) and ignored.

Error codes a delivery record shows, so a user can look them up in SMPP 3.4 §5.1.3 or their
SMSC's manual: `SMPP 0x0B` for a `submit_sm_resp` / bind `command_status` (hex), and
`SMPP UNDELIV err:001` for a receipt's `stat` and `err` fields.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import random
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import smpp34

from clarion.channels.base import Message, Outcome, Result, refused
from clarion.destinations import PERMISSIVE, DestinationNotAllowedError, DestinationPolicy

log = logging.getLogger(__name__)

DEFAULT_PORT = 2775
# submit_sm awaiting their response at once, before the SMSC says otherwise.
DEFAULT_WINDOW = 32
# deliver_sm the core queues for us before it NAKs the SMSC with ESME_RMSGQFUL; providers.md §4
# measured the library's default dropping half a burst, so it is set explicitly and generously.
INBOUND_CAPACITY = 8192
CONNECT_TIMEOUT = 5.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# A bind that lived at least this long resets the backoff; a flapping link keeps backing off.
STABLE_BIND = 10.0
# How long a refused bind makes sends fail without asking the SMSC again.
BIND_FAILURE_HOLD = 60.0
# What a throttled / queue-full answer asks of the engine, and how long new submits hold back.
THROTTLED_DELAY = 1.0
QUEUE_FULL_DELAY = 2.0
# Ids of the second and later parts of long messages, remembered to map their receipts.
PART_MEMORY = 100_000
# SMPP keeps a message at most this long whatever the notification's TTL (relative validity).
MAX_VALIDITY_SECONDS = 30 * 86_400

# --- command_status values (SMPP 3.4 §5.1.3; python-smpplib consts.py) ----------------------

ROK = 0x00
RSYSERR = 0x08
RINVBNDSTS = 0x04
RINVDSTADR = 0x0B
RBINDFAIL = 0x0D
RINVPASWD = 0x0E
RINVSYSID = 0x0F
RMSGQFUL = 0x14
RINVSYSTYP = 0x53
RTHROTTLED = 0x58
RX_T_APPN = 0x64

STATUS_NAMES = {
    0x01: ("ESME_RINVMSGLEN", "message length is invalid"),
    0x02: ("ESME_RINVCMDLEN", "command length is invalid"),
    0x03: ("ESME_RINVCMDID", "invalid command id"),
    0x04: ("ESME_RINVBNDSTS", "incorrect bind status for the command"),
    0x05: ("ESME_RALYBND", "already bound"),
    0x08: ("ESME_RSYSERR", "SMSC system error"),
    0x0A: ("ESME_RINVSRCADR", "invalid source address"),
    0x0B: ("ESME_RINVDSTADR", "invalid destination address"),
    0x0C: ("ESME_RINVMSGID", "invalid message id"),
    0x0D: ("ESME_RBINDFAIL", "bind failed"),
    0x0E: ("ESME_RINVPASWD", "invalid password"),
    0x0F: ("ESME_RINVSYSID", "invalid system id"),
    0x14: ("ESME_RMSGQFUL", "message queue full"),
    0x45: ("ESME_RSUBMITFAIL", "submit_sm failed"),
    0x48: ("ESME_RINVSRCTON", "invalid source address TON"),
    0x49: ("ESME_RINVSRCNPI", "invalid source address NPI"),
    0x50: ("ESME_RINVDSTTON", "invalid destination address TON"),
    0x51: ("ESME_RINVDSTNPI", "invalid destination address NPI"),
    0x53: ("ESME_RINVSYSTYP", "invalid system type"),
    0x58: ("ESME_RTHROTTLED", "throttled: the message rate is above the allowed limit"),
    0x61: ("ESME_RINVSCHED", "invalid scheduled delivery time"),
    0x62: ("ESME_RINVEXPIRY", "invalid validity period"),
    0x64: ("ESME_RX_T_APPN", "temporary application error"),
    0x65: ("ESME_RX_P_APPN", "permanent application error"),
    0x66: ("ESME_RX_R_APPN", "application rejected the message"),
    0xFF: ("ESME_RUNKNOWNERR", "unknown error"),
}
# Worth sending again later: the SMSC is busy or broken, not the message.
RETRY_STATUSES = frozenset({RSYSERR, RINVBNDSTS, RMSGQFUL, RTHROTTLED, RX_T_APPN})
# The number will never take SMS: retire the binding.
DEAD_ADDRESS_STATUSES = frozenset({RINVDSTADR})
# A refused bind that only the credential (or the SMSC's account) can fix.
BIND_REFUSALS = frozenset({RBINDFAIL, RINVPASWD, RINVSYSID, RINVSYSTYP})


def status_code(status: int) -> str:
    """How a command_status appears as a delivery's error code: `SMPP 0x0B`."""
    return f"SMPP 0x{status:02X}"


def describe_status(status: int) -> str:
    name, meaning = STATUS_NAMES.get(status, (None, None))
    if name is None:
        kind = "vendor-specific" if 0x400 <= status <= 0x4FF else "unknown"
        return f"SMSC command_status 0x{status:02X} ({kind})"
    return f"{name}: {meaning}"


# --- delivery receipts (SMPP 3.4 Appendix B, §5.3.2.35) -------------------------------------

# Optional parameter tags (SMPP 3.4 §5.3.2).
TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_NETWORK_ERROR_CODE = 0x0423
TLV_MESSAGE_STATE = 0x0427

ESM_CLASS_TYPE_MASK = 0x3C
ESM_CLASS_RECEIPT = 0x04
ESM_CLASS_INTERMEDIATE = 0x20
ESM_CLASS_UDHI = 0x40

# A receipt's final states, in the engine's words (None: history only, state unchanged).
RECEIPT_STATES: dict[str, str | None] = {
    "DELIVRD": "delivered",
    "UNDELIV": "failed",
    "EXPIRED": "failed",
    "REJECTD": "failed",
    "DELETED": "failed",
    "ACCEPTD": None,
    "ENROUTE": None,
    "UNKNOWN": None,
}
# The message_state TLV's values (§5.2.28) as the text format spells them.
MESSAGE_STATES = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}
RECEIPT_MEANINGS = {
    "DELIVRD": "delivered to the handset",
    "UNDELIV": "the SMSC could not deliver the message",
    "EXPIRED": "the message's validity period expired before it could be delivered",
    "REJECTD": "the SMSC or the network rejected the message",
    "DELETED": "the message was deleted before delivery",
    "ACCEPTD": "accepted on the subscriber's behalf",
    "ENROUTE": "on its way",
    "UNKNOWN": "the SMSC does not know the message's state",
}
NETWORK_TYPES = {1: "ANSI-136", 2: "IS-95", 3: "GSM", 4: "ANSI-41"}
_FIELD = re.compile(r"(?:^|\s)(id|stat|err):(\S*)", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryReceipt:
    """What an SMSC said about a message it accepted earlier, in the engine's vocabulary."""

    # The submit_sm_resp message_id it is about (the first part's, for a long message).
    message_id: str
    # The receipt's state as SMPP spells it: DELIVRD, UNDELIV, EXPIRED, …
    state: str
    # "delivered", "failed", or None for an intermediate state (recorded, nothing changes).
    status: str | None
    error_code: str | None = None
    error_message: str | None = None


class _Inbound(Protocol):
    """The fields of an inbound deliver_sm a receipt is read from (smpp34.DeliverSmEvent)."""

    @property
    def esm_class(self) -> int: ...

    @property
    def short_message(self) -> bytes: ...

    @property
    def tlvs(self) -> list[smpp34.Tlv]: ...


def parse_receipt(event: _Inbound) -> DeliveryReceipt | None:
    """The receipt a deliver_sm carries, or None when it is not one (an MO message, or a
    receipt naming no message). TLVs win over the text, whose format is SMSC-specific."""
    if event.esm_class & ESM_CLASS_TYPE_MASK not in (ESM_CLASS_RECEIPT, ESM_CLASS_INTERMEDIATE):
        return None
    text = event.short_message.decode("latin-1")
    fields = {name.lower(): value for name, value in _FIELD.findall(text)}
    message_id = fields.get("id")
    state = fields.get("stat", "").upper() or None
    network_error = None
    for tlv in event.tlvs:
        if tlv.tag == TLV_RECEIPTED_MESSAGE_ID:
            message_id = tlv.value.rstrip(b"\0").decode("latin-1") or message_id
        elif tlv.tag == TLV_MESSAGE_STATE and len(tlv.value) == 1:
            state = MESSAGE_STATES.get(tlv.value[0], state)
        elif tlv.tag == TLV_NETWORK_ERROR_CODE and len(tlv.value) == 3:
            network_type, number = tlv.value[0], int.from_bytes(tlv.value[1:], "big")
            network_error = f"{NETWORK_TYPES.get(network_type, f'type {network_type}')} {number}"
    if not message_id:
        return None
    state = state or "UNKNOWN"
    status = RECEIPT_STATES.get(state)
    meaning = RECEIPT_MEANINGS.get(state, "state not defined by SMPP 3.4")
    if status == "delivered":
        return DeliveryReceipt(message_id=message_id, state=state, status=status)
    if status is None:
        # An intermediate state: the delivery's history says what it was.
        return DeliveryReceipt(
            message_id=message_id, state=state, status=None, error_message=f"{state}: {meaning}"
        )
    err = fields.get("err", "")
    code = f"SMPP {state}" + (f" err:{err}" if err.strip("0") else "")
    message = f"{state}: {meaning}" + (f" (network error {network_error})" if network_error else "")
    return DeliveryReceipt(
        message_id=message_id, state=state, status=status, error_code=code, error_message=message
    )


# --- GSM 03.38 and UCS-2 (3GPP TS 23.038 §6.2.1; TS 23.040 §9.2.3.24.1 for the UDH) ----------

GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
GSM_ESCAPE = 0x1B
_GSM_CODES = {char: code for code, char in enumerate(GSM_BASIC) if code != GSM_ESCAPE}
DATA_CODING_GSM = 0
DATA_CODING_UCS2 = 8
# Octets of one SMS's user data; a concatenation UDH (8-bit reference) takes 6 of them.
SINGLE_GSM_SEPTETS, PART_GSM_SEPTETS = 160, 153
SINGLE_UCS2_OCTETS, PART_UCS2_OCTETS = 140, 134
MAX_PARTS = 255


@dataclass(frozen=True, slots=True)
class EncodedText:
    data_coding: int
    # Each part's short_message, with its UDH when there is more than one part.
    parts: list[bytes]


def gsm7(text: str) -> bytes | None:
    """`text` in the GSM default alphabet, one septet per octet (SMPP's unpacked form), or None
    when a character is not in it."""
    septets = bytearray()
    for char in text:
        code = _GSM_CODES.get(char)
        if code is not None:
            septets.append(code)
        elif char in GSM_EXTENSION:
            septets += bytes((GSM_ESCAPE, GSM_EXTENSION[char]))
        else:
            return None
    return bytes(septets)


def encode_text(text: str, *, reference: int) -> EncodedText:
    """The parts of one SMS. Raises ValueError above 255 parts (the UDH counts parts in a byte)."""
    septets = gsm7(text)
    if septets is not None:
        chunks = _split(septets, single=SINGLE_GSM_SEPTETS, part=PART_GSM_SEPTETS, gsm=True)
        coding = DATA_CODING_GSM
    else:
        octets = text.encode("utf-16-be")
        chunks = _split(octets, single=SINGLE_UCS2_OCTETS, part=PART_UCS2_OCTETS, gsm=False)
        coding = DATA_CODING_UCS2
    if len(chunks) == 1:
        return EncodedText(coding, chunks)
    if len(chunks) > MAX_PARTS:
        raise ValueError(
            f"the text needs {len(chunks)} SMS parts; at most {MAX_PARTS} can be joined"
        )
    total, ref = len(chunks), reference & 0xFF
    parts = [bytes((5, 0, 3, ref, total, seq)) + chunk for seq, chunk in enumerate(chunks, 1)]
    return EncodedText(coding, parts)


def _split(data: bytes, *, single: int, part: int, gsm: bool) -> list[bytes]:
    """Cut at `part` units without splitting an escape sequence or a surrogate pair."""
    if len(data) <= single:
        return [data]
    chunks: list[bytes] = []
    start = 0
    while start < len(data):
        end = min(start + part, len(data))
        if end < len(data) and _splits_a_character(data, start, end, gsm=gsm):
            end -= 1 if gsm else 2
        chunks.append(data[start:end])
        start = end
    return chunks


def _splits_a_character(data: bytes, start: int, end: int, *, gsm: bool) -> bool:
    if not gsm:
        # A high surrogate as the chunk's last UTF-16 unit: its low half is in the next chunk.
        return 0xD8 <= data[end - 2] <= 0xDB
    # Count the escapes just before `end`: an odd run means the last one starts a pair.
    run, index = 0, end - 1
    while index >= start and data[index] == GSM_ESCAPE:
        run += 1
        index -= 1
    return run % 2 == 1


# --- the channel ------------------------------------------------------------------------------


class BindRefusedError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(describe_status(status))
        self.status = status


class _Window:
    """Submits awaiting a response: halved when the SMSC pushes back, then grown by one for
    every `limit` accepted submits (additive increase, multiplicative decrease)."""

    def __init__(self, limit: int) -> None:
        self.maximum = limit
        self.limit = limit
        self._in_flight = 0
        self._credit = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        while self._in_flight >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the wake-up on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
        self._in_flight += 1

    def release(self) -> None:
        self._in_flight -= 1
        self._wake()

    def shrink(self) -> None:
        self.limit = max(1, self.limit // 2)
        self._credit = 0

    def grow(self) -> None:
        if self.limit < self.maximum:
            self._credit += 1
            if self._credit >= self.limit:
                self.limit += 1
                self._credit = 0
                self._wake()

    def _wake(self) -> None:
        free = self.limit - self._in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


class SmppChannel:
    """Sends SMS through one SMSC account (an smpp credential) over one transceiver bind."""

    def __init__(
        self,
        *,
        host: str,
        port: int = DEFAULT_PORT,
        system_id: str,
        password: str,
        system_type: str = "",
        source_addr: str,
        window: int = DEFAULT_WINDOW,
        on_receipt: Callable[[DeliveryReceipt], None] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        bind_failure_hold: float = BIND_FAILURE_HOLD,
        destinations: DestinationPolicy = PERMISSIVE,
    ) -> None:
        self._host, self._port = host, port
        self._destinations = destinations
        self._system_id, self._password, self._system_type = system_id, password, system_type
        self._source = _address(source_addr)
        self._window = _Window(window)
        self._on_receipt = on_receipt
        self._connect_timeout = connect_timeout
        self._bind_failure_hold = bind_failure_hold
        self._session: smpp34.Smsc | None = None
        self._client: smpp34.Client | None = None
        # The task (re)establishing the bind, while there is one; sends wait only for a
        # link's first attempt, never for a reconnect.
        self._link: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._backoff = FIRST_BACKOFF
        self._next_attempt_at = 0.0
        self._last_error = "not connected yet"
        # A refused bind, or a host the destination policy refuses: held for
        # `bind_failure_hold`, sends fail at once meanwhile.
        self._refused: BindRefusedError | DestinationNotAllowedError | None = None
        self._refused_until = 0.0
        self._paused_until = 0.0
        self._reference = random.randrange(256)
        self._part_of: collections.OrderedDict[str, str] = collections.OrderedDict()
        # Long messages being submitted (by a token), and receipts that arrived meanwhile: a
        # part's receipt can overtake its own submit_sm_resp on the way to this loop, so it is
        # read only once every long message in flight when it came has recorded its part ids.
        self._tokens = itertools.count()
        self._long_in_flight: set[int] = set()
        self._held: collections.deque[tuple[int, DeliveryReceipt]] = collections.deque()
        self._closed = False

    @property
    def window(self) -> int:
        """How many submits may be outstanding now (lowered by throttling)."""
        return self._window.limit

    @property
    def bound(self) -> bool:
        return self._session is not None

    async def send(self, message: Message) -> Result:
        body = message.payload.get("body")
        if not body:
            return Result(
                outcome=Outcome.FAILED,
                error_message="SMPP carries text only: give the SMS a Body (MediaUrl needs MMS)",
            )
        self._reference = (self._reference + 1) & 0xFF
        try:
            encoded = encode_text(str(body), reference=self._reference)
        except ValueError as exc:
            return Result(outcome=Outcome.FAILED, error_message=str(exc))
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        session = await self._bound()
        if isinstance(session, Result):
            return session
        await self._window.acquire()
        try:
            return await self._submit(session, message, encoded)
        finally:
            self._window.release()

    async def close(self) -> None:
        self._closed = True
        for task in (self._link, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        session, client = self._session, self._client
        self._session = self._client = None
        if session is not None:
            with contextlib.suppress(smpp34.SmppError):
                await asyncio.wait_for(session.unbind(), timeout=2.0)
        if client is not None:
            await client.stop()

    # --- submitting -----------------------------------------------------------------------

    async def _submit(self, session: smpp34.Smsc, message: Message, encoded: EncodedText) -> Result:
        dest = _address(message.address)
        validity = _validity_period(message.expires_at)
        esm_class = ESM_CLASS_UDHI if len(encoded.parts) > 1 else 0
        if len(encoded.parts) == 1:
            return await self._submit_parts(session, message, encoded, dest, validity, esm_class)
        token = next(self._tokens)
        self._long_in_flight.add(token)
        try:
            return await self._submit_parts(session, message, encoded, dest, validity, esm_class)
        finally:
            self._long_in_flight.discard(token)
            self._release_held()

    async def _submit_parts(
        self,
        session: smpp34.Smsc,
        message: Message,
        encoded: EncodedText,
        dest: _Address,
        validity: str,
        esm_class: int,
    ) -> Result:
        ids: list[str] = []
        # Parts go one after another: most SMSCs (and handsets) reassemble in any order, but
        # a refusal of one part then leaves the later ones unsent rather than orphaned.
        for part in encoded.parts:
            try:
                response = await session.submit_sm(
                    dest.addr,
                    part,
                    source_addr=self._source.addr,
                    source_addr_ton=self._source.ton,
                    source_addr_npi=self._source.npi,
                    dest_addr_ton=dest.ton,
                    dest_addr_npi=dest.npi,
                    esm_class=esm_class,
                    registered_delivery=1,
                    data_coding=encoded.data_coding,
                    validity_period=validity,
                )
            except smpp34.SmppError as exc:
                # No submit_sm_resp: the bind broke, or the response timer (30 s) ran out.
                return Result(
                    outcome=Outcome.RETRY,
                    error_message=f"no submit_sm_resp from the SMSC at {self._where}: {exc}",
                )
            if response.command_status != ROK:
                return self._refusal(response.command_status)
            self._window.grow()
            ids.append(response.message_id or "")
        first, *others = ids
        for other in others:
            if other:
                self._remember_part(other, first)
        return Result(outcome=Outcome.ACCEPTED, provider_ref=first or None)

    def _refusal(self, status: int) -> Result:
        code, text = status_code(status), describe_status(status)
        if status in (RTHROTTLED, RMSGQFUL):
            delay = THROTTLED_DELAY if status == RTHROTTLED else QUEUE_FULL_DELAY
            self._window.shrink()
            self._paused_until = max(self._paused_until, time.monotonic() + delay)
            return Result(
                outcome=Outcome.RETRY, retry_after=delay, error_code=code, error_message=text
            )
        if status in RETRY_STATUSES:
            return Result(outcome=Outcome.RETRY, error_code=code, error_message=text)
        if status in DEAD_ADDRESS_STATUSES:
            return Result(outcome=Outcome.DEAD_ADDRESS, error_code=code, error_message=text)
        return Result(outcome=Outcome.FAILED, error_code=code, error_message=text)

    def _remember_part(self, part_id: str, first_id: str) -> None:
        self._part_of[part_id] = first_id
        if len(self._part_of) > PART_MEMORY:
            self._part_of.popitem(last=False)

    # --- the bind -------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self._host}:{self._port}"

    async def _bound(self) -> smpp34.Smsc | Result:
        """The bound session, or what to answer a send while there is none."""
        if self._session is not None:
            return self._session
        if self._closed:
            return Result(outcome=Outcome.RETRY, error_message="the SMPP channel is closed")
        if self._refused is not None and time.monotonic() < self._refused_until:
            return self._refused_result(self._refused)
        if self._link is None:
            self._start_link(delay=0.0, wait_for_it=True)
        first = self._first_attempt
        if first is not None and not first.done():
            await asyncio.shield(first)
            if self._session is not None:
                return self._session
            if self._refused is not None:
                return self._refused_result(self._refused)
        return Result(
            outcome=Outcome.RETRY,
            retry_after=max(1.0, self._next_attempt_at - time.monotonic()),
            error_message=f"no SMPP bind to {self._where} ({self._last_error}); reconnecting",
        )

    def _refused_result(self, error: BindRefusedError | DestinationNotAllowedError) -> Result:
        if isinstance(error, DestinationNotAllowedError):
            return refused(error)
        return Result(
            outcome=Outcome.FAILED,
            error_code=status_code(error.status),
            error_message=f"the SMSC at {self._where} refused the bind ({error}): check the "
            "smpp credential's SystemId, Password and SystemType",
        )

    def _start_link(self, *, delay: float, wait_for_it: bool) -> None:
        loop = asyncio.get_running_loop()
        self._first_attempt = loop.create_future() if wait_for_it else None
        self._link = asyncio.create_task(self._keep_bound(delay, self._first_attempt))

    async def _keep_bound(self, delay: float, first: asyncio.Future[None] | None) -> None:
        try:
            while not self._closed:
                if delay > 0:
                    self._next_attempt_at = time.monotonic() + delay
                    await asyncio.sleep(delay)
                try:
                    await self._bind()
                    return
                except (BindRefusedError, DestinationNotAllowedError) as exc:
                    log.error("SMPP bind to %s refused: %s", self._where, exc)
                    self._refused = exc
                    self._refused_until = time.monotonic() + self._bind_failure_hold
                    return
                except (smpp34.SmppError, OSError) as exc:
                    self._last_error = str(exc) or type(exc).__name__
                    log.warning("SMPP bind to %s failed: %s", self._where, self._last_error)
                finally:
                    if first is not None and not first.done():
                        first.set_result(None)
                delay = self._backoff * random.uniform(0.8, 1.2)
                self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        finally:
            if self._link is asyncio.current_task():
                self._link = None

    async def _bind(self) -> None:
        # Under a policy refusing private hosts, bind to the address it checked, not to what a
        # second lookup of the host might answer.
        host = self._host
        if not self._destinations.allow_private:
            host = (await self._destinations.resolve(self._host, self._port))[0]
        client = smpp34.Client(
            host,
            self._port,
            self._system_id,
            self._password,
            bind_type="TRX",
            system_type=self._system_type,
            window_size=self._window.maximum,
            inbound_capacity=INBOUND_CAPACITY,
            connect_timeout_ms=int(self._connect_timeout * 1000),
        )
        try:
            session = await client.connect()
        except smpp34.SmppError as exc:
            await client.stop()
            if "timed out" in str(exc):
                # smpp34 reports a refused bind as a timeout: ask the SMSC ourselves why.
                status = await probe_bind(
                    host,
                    self._port,
                    system_id=self._system_id,
                    password=self._password,
                    system_type=self._system_type,
                    seconds=self._connect_timeout,
                )
                if status in BIND_REFUSALS:
                    raise BindRefusedError(status) from exc
            raise
        if self._closed:
            await client.stop()
            return
        self._client, self._session, self._refused = client, session, None
        self._reader = asyncio.create_task(self._read(client, session, time.monotonic()))

    async def _read(self, client: smpp34.Client, session: smpp34.Smsc, since: float) -> None:
        """Hand receipts on until the bind ends, then start reconnecting."""
        try:
            while True:
                event = await session.next()
                if isinstance(event, smpp34.Disconnected):
                    break
                self._deliver_sm(event)
        finally:
            if self._session is session:
                self._session = self._client = None
            await client.stop()
        if self._closed:
            return
        self._last_error = "the SMSC closed the bind"
        log.warning("SMPP bind to %s lost; reconnecting", self._where)
        if time.monotonic() - since >= STABLE_BIND:
            self._backoff = FIRST_BACKOFF
        delay = self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._start_link(delay=delay, wait_for_it=False)

    def _deliver_sm(self, event: smpp34.DeliverSmEvent) -> None:
        receipt = parse_receipt(event)
        if receipt is None or self._on_receipt is None:
            return  # an MO message, or nobody to tell: the core has acknowledged it already
        if self._long_in_flight and receipt.message_id not in self._part_of:
            self._held.append((max(self._long_in_flight), receipt))
            return
        self._hand_on(receipt)

    def _release_held(self) -> None:
        oldest = min(self._long_in_flight, default=None)
        while self._held and (oldest is None or self._held[0][0] < oldest):
            self._hand_on(self._held.popleft()[1])

    def _hand_on(self, receipt: DeliveryReceipt) -> None:
        assert self._on_receipt is not None
        first = self._part_of.get(receipt.message_id)
        if first is not None:
            # A later part of a long message: only its failure says something about the whole.
            if receipt.status != "failed":
                return
            receipt = DeliveryReceipt(
                message_id=first,
                state=receipt.state,
                status=receipt.status,
                error_code=receipt.error_code,
                error_message=receipt.error_message,
            )
        try:
            self._on_receipt(receipt)
        except Exception:
            log.exception("handing on an SMPP receipt failed")


@dataclass(frozen=True, slots=True)
class _Address:
    addr: str
    ton: int
    npi: int


def _address(value: str) -> _Address:
    """TON/NPI for an address: international E.164, a short code, or an alphanumeric sender."""
    digits = value[1:] if value.startswith("+") else value
    if digits.isdigit():
        if value.startswith("+") or len(digits) > 8:
            return _Address(digits, 1, 1)  # international, ISDN (E.164)
        return _Address(digits, 3, 0)  # network-specific: a short code
    return _Address(value, 5, 0)  # alphanumeric


def _validity_period(expires_at: datetime | None) -> str:
    """SMPP's relative time format (§7.1.1): `YYMMDDhhmmss000R`, here in days and below."""
    if expires_at is None:
        return ""
    remaining = max(60, min(MAX_VALIDITY_SECONDS, math.ceil(expires_at.timestamp() - time.time())))
    days, rest = divmod(remaining, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"0000{days:02d}{hours:02d}{minutes:02d}{seconds:02d}000R"


def _c_string(value: str) -> bytes:
    return value.encode("latin-1") + b"\0"


async def probe_bind(
    host: str, port: int, *, system_id: str, password: str, system_type: str, seconds: float
) -> int | None:
    """The command_status an SMSC answers a bind_transceiver with, from a connection of our
    own (unbound again at once); None when it gives no answer at all."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), seconds)
    except (OSError, TimeoutError):
        return None
    try:
        body = (
            _c_string(system_id)
            + _c_string(password)
            + _c_string(system_type)
            + bytes((0x34, 0, 0))  # interface_version 3.4, addr_ton, addr_npi
            + _c_string("")  # address_range
        )
        writer.write(struct.pack(">IIII", 16 + len(body), 0x09, 0, 1) + body)
        header = await asyncio.wait_for(reader.readexactly(16), seconds)
        _length, _command, status, _sequence = struct.unpack(">IIII", header)
        if status == ROK:
            writer.write(struct.pack(">IIII", 16, 0x06, 0, 2))  # unbind
            await writer.drain()
        return int(status)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
