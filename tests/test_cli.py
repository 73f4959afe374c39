"""The `clarion` command as operators and their scripts run it.

Its output contract: the `accounts` commands print exactly one JSON object on stdout (scripts
parse it); every failure exits non-zero with one line on stderr — never a traceback. Each test
runs the installed console script in a fresh data directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from clarion.api.app import create_app
from clarion.config import load
from clarion.store import accounts, migrate
from clarion.store.database import Database
from clarion.vault import Vault

CLARION = Path(sys.executable).parent / "clarion"


def run(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # The test runner's own CLARION_* settings must not leak into the command under test.
    base = {name: value for name, value in os.environ.items() if not name.startswith("CLARION_")}
    return subprocess.run(
        [str(CLARION), *args],
        env={**base, "CLARION_DATA_DIR": str(data_dir), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("clarion: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""


def only_json_object(stdout: str) -> dict[str, str]:
    """The whole of stdout, which must be one JSON object on one line."""
    assert stdout.endswith("\n"), stdout
    assert len(stdout.splitlines()) == 1, stdout
    value = json.loads(stdout)
    assert isinstance(value, dict), stdout
    return value


async def status_as(database_url: str, secret_key: str, username: str, password: str) -> int:
    """The status of an authenticated request against this database: 200 if the pair works."""
    database = Database(database_url)
    await database.start()
    try:
        app = create_app(database=database, vault=Vault(secret_key))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            auth=(username, password),
        ) as client:
            return (await client.get("/v1/Services")).status_code
    finally:
        await database.close()


async def test_accounts_create_prints_only_the_sid_and_a_working_auth_token(
    tmp_path: Path,
) -> None:
    result = run(tmp_path, "accounts", "create", "--friendly-name", "Acme")

    assert result.returncode == 0, result.stderr
    issued = only_json_object(result.stdout)
    assert set(issued) == {"sid", "auth_token"}
    assert re.fullmatch(r"AC[0-9a-f]{32}", issued["sid"])
    assert re.fullmatch(r"[0-9a-f]{32}", issued["auth_token"])
    settings = load({"CLARION_DATA_DIR": str(tmp_path)})
    assert (
        await status_as(
            settings.database_url, settings.secret_key, issued["sid"], issued["auth_token"]
        )
        == 200
    )
    assert await status_as(settings.database_url, settings.secret_key, issued["sid"], "x") == 401


async def test_accounts_keys_create_prints_only_the_sid_and_a_working_secret(
    tmp_path: Path,
) -> None:
    settings = load({"CLARION_DATA_DIR": str(tmp_path)})
    database = Database(settings.database_url)
    try:
        await migrate.upgrade(database)
        vault = Vault(settings.secret_key)
        account = await database.transaction(
            lambda conn: accounts.create_account(conn, vault, friendly_name="Acme")
        )
    finally:
        await database.close()

    result = run(
        tmp_path, "accounts", "keys", "create", "--account", account.sid, "--friendly-name", "ci"
    )

    assert result.returncode == 0, result.stderr
    issued = only_json_object(result.stdout)
    assert set(issued) == {"sid", "secret"}
    assert re.fullmatch(r"SK[0-9a-f]{32}", issued["sid"])
    assert len(issued["secret"]) >= 32
    assert (
        await status_as(settings.database_url, settings.secret_key, issued["sid"], issued["secret"])
        == 200
    )


def test_accounts_keys_create_for_an_unknown_account_fails_in_one_line(tmp_path: Path) -> None:
    unknown = "AC" + "0" * 32

    result = run(
        tmp_path, "accounts", "keys", "create", "--account", unknown, "--friendly-name", "ci"
    )

    assert_one_line_failure(result, unknown, "does not exist")


def test_migrate_creates_the_database_and_can_run_again(tmp_path: Path) -> None:
    first = run(tmp_path, "migrate")
    second = run(tmp_path, "migrate")

    assert first.returncode == 0, first.stderr
    assert (tmp_path / "clarion.db").exists()
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in first.stderr + second.stderr
    assert first.stdout == second.stdout == ""


def test_a_bad_secret_key_fails_in_one_line(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "accounts",
        "create",
        "--friendly-name",
        "x",
        env={"CLARION_SECRET_KEY": "not-a-key"},
    )

    assert_one_line_failure(result, "configuration error", "CLARION_SECRET_KEY")
    assert "not-a-key" not in result.stderr


def test_an_unknown_database_url_scheme_fails_in_one_line(tmp_path: Path) -> None:
    result = run(tmp_path, "migrate", env={"CLARION_DATABASE_URL": "mysql://root:pw@db/clarion"})

    assert_one_line_failure(result, "configuration error", "CLARION_DATABASE_URL")


def test_an_unreachable_postgresql_fails_in_one_line(tmp_path: Path) -> None:
    """Port 1 is closed: the driver's connection error must become one readable line."""
    result = run(
        tmp_path,
        "accounts",
        "create",
        "--friendly-name",
        "x",
        env={"CLARION_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/clarion"},
    )

    assert_one_line_failure(result, "cannot use the database")


async def test_accounts_create_works_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    result = run(
        tmp_path,
        "accounts",
        "create",
        "--friendly-name",
        "Acme",
        env={"CLARION_DATABASE_URL": postgres_url},
    )

    assert result.returncode == 0, result.stderr
    issued = only_json_object(result.stdout)
    secret_key = (tmp_path / "secret.key").read_text().strip()
    assert await status_as(postgres_url, secret_key, issued["sid"], issued["auth_token"]) == 200
