"""`clarion serve | worker | migrate | accounts create | accounts keys create`.

This is where everything is wired together. Output contracts other tooling relies on: the
`accounts` commands print exactly one JSON object on stdout; any failure prints one line on
stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Protocol, TypeVar

import uvicorn
import uvloop
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.applications import Starlette

from clarion import config, errors
from clarion.api.app import create_app
from clarion.config import ConfigError, Settings
from clarion.delivery import channels, wakeup
from clarion.delivery.channel_pool import ChannelFactory, Fallback
from clarion.delivery.channels import Endpoints
from clarion.delivery.provider_reports import ProviderReports
from clarion.delivery.worker import Worker, WorkerConfig
from clarion.destinations import DestinationPolicy
from clarion.sandbox import Sandbox
from clarion.store import accounts, migrate
from clarion.store.database import Database
from clarion.vault import Vault

T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = config.load()
        uvloop.run(args.command(settings, args))
    except ConfigError as exc:
        _fail(f"configuration error: {exc}")
    except (OperationalError, DBAPIError, OSError) as exc:
        _fail(f"cannot use the database: {_first_line(exc)}")
    except errors.ClarionError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clarion", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="apply migrations, serve the API and run the delivery workers"
    )
    serve.add_argument("--host", help="interface to listen on (default: CLARION_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: CLARION_PORT or 8080)")
    serve.add_argument(
        "--no-workers",
        action="store_true",
        help="serve the API only; `clarion worker` processes deliver (PostgreSQL)",
    )
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="deliver through built-in provider emulators wherever a service has no credential",
    )
    serve.set_defaults(command=_serve)

    worker = commands.add_parser(
        "worker", help="apply migrations and run delivery workers only, until SIGTERM/SIGINT"
    )
    worker.set_defaults(command=_worker)

    migrate_cmd = commands.add_parser("migrate", help="apply pending database migrations")
    migrate_cmd.set_defaults(command=_migrate)

    accounts_cmd = commands.add_parser("accounts", help="manage accounts")
    account_commands = accounts_cmd.add_subparsers(required=True, metavar="COMMAND")
    create = account_commands.add_parser(
        "create", help="create an account; prints its SID and token"
    )
    create.add_argument("--friendly-name", required=True)
    create.set_defaults(command=_create_account)

    keys = account_commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(required=True, metavar="COMMAND")
    key_create = key_commands.add_parser(
        "create", help="create an API key; prints its SID and secret"
    )
    key_create.add_argument("--account", required=True, help="the AC… SID of the account")
    key_create.add_argument("--friendly-name", required=True)
    key_create.set_defaults(command=_create_key)
    return parser


async def _with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    database = Database(settings.database_url)
    try:
        await migrate.upgrade(database)
        return await work(database)
    finally:
        await database.close()


async def _migrate(settings: Settings, _args: argparse.Namespace) -> None:
    await _with_database(settings, lambda database: asyncio.sleep(0))
    print("database is up to date", file=sys.stderr)


async def _create_account(settings: Settings, args: argparse.Namespace) -> None:
    vault = Vault(settings.secret_key)

    async def work(database: Database) -> accounts.Issued:
        return await database.transaction(
            lambda conn: accounts.create_account(conn, vault, friendly_name=args.friendly_name)
        )

    issued = await _with_database(settings, work)
    print(json.dumps({"sid": issued.sid, "auth_token": issued.secret}))


async def _create_key(settings: Settings, args: argparse.Namespace) -> None:
    async def work(database: Database) -> accounts.Issued:
        return await database.transaction(
            lambda conn: accounts.create_api_key(
                conn, account_sid=args.account, friendly_name=args.friendly_name
            )
        )

    issued = await _with_database(settings, work)
    print(json.dumps({"sid": issued.sid, "secret": issued.secret}))


async def _serve(settings: Settings, args: argparse.Namespace) -> None:
    host = args.host or settings.host
    port = args.port or settings.port
    vault = Vault(settings.secret_key)
    database = Database(settings.database_url)
    await migrate.upgrade(database)
    account = await _ready_account(database, vault)
    reports = ProviderReports(database)
    # Tenants' destinations may be private only if the operator says so, or in the sandbox.
    destinations = DestinationPolicy(
        allow_private=settings.destinations_allowed(sandbox=args.sandbox),
        allowed_networks=settings.allowed_private_networks,
    )
    endpoints = Endpoints(
        public_url=settings.public_url or f"http://{host}:{port}",
        reports=reports.submit,
        destinations=destinations,
    )
    sandbox = Sandbox(endpoints=endpoints) if args.sandbox else None
    # Without workers here the API still NOTIFYs the worker processes (PostgreSQL).
    work_signal = wakeup.signal_for(database, listen=not args.no_workers)
    app = create_app(
        database=database,
        vault=vault,
        on_enqueued=work_signal.notify,
        webhook_tokens={} if sandbox is None else sandbox.webhook_secrets,
        sandbox=sandbox is not None,
        destinations=destinations,
    )
    _run_alongside(app, work_signal)
    if sandbox is not None:
        _run_alongside(app, sandbox)
    if not args.no_workers:
        # Started before the workers and stopped after them, so no receipt is left unwritten.
        _run_alongside(app, reports)
        _run_alongside(
            app,
            _delivery(
                database,
                vault,
                work_signal,
                factory=channels.factory(endpoints),
                fallback=None if sandbox is None else sandbox.fallback,
                lease=settings.lease_seconds,
                destinations=destinations,
            ),
        )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="on",
            proxy_headers=True,
            server_header=False,
        )
    )
    announcement = asyncio.create_task(_announce(server, host, port, account, sandbox))
    _settle_heap()
    try:
        await server.serve()
    finally:
        announcement.cancel()


def _settle_heap() -> None:
    """Hide everything built at start-up from the garbage collector, and collect less often.

    Full collections otherwise walk SQLAlchemy's and the app's long-lived objects again and
    again; they made the slowest 1 % of API writes (bench/api_writes.py: p99 81 ms → 28 ms).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


