"""A local SMSC (SMPP 3.4 server) with scripted outcomes, for tests, benchmarks and `--sandbox`.

What it reproduces (reference/providers.md §10.4):

- **Binds** (transmitter, receiver, transceiver) checked against `accounts` (system_id →
  password): an unknown system_id is refused `ESME_RINVSYSID`, a wrong password
  `ESME_RINVPASWD`. A PDU other than a bind on a fresh connection gets a `generic_nack`
  `ESME_RINVBNDSTS`; unknown commands a `generic_nack` too (both from smpp34's server).
- **submit_sm** answered with a message_id, or refused as the destination number scripts it
  (`MAGIC_NUMBERS`, in the spirit of Twilio's test numbers; `script()` for any other);
  `ESME_RTHROTTLED` above `max_per_second` submits per bind; `ESME_RMSGQFUL` while
  `queue_limit` receipts are waiting to be sent.
- **Delivery receipts** as `deliver_sm` with `esm_class` 0x04, the Appendix B text
  (`id:… sub:001 dlvrd:… submit date:… done date:… stat:… err:… text:…`) and the
  `receipted_message_id`, `message_state` and `network_error_code` TLVs, `receipt_delay`
  seconds after the submit, one per part of a long message. A receipt for a bind that is gone
  waits for the next bind of the same system_id, as an SMSC's store-and-forward does; one the
  ESME refuses is sent again.
- **Records** of every `submit_sm` (`submits`) and of every accepted message with its text
  decoded (GSM 03.38 or UCS-2) and long messages reassembled from their UDH or SAR TLVs
  (`messages`), so tests assert on what reached the "network". `keep` bounds every record to
  the latest that many (None: all), for a long-running sandbox.
- **Abrupt disconnects** (`disconnect()`: TCP reset, no unbind) and mobile-originated messages
  (`send_mo()`).

smpp34's `Server` accepts every bind, so the listening socket is a small asyncio front that
reads the bind itself, refuses bad credentials, and then relays the connection byte for byte to
the smpp34 server on a private port — which also gives `disconnect()` a socket to reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import secrets
import socket
import struct
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import smpp34

from clarion.emulators.records import Recent, Records

ESME_RINVDSTADR = 0x0B
ESME_RSUBMITFAIL = 0x45
ESME_RSYSERR = 0x08
ESME_RTHROTTLED = 0x58
ESME_RMSGQFUL = 0x14
ESME_RINVPASWD = 0x0E
ESME_RINVSYSID = 0x0F

BIND_COMMANDS = frozenset({0x01, 0x02, 0x09})
RESPONSE = 0x80000000  # command_id bit of every response
MAX_PDU = 64 * 1024
# Submits the Python side may lag behind before smpp34 answers ESME_RMSGQFUL on its own.
INBOUND_CAPACITY = 16_384
RECEIPT_RESENDS = 5
STATE_CODES = {
    "ENROUTE": 1,
    "DELIVRD": 2,
    "EXPIRED": 3,
    "DELETED": 4,
    "UNDELIV": 5,
    "ACCEPTD": 6,
    "UNKNOWN": 7,
    "REJECTD": 8,
}
# Optional parameter tags (SMPP 3.4 §5.3.2).
TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_SAR_MSG_REF_NUM = 0x020C
TLV_SAR_TOTAL_SEGMENTS = 0x020E
TLV_SAR_SEGMENT_SEQNUM = 0x020F
TLV_NETWORK_ERROR_CODE = 0x0423
TLV_MESSAGE_PAYLOAD = 0x0424
TLV_MESSAGE_STATE = 0x0427
GSM_NETWORK = 3  # network_error_code's network type for GSM

# GSM 03.38 default alphabet and extension table (3GPP TS 23.038 §6.2.1), to decode what
# ESMEs send with data_coding 0 (one septet per octet).
_GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}


@dataclass(frozen=True, kw_only=True)
class Script:
    """What the SMSC does with messages to one number."""

    # A non-zero command_status refuses the submit_sm with it.
    status: int = 0
    # The final receipt's `stat`, and its `err` (also sent as a GSM network_error_code).
    receipt: str = "DELIVRD"
    err: int = 0
    # Receipt states sent before the final one (e.g. ENROUTE).
    interim: tuple[str, ...] = ()


# Destination numbers (E.164 without "+", as SMPP carries them) and what the SMSC does with
# them. A status refuses the submit_sm; otherwise the message is accepted and its receipt says
# the state (with `err`). +15005550008 first reports ENROUTE, then DELIVRD.
MAGIC_NUMBERS = {
    "15005550001": Script(status=ESME_RINVDSTADR),  # invalid number
    "15005550002": Script(status=ESME_RSUBMITFAIL),  # cannot route
    "15005550003": Script(status=ESME_RSYSERR),  # SMSC trouble, worth a retry
    "15005550004": Script(receipt="REJECTD", err=21),  # blocked by the network
    "15005550005": Script(receipt="EXPIRED"),  # handset off past the validity period
    "15005550007": Script(receipt="UNDELIV", err=1),  # unknown subscriber
    "15005550008": Script(interim=("ENROUTE",)),  # intermediate state, then delivered
}


@dataclass(frozen=True, kw_only=True)
class Submit:
    """One submit_sm as it arrived, and how it was answered."""

    system_id: str
    session_id: str
    source_addr: str
    destination_addr: str
    esm_class: int
    data_coding: int
    registered_delivery: int
    short_message: bytes
    status: int
    message_id: str | None
    at: float


@dataclass(kw_only=True)
class ReceivedSms:
    """One accepted message, reassembled when it came in parts."""

    system_id: str
    source_addr: str
    destination_addr: str
    text: str
    data_coding: int
    parts: int
    message_ids: list[str]


@dataclass
class _Parts:
    total: int
    chunks: dict[int, tuple[bytes, str]] = field(default_factory=dict)


@dataclass(eq=False)
class _Link:
    """One ESME's TCP connection through the front, and where it is relayed."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    system_id: str | None = None


