"""Receipt tokens: minted per delivery, checked without state, carried in every push payload.

The worker tests drive a real `Worker` against the database with a recording in-test channel
(as tests/delivery/test_worker.py does) and read the payloads it was handed.
"""

from __future__ import annotations

import base64
import hmac
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Connection, select, update

from clarion import sids
from clarion.channels.base import Message, Outcome, Result
from clarion.delivery import payloads
from clarion.delivery.channel_pool import Credential
from clarion.delivery.receipts import TOKEN_LENGTH, ReceiptTokens, well_formed
from clarion.delivery.wakeup import LocalSignal, SoleLeader
from clarion.delivery.worker import Worker
from clarion.store import notifications
from clarion.store.clock import utcnow
from clarion.store.database import Database
from clarion.store.notifications import DirectAddress, NewNotification
from clarion.store.tables import delivery, notification
from clarion.vault import Vault, new_key
from support import CredentialRow, insert_service, quiet_the_queue

RECEIPT = payloads.RECEIPT_KEY


@pytest.fixture(scope="module")
def tokens() -> ReceiptTokens:
    return ReceiptTokens(Vault(new_key()))


# -- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize("delivery_id", [1, 2, 255, 2**31, sids.MAX_ROW_ID])
def test_a_token_verifies_as_its_own_delivery(tokens: ReceiptTokens, delivery_id: int) -> None:
    token = tokens.mint(delivery_id)

    assert len(token) == TOKEN_LENGTH
    assert well_formed(token)
    assert tokens.verify(token) == delivery_id


def test_a_token_is_the_id_and_a_truncated_hmac_in_base64url() -> None:
    """The documented format, which nothing but this install can produce."""
    vault = Vault(new_key())
    ident = (987).to_bytes(8, "big")
    mac = hmac.digest(vault.derive("receipt-tokens"), b"clarion-receipt:" + ident, "sha256")

    assert ReceiptTokens(vault).mint(987) == base64.urlsafe_b64encode(ident + mac[:16]).decode()


def test_minting_is_stable_so_every_retry_carries_the_same_token(tokens: ReceiptTokens) -> None:
    assert tokens.mint(42) == tokens.mint(42)
    assert tokens.mint(42) != tokens.mint(43)


def test_the_same_key_makes_the_same_tokens_in_every_process() -> None:
    key = new_key()

    assert ReceiptTokens(Vault(key)).mint(7) == ReceiptTokens(Vault(key)).mint(7)


def test_another_installs_token_is_refused(tokens: ReceiptTokens) -> None:
    foreign = ReceiptTokens(Vault(new_key())).mint(42)

    assert tokens.verify(foreign) is None


def test_a_token_cannot_be_moved_to_another_delivery(tokens: ReceiptTokens) -> None:
    """Swapping the id inside a valid token keeps the MAC of the old id: refused."""
    raw = base64.urlsafe_b64decode(tokens.mint(42))
    moved = base64.urlsafe_b64encode((43).to_bytes(8, "big") + raw[8:]).decode()

    assert tokens.verify(moved) is None


def test_every_single_character_change_is_refused(tokens: ReceiptTokens) -> None:
    token = tokens.mint(123456789)
    for position in range(len(token)):
        replacement = "A" if token[position] != "A" else "B"
        tampered = token[:position] + replacement + token[position + 1 :]
        assert tokens.verify(tampered) is None, position


@pytest.mark.parametrize(
    "token",
    ["", "A" * 31, "A" * 33, "A" * 31 + "=", "A" * 31 + "+", "A" * 31 + "/", "A" * 31 + "\n"],
)
def test_malformed_tokens_are_refused(tokens: ReceiptTokens, token: str) -> None:
    assert not well_formed(token)
    assert tokens.verify(token) is None


def test_the_derived_key_is_not_the_instance_key() -> None:
    key = new_key()
    derived = Vault(key).derive("receipt-tokens")

    assert derived not in base64.urlsafe_b64decode(key)
    assert derived != Vault(key).derive("something-else")


# -- payloads ----------------------------------------------------------------------------------

CONTENTS: list[tuple[str, dict[str, Any]]] = [
    ("apn", {"title": "T", "body": "B", "data": {"k": 1}}),
    ("apn", {"data": {"k": 1}}),  # background push
    ("apn", {"body": "B", "apn": {RECEIPT: "forged", "aps": {"badge": 1}}}),
    ("fcm", {"body": "B", "data": {"k": "v"}}),
    ("fcm", {"fcm": {"notification": {"title": "T"}}}),  # no data until the receipt
    ("fcm", {"body": "B", "fcm": {"data": {RECEIPT: "forged"}}}),
    ("gcm", {"title": "T", "action": "OPEN"}),
    ("webpush", {"title": "T", "data": {"k": 1}}),
    ("sms", {"body": "B"}),
    ("facebook-messenger", {"body": "B"}),
    ("email", {"title": "S", "body": "B"}),
]


