"""The delivery engine under the destination policy, from the API to the wire: a delivery
callback or an APNs credential aimed at a private address is a classified failure
(DestinationNotAllowed, naming host, address and setting), and nothing reaches the server;
under a policy that allows private destinations the same work is delivered.

The API here is the library's permissive default (as under `CLARION_ALLOW_PRIVATE_DESTINATIONS`
=true), so the workers' own check, made after DNS resolution, is what is tested.
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.channels.base import Channel, Message, Outcome, Result
from clarion.delivery import channels
from clarion.delivery.channel_pool import Credential
from clarion.delivery.channels import Endpoints
from clarion.delivery.wakeup import LocalSignal, SoleLeader
from clarion.delivery.worker import Worker, WorkerConfig
from clarion.destinations import ERROR_CODE, PERMISSIVE, DestinationPolicy
from clarion.emulators.apns import ApnsEmulator
from clarion.store import callbacks
from clarion.store.database import Database
from clarion.vault import Vault
from support import Clock, quiet_the_queue

DENY = DestinationPolicy()
KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
BUNDLE_ID = "com.example.clarion"
TOKEN = "cd" * 32
QUIET = functools.partial(quiet_the_queue, notifications=True, failover_chains=True)


class Accepting:
    """The fallback channel of the callback tests: every push accepted."""

    async def send(self, message: Message) -> Result:
        return Result(outcome=Outcome.ACCEPTED, provider_ref=f"ref-{message.key}")

    async def close(self) -> None:
        pass


def no_credentials(_credential: Credential) -> Channel:
    raise AssertionError("the callback tests' services have no credentials")


@dataclass
class Engine:
    database: Database
    vault: Vault
    workers: list[Worker]

    def worker(
        self, destinations: DestinationPolicy, *, credentials: bool = False, name: str = "w"
    ) -> Worker:
        """A worker whose callbacks and (with `credentials`) channels obey `destinations`,
        wired as `clarion serve` wires it."""
        factory = channels.factory(
            Endpoints(public_url="http://testserver", destinations=destinations)
        )
        accepting = Accepting()
        worker = Worker(
            self.database,
            channels=factory if credentials else no_credentials,
            fallback=lambda _binding_type: None if credentials else accepting,
            vault=self.vault,
            signal=LocalSignal(),
            leader=SoleLeader(),
            config=WorkerConfig(destinations=destinations),
            clock=Clock(),
            rng=random.Random(7),
            name=name,
        )
        self.workers.append(worker)
        return worker


@pytest.fixture
async def engine(database: Database, vault: Vault) -> AsyncIterator[Engine]:
    await database.transaction(QUIET)
    engine = Engine(database, vault, [])
    yield engine
    for worker in engine.workers:
        await worker.stop()
    await database.transaction(QUIET)


async def work_off(worker: Worker) -> None:
    while True:
        await worker.sweep_once()
        if not await worker.run_jobs() + await worker.dispatch_once():
            return


async def created(api: httpx.AsyncClient, path: str, **form: Any) -> dict[str, Any]:
    response = await api.post(f"/v1{path}", data=form)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# --- delivery callbacks ----------------------------------------------------------------------


@dataclass
class Application:
    base: str
    received: list[str]


@pytest.fixture
async def application() -> AsyncIterator[Application]:
    found = Application("", [])

    async def handle(request: web.Request) -> web.Response:
        found.received.append(request.path)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/{path:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    found.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield found
    await runner.cleanup()


async def notify_with_callback(api: httpx.AsyncClient, url: str) -> tuple[str, str]:
    service = await created(api, "/Services", FriendlyName="callbacks")
    notification = await created(
        api,
        f"/Services/{service['sid']}/Notifications",
        Body="hi",
        ToBinding='{"binding_type": "apn", "address": "' + TOKEN + '"}',
        DeliveryCallbackUrl=url,
    )
    return str(service["sid"]), str(notification["sid"])


async def callback_state(api: httpx.AsyncClient, service_sid: str, sid: str) -> dict[str, Any]:
    response = await api.get(f"/v1/Services/{service_sid}/Notifications/{sid}")
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()["delivery_callback"]
    return state


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_callback_to_a_private_address_fails_at_once_with_the_reason(
    api: httpx.AsyncClient, engine: Engine, application: Application, host: str
) -> None:
    url = application.base.replace("127.0.0.1", host) + "/hook"
    service_sid, sid = await notify_with_callback(api, url)
    await work_off(engine.worker(DENY))

    state = await callback_state(api, service_sid, sid)
    assert state["status"] == "failed"
    assert state["attempts"] == 1  # not retried: the policy will not change its mind
    assert state["last_error"].startswith("batch 0: Clarion does not connect to ")
    assert host in state["last_error"]
    assert "127.0.0.1" in state["last_error"]
    assert "CLARION_ALLOW_PRIVATE_DESTINATIONS=true" in state["last_error"]
    assert state["recent_requests"][0]["error"] == state["last_error"].removeprefix("batch 0: ")
    assert application.received == []


async def test_a_callback_to_a_private_address_is_posted_when_allowed(
    api: httpx.AsyncClient, engine: Engine, application: Application
) -> None:
    service_sid, sid = await notify_with_callback(api, application.base + "/hook")
    await work_off(engine.worker(PERMISSIVE))

    state = await callback_state(api, service_sid, sid)
    assert (state["status"], state["last_error"]) == ("sent", None)
    assert application.received == ["/hook"]
    assert callbacks.MAX_ATTEMPTS > 1  # the refusal above was not just a single-attempt policy


# --- an APNs credential aimed at a private ProviderUrl ---------------------------------------


@dataclass
class Apns:
    emulator: ApnsEmulator
    private_pem: str


@pytest.fixture
async def apns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Apns]:
    """The APNs emulator, trusted by the default TLS context the factory's channels use."""
    key = ec.generate_private_key(ec.SECP256R1())
    emulator = ApnsEmulator()
    emulator.register_key(
        key_id=KEY_ID,
        team_id=TEAM_ID,
        public_key_pem=key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    ca_file = tmp_path / "ca.pem"
    emulator.ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    await emulator.start()
    yield Apns(
        emulator,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )
    await emulator.close()


async def push_through_credential(
    api: httpx.AsyncClient, engine: Engine, apns: Apns, *, host: str, policy: DestinationPolicy
) -> dict[str, Any]:
    """Register a device on a service whose APNs credential's ProviderUrl is
    https://{host}:{emulator port}, notify it, let a worker send; its delivery."""
    credential = await created(
        api,
        "/Credentials",
        Type="apn",
        PrivateKey=apns.private_pem,
        KeyId=KEY_ID,
        TeamId=TEAM_ID,
        BundleId=BUNDLE_ID,
        ProviderUrl=f"https://{host}:{apns.emulator.port}",
    )
    service = await created(
        api, "/Services", FriendlyName="private apns", ApnCredentialSid=credential["sid"]
    )
    path = f"/Services/{service['sid']}"
    await created(api, f"{path}/Bindings", Identity="ada", BindingType="apn", Address=TOKEN)
    notification = await created(api, f"{path}/Notifications", Identity="ada", Body="hello")
    await work_off(engine.worker(policy, credentials=True))
    response = await api.get(f"/v1{path}/Notifications/{notification['sid']}/Deliveries")
    assert response.status_code == 200, response.text
    (delivery,) = response.json()["deliveries"]
    found: dict[str, Any] = delivery
    return found


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_an_apns_credential_aimed_at_a_private_address_fails_its_deliveries(
    api: httpx.AsyncClient, engine: Engine, apns: Apns, host: str
) -> None:
    delivery = await push_through_credential(api, engine, apns, host=host, policy=DENY)
    assert delivery["status"] == "failed"
    assert delivery["error_code"] == ERROR_CODE
    assert host in delivery["error_message"]
    assert "127.0.0.1" in delivery["error_message"]
    assert "CLARION_ALLOW_PRIVATE_DESTINATIONS" in delivery["error_message"]
    assert apns.emulator.requests == 0


async def test_an_apns_credential_aimed_at_a_private_address_delivers_when_allowed(
    api: httpx.AsyncClient, engine: Engine, apns: Apns
) -> None:
    delivery = await push_through_credential(api, engine, apns, host="127.0.0.1", policy=PERMISSIVE)
    assert delivery["status"] == "sent", delivery
    assert [n.token for n in apns.emulator.accepted] == [TOKEN]