class SmscEmulator:
    """An SMSC on `host:port` (port 0: any free one, see `port` after `start()`)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        accounts: Mapping[str, str] | None = None,
        system_id: str = "CLARIONSMSC",
        receipt_delay: float = 0.0,
        max_per_second: int | None = None,
        queue_limit: int | None = None,
        inbound_capacity: int = INBOUND_CAPACITY,
        keep: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.accounts = dict(accounts if accounts is not None else {"clarion": "sandbox"})
        self.system_id = system_id
        self.receipt_delay = receipt_delay
        self.max_per_second = max_per_second
        self.queue_limit = queue_limit
        # What bounds each piece of state: the records, the long messages being reassembled
        # and the receipts held for each system_id hold at most `keep` each (a held receipt
        # forgotten is given up, as after RECEIPT_RESENDS refusals); a receipt being sent is
        # held by its task until acknowledged or given up; `_sessions`, `_rates` and `_links`
        # lose a bind when it ends; `_scripts` holds MAGIC_NUMBERS and what the caller scripted.
        self.submits: Records[Submit] = Records(maxlen=keep)
        self.messages: Records[ReceivedSms] = Records(maxlen=keep)
        # (system_id, command_status) of every bind attempt the front answered.
        self.binds: Records[tuple[str, int]] = Records(maxlen=keep)
        # (message_id, stat) of every receipt an ESME acknowledged.
        self.receipts: Records[tuple[str, str]] = Records(maxlen=keep)
        # MO messages an ESME acknowledged, as (session_id, text).
        self.mo_acknowledged: Records[tuple[str, str]] = Records(maxlen=keep)
        self._keep = keep
        self._inbound_capacity = inbound_capacity
        self._scripts: dict[str, Script] = dict(MAGIC_NUMBERS)
        self._server: smpp34.Server | None = None
        self._front: asyncio.Server | None = None
        self._inner_port = 0
        self._serving: asyncio.Task[None] | None = None
        self._links: set[_Link] = set()
        self._sessions: dict[str, smpp34.Esme] = {}
        self._rates: dict[str, tuple[int, int]] = {}
        # Long messages whose parts are not all in yet; one forgotten is never recorded.
        self._assembling: Recent[tuple[str, str, str, int], _Parts] = Recent(keep)
        # Receipts waiting for their system_id to bind again.
        self._held: dict[str, list[Callable[[], Coroutine[Any, Any, None]]]] = {}
        self._pending_receipts = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._id_prefix = secrets.token_hex(3)

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._inner_port = _free_port()
        self._server = smpp34.Server(
            "127.0.0.1",
            self._inner_port,
            system_id=self.system_id,
            inbound_capacity=self._inbound_capacity,
        )
        await self._server.start()
        self._serving = asyncio.create_task(self._serve(self._server))
        self._front = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._front.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._front is not None:
            self._front.close()
        await self.disconnect()
        for task in [*self._tasks, *([self._serving] if self._serving else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.stop()
        if self._front is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._front.wait_closed(), timeout=2.0)

    # --- what tests and the sandbox drive -------------------------------------------------

    def script(self, number: str, script: Script) -> None:
        """Answer messages to `number` (with or without "+") as `script` says."""
        self._scripts[number.removeprefix("+")] = script

    async def disconnect(self) -> None:
        """Drop every ESME's connection at once, without an unbind (a TCP reset)."""
        for link in list(self._links):
            _abort(link.client)
            if link.upstream is not None:
                _abort(link.upstream)
        self._links.clear()

    @property
    def bound(self) -> int:
        """How many ESME connections are open through the front."""
        return len(self._links)

    async def send_mo(self, *, source: str, destination: str, text: str) -> int:
        """A mobile-originated message to every bind that can receive; how many acked it."""
        acked = 0
        for session_id, esme in list(self._sessions.items()):
            if not esme.can_receive:
                continue
            try:
                response = await esme.deliver_sm(
                    destination, text.encode("latin-1", "replace"), source_addr=source
                )
            except smpp34.SmppError:
                continue
            if response.is_success:
                acked += 1
                self.mo_acknowledged.append((session_id, text))
        return acked

    async def wait_for(self, condition: Callable[[], bool], *, seconds: float = 10.0) -> None:
        """Until `condition()` holds; raises TimeoutError after `seconds`."""
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the SMSC emulator never reached the expected state")
            await asyncio.sleep(0.01)

    # --- the front: authentication, then a relay to smpp34's server -----------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(client=writer)
        self._links.add(link)
        try:
            header = await reader.readexactly(16)
            length, command, _status, sequence = struct.unpack(">IIII", header)
            if not 16 <= length <= MAX_PDU:
                return
            body = await reader.readexactly(length - 16)
            if command in BIND_COMMANDS:
                system_id, password = _c_strings(body, 2)
                status = self._authenticate(system_id, password)
                self.binds.append((system_id, status))
                if status:
                    writer.write(struct.pack(">IIII", 16, command | RESPONSE, status, sequence))
                    await writer.drain()
                    return
                link.system_id = system_id
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._inner_port)
            link.upstream = up_writer
            up_writer.write(header + body)
            await asyncio.gather(_relay(reader, up_writer), _relay(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._links.discard(link)
            for end in (writer, link.upstream):
                if end is not None:
                    end.close()

    def _authenticate(self, system_id: str, password: str) -> int:
        expected = self.accounts.get(system_id)
        if expected is None:
            return ESME_RINVSYSID
        if not secrets.compare_digest(expected.encode(), password.encode()):
            return ESME_RINVPASWD
        return 0

    # --- the SMSC ---------------------------------------------------------------------------

    async def _serve(self, server: smpp34.Server) -> None:
        while True:
            try:
                event = await server.next()
            except smpp34.SmppError:
                return  # stopped
            if isinstance(event, smpp34.Esme):
                self._sessions[event.session_id] = event
                for resend in self._held.pop(event.system_id, []):
                    self._spawn(resend())
            elif isinstance(event, smpp34.SubmitSmEvent):
                self._submit(event)
            elif isinstance(event, smpp34.Unbound):
                self._sessions.pop(event.session_id, None)
                self._rates.pop(event.session_id, None)

    def _submit(self, event: smpp34.SubmitSmEvent) -> None:
        esme = self._sessions.get(event.session_id)
        system_id = esme.system_id if esme is not None else ""
        destination = event.destination_addr.removeprefix("+")
        script = self._scripts.get(destination, Script())
        status = self._refusal(event.session_id) or script.status
        message_id = None
        if status:
            event.reject(status)
        else:
            message_id = f"{self._id_prefix}{next(self._ids):08x}"
            event.accept(message_id)
        self.submits.append(
            Submit(
                system_id=system_id,
                session_id=event.session_id,
                source_addr=event.source_addr,
                destination_addr=event.destination_addr,
                esm_class=event.esm_class,
                data_coding=event.data_coding,
                registered_delivery=event.registered_delivery,
                short_message=event.short_message,
                status=status,
                message_id=message_id,
                at=time.time(),
            )
        )
        if message_id is None:
            return
        text = self._assemble(event, system_id, message_id)
        wanted = event.registered_delivery & 0x03
        if wanted == 1 or (wanted == 2 and script.receipt != "DELIVRD"):
            states = [(state, 0) for state in script.interim] + [(script.receipt, script.err)]
            self._schedule_receipts(
                event, system_id=system_id, message_id=message_id, states=states, text=text
            )

    def _refusal(self, session_id: str) -> int:
        """Throttling per bind (a one-second window), then the queue's room."""
        if self.max_per_second is not None:
            second = int(time.monotonic())
            start, count = self._rates.get(session_id, (second, 0))
            if start != second:
                start, count = second, 0
            if count >= self.max_per_second:
                return ESME_RTHROTTLED
            self._rates[session_id] = (start, count + 1)
        if self.queue_limit is not None and self._pending_receipts >= self.queue_limit:
            return ESME_RMSGQFUL
        return 0

    def _assemble(self, event: smpp34.SubmitSmEvent, system_id: str, message_id: str) -> str:
        """Record the message once all its parts are in; the text of this part for receipts."""
        body, concat = _user_data(event)
        text = _decode(body, event.data_coding)
        if concat is None:
            self.messages.append(
                ReceivedSms(
                    system_id=system_id,
                    source_addr=event.source_addr,
                    destination_addr=event.destination_addr,
                    text=text,
                    data_coding=event.data_coding,
                    parts=1,
                    message_ids=[message_id],
                )
            )
            return text
        reference, total, sequence = concat
        key = (system_id, event.source_addr, event.destination_addr, reference)
        parts = self._assembling.get(key)
        if parts is None:
            parts = self._assembling[key] = _Parts(total)
        parts.chunks[sequence] = (body, message_id)
        if len(parts.chunks) >= parts.total:
            self._assembling.pop(key)
            ordered = [parts.chunks[n] for n in sorted(parts.chunks)]
            self.messages.append(
                ReceivedSms(
                    system_id=system_id,
                    source_addr=event.source_addr,
                    destination_addr=event.destination_addr,
                    text=_decode(b"".join(chunk for chunk, _ in ordered), event.data_coding),
                    data_coding=event.data_coding,
                    parts=parts.total,
                    message_ids=[mid for _, mid in ordered],
                )
            )
        return text

    def _schedule_receipts(
        self,
        event: smpp34.SubmitSmEvent,
        *,
        system_id: str,
        message_id: str,
        states: list[tuple[str, int]],
        text: str,
    ) -> None:
        """Send one message's receipts, in order, `receipt_delay` seconds from now."""
        submitted = datetime.now(UTC).strftime("%y%m%d%H%M")
        source, destination = event.source_addr, event.destination_addr
        session_id = event.session_id
        self._pending_receipts += 1

        async def send(delay: float, remaining: list[tuple[str, int]], attempt: int) -> None:
            await asyncio.sleep(delay)
            while remaining:
                esme = self._receiver(session_id, system_id)
                if esme is None:
                    # Store and forward: sent when the ESME binds again.
                    resend = functools.partial(send, 0.0, list(remaining), attempt)
                    self._hold(system_id, resend)
                    return
                state, err = remaining[0]
                pdu = _receipt(message_id, state, err, submitted=submitted, text=text)
                try:
                    response = await esme.deliver_sm(
                        source, pdu.text, source_addr=destination, esm_class=0x04, tlvs=pdu.tlvs
                    )
                    acknowledged = response.is_success
                except smpp34.SmppError:
                    acknowledged = False
                if acknowledged:
                    self.receipts.append((message_id, state))
                    remaining, attempt = remaining[1:], 0
                elif attempt < RECEIPT_RESENDS:
                    self._spawn(send(0.5 * 2**attempt, remaining, attempt + 1))
                    return
                else:
                    break  # the ESME never took it: given up
            self._pending_receipts -= 1

        self._spawn(send(self.receipt_delay, states, 0))

    def _hold(self, system_id: str, resend: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Keep a receipt until `system_id` binds again: the latest `keep` of them."""
        held = self._held.setdefault(system_id, [])
        held.append(resend)
        while self._keep is not None and len(held) > self._keep:
            del held[0]  # the oldest is given up: no longer waiting to be sent
            self._pending_receipts -= 1

    def _receiver(self, session_id: str, system_id: str) -> smpp34.Esme | None:
        esme = self._sessions.get(session_id)
        if esme is not None and esme.can_receive:
            return esme
        for other in self._sessions.values():
            if other.system_id == system_id and other.can_receive:
                return other
        return None

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# --- PDU helpers --------------------------------------------------------------------------------


async def _relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65_536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()


@dataclass(frozen=True)
class _ReceiptPdu:
    text: bytes
    tlvs: list[smpp34.Tlv]


def _receipt(message_id: str, state: str, err: int, *, submitted: str, text: str) -> _ReceiptPdu:
    """A delivery receipt's short_message (SMPP 3.4 Appendix B) and TLVs."""
    done = datetime.now(UTC).strftime("%y%m%d%H%M")
    delivered = "001" if state == "DELIVRD" else "000"
    body = (
        f"id:{message_id} sub:001 dlvrd:{delivered} submit date:{submitted} "
        f"done date:{done} stat:{state} err:{err:03d} text:{text[:20]}"
    )
    tlvs = [
        smpp34.Tlv(TLV_RECEIPTED_MESSAGE_ID, message_id.encode() + b"\0"),
        smpp34.Tlv(TLV_MESSAGE_STATE, bytes((STATE_CODES.get(state, 7),))),
    ]
    if err:
        network_error = bytes((GSM_NETWORK,)) + err.to_bytes(2, "big")
        tlvs.append(smpp34.Tlv(TLV_NETWORK_ERROR_CODE, network_error))
    return _ReceiptPdu(body.encode("latin-1", "replace"), tlvs)


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()


def _c_strings(body: bytes, count: int) -> list[str]:
    values, start = [], 0
    for _ in range(count):
        end = body.find(b"\0", start)
        if end < 0:
            end = len(body)
        values.append(body[start:end].decode("latin-1"))
        start = end + 1
    return values


def _user_data(event: smpp34.SubmitSmEvent) -> tuple[bytes, tuple[int, int, int] | None]:
    """The message's octets without any UDH, and (reference, total, sequence) for a part."""
    message = event.short_message
    tlvs = {tlv.tag: tlv.value for tlv in event.tlvs}
    if not message and TLV_MESSAGE_PAYLOAD in tlvs:
        message = tlvs[TLV_MESSAGE_PAYLOAD]
    concat = None
    if event.esm_class & 0x40 and message:
        length = message[0]
        header, message = message[1 : 1 + length], message[1 + length :]
        index = 0
        while index + 2 <= len(header):
            iei, size = header[index], header[index + 1]
            value = header[index + 2 : index + 2 + size]
            if iei == 0x00 and size == 3:
                concat = (value[0], value[1], value[2])
            elif iei == 0x08 and size == 4:
                concat = (int.from_bytes(value[:2], "big"), value[2], value[3])
            index += 2 + size
    elif TLV_SAR_MSG_REF_NUM in tlvs:
        concat = (
            int.from_bytes(tlvs[TLV_SAR_MSG_REF_NUM], "big"),
            tlvs.get(TLV_SAR_TOTAL_SEGMENTS, b"\1")[0],
            tlvs.get(TLV_SAR_SEGMENT_SEQNUM, b"\1")[0],
        )
    return message, concat


def _decode(octets: bytes, data_coding: int) -> str:
    if data_coding == 8:
        return octets.decode("utf-16-be", "replace")
    if data_coding == 0:
        chars, escaped = [], False
        for octet in octets:
            if escaped:
                chars.append(_GSM_EXTENSION.get(octet, " "))
                escaped = False
            elif octet == 0x1B:
                escaped = True
            else:
                chars.append(_GSM_BASIC[octet & 0x7F])
        return "".join(chars)
    return octets.decode("latin-1")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