@pytest.mark.parametrize(("channel", "content"), CONTENTS)
def test_adding_the_receipt_later_equals_building_with_it(
    channel: str, content: dict[str, Any]
) -> None:
    built = payloads.build(channel, content)
    snapshot = json.dumps(built, sort_keys=True)

    added = payloads.with_receipt(channel, built, "rc")

    assert added == payloads.build(channel, content, receipt="rc")
    assert json.dumps(built, sort_keys=True) == snapshot  # the cached payload is untouched


# -- the dispatcher puts it into every push ------------------------------------------------------

APN = "a0" * 32
FCM = "fcm-registration-token"


class RecordingChannel:
    """Accepts everything, except the first send to an address starting `retry`."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, message: Message) -> Result:
        self.messages.append(message)
        first = sum(m.address == message.address for m in self.messages) == 1
        if message.address.startswith("retry") and first:
            return Result(outcome=Outcome.RETRY, error_code="TooManyRequests")
        return Result(outcome=Outcome.ACCEPTED, provider_ref=f"ref-{message.key}")

    async def close(self) -> None:
        pass


@dataclass
class Engine:
    database: Database
    service_id: int
    channel: RecordingChannel
    worker: Worker

    async def notify(self, *direct: tuple[str, str]) -> dict[str, int]:
        """A direct notification; its delivery ids by address."""

        def op(conn: Connection) -> dict[str, int]:
            created = notifications.create(
                conn,
                service_id=self.service_id,
                new=NewNotification(
                    targets={"identities": [], "tags": [], "segments": []},
                    content={"title": "Hi", "body": "Hello"},
                    priority="high",
                    ttl=3600,
                    delivery_callback_url=None,
                    direct=[DirectAddress(channel=c, address=a) for c, a in direct],
                ),
            )
            rows = conn.execute(
                select(delivery.c.address, delivery.c.id)
                .join(notification)
                .where(notification.c.sid == created.sid)
            )
            return dict(rows.all())

        return await self.database.write(op)

    def sent(self, address: str) -> list[dict[str, Any]]:
        return [m.payload for m in self.channel.messages if m.address == address]


@pytest.fixture
async def engine(database: Database, vault: Vault) -> AsyncIterator[Engine]:
    """A service with APNs and FCM credentials and a worker; other tests' work is closed."""
    now = utcnow()

    def op(conn: Connection) -> int:
        quiet_the_queue(conn)
        service_id, _ = insert_service(
            conn,
            name="receipts",
            now=now,
            credentials={
                f"{type_}_credential_id": CredentialRow(
                    type_, secret_sealed=vault.seal(json.dumps({"Secret": type_}))
                )
                for type_ in ("apn", "fcm")
            },
        )
        return service_id

    service_id = await database.transaction(op)
    channel = RecordingChannel()

    def factory(_credential: Credential) -> RecordingChannel:
        return channel

    worker = Worker(
        database,
        channels=factory,
        vault=vault,
        signal=LocalSignal(),
        leader=SoleLeader(),
        rng=random.Random(7),
        name="receipts-worker",
    )
    yield Engine(database, service_id, channel, worker)
    await worker.stop()


async def test_every_apns_and_fcm_push_carries_its_own_deliverys_token(
    engine: Engine, vault: Vault
) -> None:
    second_apn = "b1" * 32
    ids = await engine.notify(("apn", APN), ("apn", second_apn), ("fcm", FCM))

    await engine.worker.dispatch_once()

    tokens = ReceiptTokens(vault)
    [apn], [other_apn], [fcm] = engine.sent(APN), engine.sent(second_apn), engine.sent(FCM)
    assert apn == payloads.build(
        "apn", {"title": "Hi", "body": "Hello"}, receipt=tokens.mint(ids[APN])
    )
    assert tokens.verify(apn[RECEIPT]) == ids[APN]
    assert tokens.verify(other_apn[RECEIPT]) == ids[second_apn]  # same cached payload, own token
    assert fcm["data"] == {"twi_title": "Hi", "twi_body": "Hello", RECEIPT: tokens.mint(ids[FCM])}


async def test_a_retried_push_carries_the_same_token(engine: Engine, vault: Vault) -> None:
    address = "retry-" + FCM
    ids = await engine.notify(("fcm", address))
    await engine.worker.dispatch_once()
    await engine.database.transaction(
        lambda conn: conn.execute(
            update(delivery).where(delivery.c.id == ids[address]).values(next_attempt_at=utcnow())
        )
    )

    await engine.worker.dispatch_once()

    first, second = engine.sent(address)
    assert first["data"][RECEIPT] == second["data"][RECEIPT]
    assert ReceiptTokens(vault).verify(second["data"][RECEIPT]) == ids[address]
