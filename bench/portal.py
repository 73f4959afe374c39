"""The portal's notification page for a notification of 100,000 deliveries: server time.

Builds the app in-process on a fresh database (SQLite in a temporary directory, or a fresh
PostgreSQL database with `--engine postgresql`), stores one notification with `--deliveries`
delivery rows through the store's own function for direct (ToBinding) notifications — 10 % of
the addresses invalid, so failed rows with an error code are among them — signs in to the portal
and requests its pages over the ASGI interface. Reports the server's own time per page (its
`Server-Timing` header: database reads and rendering) and the wall time per request, p50 and
max over `--repeat` requests, for: the first page, a page deep in the list (keyset), the failed
deliveries only, and one delivery's page. Prints a table and writes
bench/results/portal-<engine>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
from api_writes import RESULTS, postgres_database
from sqlalchemy import Connection

from clarion.api.app import create_app
from clarion.store import accounts, migrate, notifications, services
from clarion.store.database import Database
from clarion.store.notifications import DirectAddress, NewNotification
from clarion.vault import Vault, new_key

TARGET_MS = 200.0


@contextlib.contextmanager
def database_url(engine: str) -> Iterator[str]:
    if engine == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        with tempfile.TemporaryDirectory(prefix="clarion-bench-portal-") as tmp:
            yield f"sqlite:///{tmp}/clarion.db"


def _seed(conn: Connection, *, vault: Vault, deliveries: int) -> tuple[accounts.Issued, str, str]:
    issued = accounts.create_account(conn, vault, friendly_name="bench")
    account_id = accounts.credential_digest(conn, issued.sid)
    assert account_id is not None
    service = services.create(
        conn,
        account_id=account_id[0].account_id,
        values={
            "friendly_name": "bench",
            "default_apn_notification_protocol_version": "3",
            "default_gcm_notification_protocol_version": "3",
            "default_fcm_notification_protocol_version": "3",
            "default_alexa_notification_protocol_version": "3",
            "log_enabled": True,
            "delivery_callback_enabled": False,
        },
    )
    direct = [
        DirectAddress(channel="sms", address=f"+1415{index:07d}")
        if index % 10
        else DirectAddress(
            channel="sms", address=f"bad-{index}", error=(52001, "not a phone number")
        )
        for index in range(deliveries)
    ]
    created = notifications.create(
        conn,
        service_id=service["id"],
        new=NewNotification(
            targets={"identities": [], "tags": [], "segments": []},
            content={"body": "bench"},
            priority="high",
            ttl=3600,
            delivery_callback_url=None,
            direct=direct,
        ),
    )
    return issued, service["sid"], created.sid


async def _timed(
    client: httpx.AsyncClient, path: str, params: dict[str, str], repeat: int
) -> dict[str, Any]:
    server_ms: list[float] = []
    wall_ms: list[float] = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = await client.get(path, params=params)
        wall_ms.append(1000 * (time.perf_counter() - started))
        assert response.status_code == 200, response.text[:500]
        timing = response.headers.get("server-timing", "")
        match = re.search(r"dur=([0-9.]+)", timing)
        if match:
            server_ms.append(float(match.group(1)))
    summary = {
        "wall_p50_ms": round(statistics.median(wall_ms), 1),
        "wall_max_ms": round(max(wall_ms), 1),
    }
    if server_ms:
        summary |= {
            "server_p50_ms": round(statistics.median(server_ms), 1),
            "server_max_ms": round(max(server_ms), 1),
        }
    return summary


async def bench(engine: str, deliveries: int, repeat: int) -> dict[str, Any]:
    vault = Vault(new_key())
    with database_url(engine) as url:
        database = Database(url)
        await migrate.upgrade(database)
        await database.start()
        try:
            started = time.perf_counter()
            issued, service_sid, notification_sid = await database.transaction(
                lambda conn: _seed(conn, vault=vault, deliveries=deliveries)
            )
            seeded = time.perf_counter() - started
            app = create_app(database=database, vault=vault)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                page = await client.get("/portal/sign-in")
                csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
                assert csrf is not None
                signed_in = await client.post(
                    "/portal/sign-in",
                    data={
                        "username": issued.sid,
                        "password": issued.secret,
                        "csrf_token": csrf.group(1),
                    },
                )
                assert signed_in.status_code == 303, signed_in.text[:500]
                path = f"/portal/services/{service_sid}/notifications/{notification_sid}"
                first = await client.get(path)
                assert f">{deliveries:,}</strong> deliveries" in first.text
                ids = [int(value) for value in re.findall(r'href="\?after=(\d+)"', first.text)]
                deep = str(ids[0] + deliveries - 200) if ids else "0"
                delivery = re.findall(r"/deliveries/(DL\w+)", first.text)[0]
                pages = {
                    "notification page (first 50)": (path, {}),
                    "deep page (keyset, row ~99,800)": (path, {"after": deep}),
                    "failed deliveries only": (path, {"status": "failed"}),
                    "one delivery": (f"{path}/deliveries/{delivery}", {}),
                }
                results = {
                    name: await _timed(client, page_path, params, repeat)
                    for name, (page_path, params) in pages.items()
                }
        finally:
            await database.close()
    return {"seed_seconds": round(seeded, 1), "pages": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    outcome = asyncio.run(bench(args.engine, args.deliveries, args.repeat))
    print(
        f"{args.deliveries:,} deliveries on {args.engine} "
        f"(stored in {outcome['seed_seconds']} s); target ≤ {TARGET_MS:.0f} ms server time"
    )
    print(f"{'page':34} {'server p50':>11} {'server max':>11} {'wall p50':>9} {'wall max':>9}")
    for name, row in outcome["pages"].items():
        print(
            f"{name:34} {row.get('server_p50_ms', '-'):>11} {row.get('server_max_ms', '-'):>11} "
            f"{row['wall_p50_ms']:>9} {row['wall_max_ms']:>9}"
        )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"portal-{args.engine}.json"
    path.write_text(
        json.dumps({"engine": args.engine, "deliveries": args.deliveries, **outcome}, indent=2)
    )
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
