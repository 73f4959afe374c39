"""Crash safety (issue 3, item 9): `clarion` processes killed with SIGKILL lose nothing.

Clarion runs as subprocesses, exactly as deployed; APNs is the emulator in this process, over
TLS and HTTP/2, and what it accepted, counted by device token, is what the assertions count.
The database is only read, to time the kill and afterwards for what the API does not show:
which deliveries the sweeper handed back as ambiguous, how often a fan-out job was claimed.

Why duplicates are bounded: a worker holds at most `WorkerConfig.max_in_flight` deliveries
claimed and not yet stored (the delivery loop claims only into free room, and room comes back
only once results are committed). Only those can have reached APNs without their result being
stored, so only those are sent again when their lease runs out, and the sweeper marks exactly
those `ambiguous`. Every other delivery is either stored `sent` (never claimed again) or was
never sent. A fan-out cut off between chunks resumes at its cursor, and the unique
(notification, channel, address) constraint absorbs a chunk written twice: no binding is lost
or doubled. With no crash, leases never run out, so every delivery is sent exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection, func, select

from clarion.delivery.worker import WorkerConfig
from clarion.emulators.apns import ApnsEmulator
from clarion.store.database import Database
from clarion.store.tables import delivery, job, notification

CLARION = Path(sys.executable).parent / "clarion"
CROWD = 20_000
TEAM = 10
TEAM_NOTIFICATIONS = 2_000
WORKERS = 3
# Requests kept open while registering bindings and posting notifications.
CONCURRENCY = 50
# The bound on what one kill can make a worker send twice (module docstring).
MAX_IN_FLIGHT = WorkerConfig().max_in_flight
# Crash tests shorten the lease (CLARION_LEASE_SECONDS) so that a dead worker's work is handed
# back within seconds rather than a minute. Still far longer than any send takes here: a lease
# running out under a live worker would cause a duplicate the kill did not.
CRASH_LEASE_SECONDS = 5
KEY_ID = "CRASH12345"
TEAM_ID = "TEAM123456"
BUNDLE_ID = "com.example.crash"
# Guards against hangs only, never asserted on: a working engine is done far sooner.
START_TIMEOUT = 30.0
SETTLE_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0
# Below uvicorn's 5 s keep-alive: never reuse a connection the server is closing.
CLIENT_KEEPALIVE = 2.0

Account = tuple[str, str]


# -- processes -------------------------------------------------------------------------------


class Process:
    """A `clarion` subprocess; its output is collected on a thread and shown if it fails."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            [str(CLARION), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.popen.stdout is not None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._pump = threading.Thread(target=self._read, args=(self.popen.stdout,), daemon=True)
        self._pump.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                self._lines.append(line)

    def output(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            self._pump.join(timeout=STOP_TIMEOUT)
            pytest.fail(
                f"clarion {self.args[0]} exited with status {self.popen.returncode}; "
                f"output:\n{self.output()}"
            )

    def freeze(self) -> None:
        """SIGSTOP: the process runs no further instruction (SIGKILL ends it from there)."""
        self.popen.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL: no handler runs; nothing is stored, handed back or closed."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()

    def stop(self) -> None:
        self.terminate()
        if self.popen.poll() is None:
            try:
                self.popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._pump.join(timeout=STOP_TIMEOUT)
        assert self.popen.stdout is not None
        self.popen.stdout.close()


class Launcher:
    """Starts `clarion serve` and `clarion worker` processes; stops whatever is left."""

    def __init__(self) -> None:
        self._processes: list[Process] = []

    async def serve(self, env: dict[str, str], *options: str) -> tuple[Process, str]:
        """`clarion serve` on a free port: the process and its base URL."""
        port = _free_port()
        process = await self._start(["serve", "--port", str(port), *options], env, "is serving")
        return process, f"http://127.0.0.1:{port}"

    async def worker(self, env: dict[str, str]) -> Process:
        return await self._start(["worker"], env, "workers are running")

    async def _start(self, args: list[str], env: dict[str, str], ready: str) -> Process:
        """Start `clarion <args>` and wait until it announces `ready`."""
        process = Process(args, env)
        self._processes.append(process)
        deadline = time.monotonic() + START_TIMEOUT
        while ready not in process.output():
            process.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"clarion {args[0]} did not start in time:\n{process.output()}")
            await asyncio.sleep(0.05)
        return process

    def stop_all(self) -> None:
        """SIGTERM to all at once (each stops gracefully), then wait for each."""
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            process.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def launcher() -> Iterator[Launcher]:
    processes = Launcher()
    yield processes
    processes.stop_all()


