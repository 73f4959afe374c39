"""Fixtures shared by the suite: a real database on each engine, and API clients per account.

Every store and API test runs twice, on SQLite and on PostgreSQL. Each test run creates its own
PostgreSQL database (and drops it at the end); tests isolate themselves by working in a fresh
account, exactly the isolation the product promises its tenants.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import asyncpg
import httpx
import pytest
import uvloop
from sqlalchemy import Connection

from clarion.api.app import create_app
from clarion.store import accounts, migrate
from clarion.store.database import Database
from clarion.vault import Vault, new_key
from support import Account

POSTGRES_ADMIN_URL = os.environ.get(
    "CLARION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every test runs on uvloop, the loop `clarion serve` runs on: its transports differ
    (e.g. TLS transports that are not asyncio.Transport subclasses)."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def vault() -> Vault:
    return Vault(new_key())


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of its own for this test run, dropped afterwards."""
    import asyncio

    name = f"clarion_test_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("sqlite") / "clarion.db"
        return f"sqlite:///{path}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await migrate.upgrade(db)
    await db.start()
    yield db
    await db.close()


async def new_account(database: Database, vault: Vault, name: str = "test") -> Account:
    def op(conn: Connection) -> accounts.Issued:
        return accounts.create_account(conn, vault, friendly_name=name)

    issued = await database.write(op)
    return Account(issued.sid, issued.secret)


@pytest.fixture
async def account(database: Database, vault: Vault) -> Account:
    return await new_account(database, vault)


@pytest.fixture
async def app_transport(database: Database, vault: Vault) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=create_app(database=database, vault=vault))


@pytest.fixture
async def api(
    app_transport: httpx.ASGITransport, account: Account
) -> AsyncIterator[httpx.AsyncClient]:
    """A client authenticated as a fresh account."""
    async with httpx.AsyncClient(
        transport=app_transport, base_url="http://testserver", auth=(account.sid, account.token)
    ) as client:
        yield client


@pytest.fixture
async def other_api(
    app_transport: httpx.ASGITransport, database: Database, vault: Vault
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a second account, for isolation checks."""
    other = await new_account(database, vault, "other")
    async with httpx.AsyncClient(
        transport=app_transport, base_url="http://testserver", auth=(other.sid, other.token)
    ) as client:
        yield client


@pytest.fixture
async def service_sid(api: httpx.AsyncClient) -> str:
    response = await api.post("/v1/Services", data={"FriendlyName": "test"})
    assert response.status_code == 201, response.text
    return str(response.json()["sid"])