async def _worker(settings: Settings, _args: argparse.Namespace) -> None:
    vault = Vault(settings.secret_key)
    database = Database(settings.database_url)
    reports = ProviderReports(database)
    destinations = DestinationPolicy(
        allow_private=settings.destinations_allowed(sandbox=False),
        allowed_networks=settings.allowed_private_networks,
    )
    endpoints = Endpoints(
        public_url=settings.public_url or f"http://{settings.host}:{settings.port}",
        reports=reports.submit,
        destinations=destinations,
    )
    try:
        await migrate.upgrade(database)
        work_signal = wakeup.signal_for(database, listen=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        async with (
            _started(work_signal),
            _started(reports),
            _started(
                _delivery(
                    database,
                    vault,
                    work_signal,
                    factory=channels.factory(endpoints),
                    lease=settings.lease_seconds,
                    destinations=destinations,
                )
            ),
        ):
            print("Clarion workers are running; stop them with SIGTERM or Ctrl-C", flush=True)
            await stop.wait()
    finally:
        await database.close()


class _Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class _Delivery:
    """The process's worker and leader lock, started and stopped together."""

    def __init__(self, worker: Worker, leader: wakeup.LeaderLock) -> None:
        self._worker = worker
        self._leader = leader

    async def start(self) -> None:
        await self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()
        await self._leader.close()


def _delivery(
    database: Database,
    vault: Vault,
    work_signal: wakeup.WorkSignal,
    *,
    factory: ChannelFactory,
    fallback: Fallback | None = None,
    lease: float,
    destinations: DestinationPolicy,
) -> _Delivery:
    leader = wakeup.leader_for(database)
    worker = Worker(
        database,
        channels=factory,
        fallback=fallback or (lambda _channel: None),
        vault=vault,
        signal=work_signal,
        leader=leader,
        config=WorkerConfig(lease=timedelta(seconds=lease), destinations=destinations),
    )
    return _Delivery(worker, leader)


@contextlib.asynccontextmanager
async def _started(service: _Service) -> AsyncIterator[None]:
    await service.start()
    try:
        yield
    finally:
        await service.stop()


def _run_alongside(app: Starlette, service: _Service) -> None:
    """Start `service` after the app's own start-up and stop it before its shutdown (which
    closes the database the workers are still writing results to)."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with inner(app), _started(service):
            yield

    app.router.lifespan_context = lifespan


async def _ready_account(database: Database, vault: Vault) -> accounts.Issued | None:
    """On the embedded (SQLite) default, make sure a developer has an account to try."""
    if database.dialect != "sqlite":
        return None

    def ensure(conn: Connection) -> accounts.Issued:
        account = accounts.first_account(conn, vault)
        return account or accounts.create_account(conn, vault, friendly_name="Default")

    return await database.transaction(ensure)


async def _announce(
    server: uvicorn.Server,
    host: str,
    port: int,
    account: accounts.Issued | None,
    sandbox: Sandbox | None = None,
) -> None:
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes no start-up event
        await asyncio.sleep(0.02)
    lines = [f"Clarion is serving the Notify API at http://{host}:{port}/v1"]
    if account is not None:
        lines += [f"  Account SID: {account.sid}", f"  Auth token:  {account.secret}"]
    if sandbox is not None:
        lines += sandbox.announcement()
    print("\n".join(lines), flush=True)


def _first_line(exc: BaseException) -> str:
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]


def _fail(message: str) -> None:
    print(f"clarion: {message}", file=sys.stderr)
    sys.exit(2)


logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