# -- APNs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Apns:
    emulator: ApnsEmulator
    private_key_pem: str
    # The emulator's CA as a PEM file, for SSL_CERT_FILE.
    ca_file: Path

    def mark(self) -> int:
        """Where the records of what happens next begin."""
        return len(self.emulator.accepted)

    def received(self, body: str, since: int = 0) -> Counter[str]:
        """Device token → how often APNs accepted the notification with `body`."""
        return Counter(token for text, token in self.receipts(since).elements() if text == body)

    def receipts(self, since: int = 0) -> Counter[tuple[str, str]]:
        """(body, device token) → how often APNs accepted it, among records from `since` on."""
        return Counter(
            (record.json()["aps"]["alert"]["body"], record.token)
            for record in self.emulator.accepted[since:]
        )


@pytest.fixture(scope="module")
async def apns(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Apns]:
    key = ec.generate_private_key(ec.SECP256R1())
    emulator = ApnsEmulator()
    emulator.register_key(
        key_id=KEY_ID,
        team_id=TEAM_ID,
        public_key_pem=key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    ca_file = tmp_path_factory.mktemp("apns-ca") / "ca.pem"
    emulator.ca.cert_pem.write_to_path(str(ca_file))
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    await emulator.start()
    yield Apns(emulator, private_pem.decode(), ca_file)
    await emulator.close()


def process_env(
    apns: Apns, data_dir: Path, *, database_url: str | None = None, lease: int | None = None
) -> dict[str, str]:
    """A `clarion` process's environment: its data directory (processes sharing a database share
    it, and with it the secret key that seals credentials), the emulator's CA trusted
    (SSL_CERT_FILE, which the default TLS context loads) and maybe a short lease."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CLARION_")}
    env["CLARION_DATA_DIR"] = str(data_dir)
    env["SSL_CERT_FILE"] = str(apns.ca_file)
    # The APNs emulator listens on 127.0.0.1, a private destination `clarion serve` refuses.
    env["CLARION_ALLOW_PRIVATE_DESTINATIONS"] = "true"
    if database_url is not None:
        env["CLARION_DATABASE_URL"] = database_url
    if lease is not None:
        env["CLARION_LEASE_SECONDS"] = str(lease)
    return env


# -- the API ---------------------------------------------------------------------------------


class Api:
    """The Notify API as one account, over aiohttp: registering 20,000 bindings at
    concurrency 50 needs a client that costs little CPU (httpx takes about ten times more)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def create(self, path: str, form: dict[str, str]) -> dict[str, Any]:
        async with self._session.post(f"/v1{path}", data=form) as response:
            text = await response.text()
            assert response.status == 201, text
            return json.loads(text)  # type: ignore[no-any-return]

    async def get(self, path: str) -> dict[str, Any]:
        async with self._session.get(f"/v1{path}") as response:
            text = await response.text()
            assert response.status == 200, text
            return json.loads(text)  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def connect(base_url: str, account: Account) -> AsyncIterator[Api]:
    credentials = base64.b64encode(":".join(account).encode()).decode()
    async with aiohttp.ClientSession(
        base_url=base_url,
        headers={"Authorization": f"Basic {credentials}"},
        connector=aiohttp.TCPConnector(limit=CONCURRENCY, keepalive_timeout=CLIENT_KEEPALIVE),
    ) as session:
        yield Api(session)


def token(group: int, number: int) -> str:
    """A distinct 64-hex-digit device token, never one of the sandbox's `dead…`/`bad…`."""
    return f"{group:02x}{number:062x}"


async def new_service(api: Api, apns: Apns) -> str:
    """A service whose APNs credential is aimed at the emulator (ProviderUrl)."""
    credential = await api.create(
        "/Credentials",
        {
            "Type": "apn",
            "PrivateKey": apns.private_key_pem,
            "KeyId": KEY_ID,
            "TeamId": TEAM_ID,
            "BundleId": BUNDLE_ID,
            "Sandbox": "True",
            "ProviderUrl": apns.emulator.url,
        },
    )
    service = await api.create(
        "/Services", {"FriendlyName": "crash safety", "ApnCredentialSid": credential["sid"]}
    )
    return str(service["sid"])


async def concurrently(count: int, step: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """`step(0)` … `step(count - 1)`, `CONCURRENCY` at a time; their results in order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(number: int) -> Any:
        async with gate:
            return await step(number)

    return await asyncio.gather(*(one(number) for number in range(count)))


async def register(api: Api, service: str, *, tag: str, group: int, count: int) -> set[str]:
    """`count` APNs bindings tagged `tag`, an identity each; their device tokens."""
    await concurrently(
        count,
        lambda number: api.create(
            f"/Services/{service}/Bindings",
            {
                "Identity": f"{tag}-{number}",
                "BindingType": "apn",
                "Address": token(group, number),
                "Tag": tag,
            },
        ),
    )
    return {token(group, number) for number in range(count)}


async def notify(api: Api, service: str, *, tag: str, body: str) -> str:
    """A notification to `tag`; its path in the API."""
    created = await api.create(f"/Services/{service}/Notifications", {"Tag": tag, "Body": body})
    return f"/Services/{service}/Notifications/{created['sid']}"


async def settled(api: Api, path: str, *processes: Process) -> dict[str, Any]:
    """The notification once it is completed; the engine works asynchronously."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        body = await api.get(path)
        if body["status"] not in ("queued", "fanning_out", "dispatched"):
            return body
        for process in processes:
            process.check_alive()
        assert time.monotonic() < deadline, f"not completed in time: {body}"
        await asyncio.sleep(0.2)


async def received_in_all(apns: Apns, since: int, count: int, *processes: Process) -> None:
    """Until APNs has accepted `count` notifications since `since` (cheaper to watch than
    thousands of notifications through the API, which would compete with the workers)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while apns.mark() - since < count:
        for process in processes:
            process.check_alive()
        assert time.monotonic() < deadline, f"{apns.mark() - since} of {count} received in time"
        await asyncio.sleep(0.2)


def sid_of(path: str) -> str:
    return path.rsplit("/", 1)[1]


# -- the database, read to time the kill and afterwards ----------------------------------------


@contextlib.asynccontextmanager
async def opened(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.close()


async def fan_out_in_progress(database: Database, sid: str) -> bool:
    """Whether the notification is still being fanned out while deliveries are being sent."""

    def read(conn: Connection) -> bool:
        sending = (
            select(func.count())
            .where(delivery.c.notification_id == notification.c.id, delivery.c.status == "sending")
            .scalar_subquery()
        )
        status, count = conn.execute(
            select(notification.c.status, sending).where(notification.c.sid == sid)
        ).one()
        return bool(status == "fanning_out" and count > 0)

    return await database.read(read)


async def kill_mid_fan_out(database: Database, sid: str, victim: Process) -> None:
    """SIGKILL `victim` while it is fanning out `sid` and sending its first deliveries.

    Read straight from the database: the API answers from the same busy event loop, and what
    it shows is often a chunk or two behind. The process is frozen the moment the database
    shows that state, which is confirmed again before the kill.
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not await fan_out_in_progress(database, sid):
        victim.check_alive()
        assert time.monotonic() < deadline, "the fan-out was never seen in progress"
        await asyncio.sleep(0.005)
    victim.freeze()
    in_progress = await fan_out_in_progress(database, sid)
    victim.kill()
    assert in_progress, "the fan-out ended before the worker was frozen"


@dataclass(frozen=True)
class Aftermath:
    # Addresses the sweeper handed back as ambiguous: the deliveries in flight at a kill.
    ambiguous: set[str]
    # How many times the notifications' fan-out jobs were claimed, in all.
    fan_out_claims: int


async def aftermath(database: Database, sids: Collection[str]) -> Aftermath:
    def read(conn: Connection) -> Aftermath:
        ids = select(notification.c.id).where(notification.c.sid.in_(sids))
        ambiguous = conn.scalars(
            select(delivery.c.address).where(
                delivery.c.notification_id.in_(ids), delivery.c.ambiguous
            )
        )
        claims = conn.scalar(
            select(func.sum(job.c.attempts)).where(
                job.c.notification_id.in_(ids), job.c.kind == "fanout"
            )
        )
        return Aftermath(ambiguous=set(ambiguous), fan_out_claims=int(claims or 0))

    return await database.read(read)


def assert_survived_the_kill(
    body: dict[str, Any], received: Counter[str], audience: set[str], after: Aftermath
) -> None:
    """Every binding got the notification; only deliveries in flight at the kill got it twice."""
    assert after.fan_out_claims == 2  # claimed by the killed worker, resumed by the next one
    assert after.ambiguous, "no delivery was in flight at the kill"
    assert body["status"] == "completed"
    assert body["deliveries"] == {"total": len(audience), "sent": len(audience)}
    assert set(received) == audience
    assert max(received.values()) <= 2
    assert {address for address, count in received.items() if count > 1} <= after.ambiguous
    assert len(after.ambiguous) <= MAX_IN_FLIGHT


# -- SQLite: `clarion serve` runs the workers in-process ----------------------------------------


async def test_serve_killed_mid_fan_out_restarts_and_every_binding_gets_it(
    apns: Apns, launcher: Launcher, tmp_path: Path
) -> None:
    env = process_env(apns, tmp_path, lease=CRASH_LEASE_SECONDS)
    first, base_url = await launcher.serve(env)
    account = _announced_account(first.output())
    async with opened(f"sqlite:///{tmp_path / 'clarion.db'}") as database:
        async with connect(base_url, account) as api:
            service = await new_service(api, apns)
            crowd = await register(api, service, tag="crowd", group=1, count=CROWD)
            path = await notify(api, service, tag="crowd", body="sqlite crash")
            await kill_mid_fan_out(database, sid_of(path), first)

        second, base_url = await launcher.serve(env)
        async with connect(base_url, account) as api:
            body = await settled(api, path, second)

        assert_survived_the_kill(
            body,
            apns.received("sqlite crash"),
            crowd,
            await aftermath(database, [sid_of(path)]),
        )


def _announced_account(output: str) -> Account:
    """The default account `clarion serve` prints on SQLite."""
    fields = dict(line.strip().split(": ", 1) for line in output.splitlines() if ": " in line)
    return fields["Account SID"].strip(), fields["Auth token"].strip()


# -- PostgreSQL: `clarion serve --no-workers` and `clarion worker` processes --------------------


@dataclass(frozen=True)
class Distributed:
    """The API alone on a database of its own, a service of CROWD bindings tagged `crowd` and one
    of TEAM bindings tagged `team`; each test starts the workers it needs."""

    database: Database
    base_url: str
    account: Account
    crowd_service: str
    crowd: set[str]
    team_service: str
    team: set[str]
    env: dict[str, str]


@pytest.fixture(scope="module")
async def distributed(
    apns: Apns, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Distributed]:
    # A sibling of the suite's database, not that one: other tests leave queued work there, which
    # workers would take.
    name = f"{sid_of(postgres_url)}_crash"
    database_url = f"{postgres_url.rsplit('/', 1)[0]}/{name}"
    admin = await asyncpg.connect(postgres_url)
    processes = Launcher()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        env = process_env(apns, tmp_path_factory.mktemp("distributed"), database_url=database_url)
        account = await _create_account(env)
        _, base_url = await processes.serve(env, "--no-workers")
        async with connect(base_url, account) as api, opened(database_url) as database:
            crowd_service = await new_service(api, apns)
            crowd = await register(api, crowd_service, tag="crowd", group=2, count=CROWD)
            # A service of its own: a tag's fan-out walks every binding of its service.
            team_service = await new_service(api, apns)
            team = await register(api, team_service, tag="team", group=3, count=TEAM)
            yield Distributed(
                database, base_url, account, crowd_service, crowd, team_service, team, env
            )
    finally:
        processes.stop_all()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _create_account(env: dict[str, str]) -> Account:
    """PostgreSQL has no default account: `clarion accounts create` makes one."""
    process = await asyncio.create_subprocess_exec(
        str(CLARION),
        "accounts",
        "create",
        "--friendly-name",
        "crash safety",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    created = json.loads(out)
    return created["sid"], created["auth_token"]


async def test_worker_killed_mid_fan_out_is_replaced_and_every_binding_gets_it(
    apns: Apns, distributed: Distributed, launcher: Launcher
) -> None:
    env = {**distributed.env, "CLARION_LEASE_SECONDS": str(CRASH_LEASE_SECONDS)}
    since = apns.mark()
    first = await launcher.worker(env)
    async with connect(distributed.base_url, distributed.account) as api:
        path = await notify(api, distributed.crowd_service, tag="crowd", body="postgresql crash")
        await kill_mid_fan_out(distributed.database, sid_of(path), first)
        second = await launcher.worker(env)
        body = await settled(api, path, second)

    assert_survived_the_kill(
        body,
        apns.received("postgresql crash", since),
        distributed.crowd,
        await aftermath(distributed.database, [sid_of(path)]),
    )


async def test_three_workers_send_a_fan_out_of_20000_exactly_once(
    apns: Apns, distributed: Distributed, launcher: Launcher
) -> None:
    since, tokens_since = apns.mark(), len(apns.emulator.provider_tokens)
    workers = await asyncio.gather(*(launcher.worker(distributed.env) for _ in range(WORKERS)))
    async with connect(distributed.base_url, distributed.account) as api:
        path = await notify(api, distributed.crowd_service, tag="crowd", body="three workers")
        body = await settled(api, path, *workers)

    assert body["status"] == "completed"
    assert body["deliveries"] == {"total": CROWD, "sent": CROWD}
    assert apns.received("three workers", since) == Counter(distributed.crowd)
    assert await aftermath(distributed.database, [sid_of(path)]) == Aftermath(
        ambiguous=set(), fan_out_claims=1
    )
    # Each worker's APNs channel signs its own provider token: all three took part.
    assert len(apns.emulator.provider_tokens) - tokens_since == WORKERS


async def test_three_workers_send_2000_notifications_to_10_bindings_exactly_once(
    apns: Apns, distributed: Distributed, launcher: Launcher
) -> None:
    since, tokens_since = apns.mark(), len(apns.emulator.provider_tokens)
    bodies = [f"team {number}" for number in range(TEAM_NOTIFICATIONS)]
    async with connect(distributed.base_url, distributed.account) as api:
        # Queued before the workers start, so that all three compete for every job.
        paths = await concurrently(
            len(bodies),
            lambda number: notify(api, distributed.team_service, tag="team", body=bodies[number]),
        )
        workers = await asyncio.gather(*(launcher.worker(distributed.env) for _ in range(WORKERS)))
        await received_in_all(apns, since, TEAM * TEAM_NOTIFICATIONS, *workers)
        results = await concurrently(
            len(paths), lambda number: settled(api, paths[number], *workers)
        )

    for body in results:
        assert body["status"] == "completed"
        assert body["deliveries"] == {"total": TEAM, "sent": TEAM}
    assert apns.receipts(since) == Counter(
        (body, address) for body in bodies for address in distributed.team
    )
    assert await aftermath(distributed.database, [sid_of(path) for path in paths]) == Aftermath(
        ambiguous=set(), fan_out_claims=TEAM_NOTIFICATIONS
    )
    assert len(apns.emulator.provider_tokens) - tokens_since == WORKERS
