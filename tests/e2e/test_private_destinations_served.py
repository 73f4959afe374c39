"""`clarion serve` refuses private destinations by default, end to end: the API turns away
literal private addresses, and the workers refuse a host *name* that resolves to one (the DNS
path the API cannot see), failing the delivery and the delivery callback with the reason."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.destinations import ERROR_CODE, refusal
from clarion.emulators.apns import ApnsEmulator

if TYPE_CHECKING:  # the fixtures' types; conftest modules are not imported by tests
    from conftest import ClarionServer

KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
TOKEN = "ef" * 32
WAIT_SECONDS = 30.0


def private_host_name() -> str:
    """A name (not `localhost`, which the API refuses by name) that resolves only to
    non-global addresses: this machine's own host name, on most machines."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        pytest.skip(f"this machine's host name {name!r} does not resolve")
    if name.lower() == "localhost" or any(
        refusal(ipaddress.ip_address(str(info[4][0]).split("%")[0])) is None for info in infos
    ):
        pytest.skip(f"this machine's host name {name!r} resolves to a public address")
    return name


@pytest.fixture
async def api(clarion_server: ClarionServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=clarion_server.base_url,
        auth=(clarion_server.account_sid, clarion_server.auth_token),
    ) as client:
        yield client


@pytest.fixture
async def apns() -> AsyncIterator[ApnsEmulator]:
    emulator = ApnsEmulator()
    await emulator.start()
    yield emulator
    await emulator.close()


async def created(api: httpx.AsyncClient, path: str, **form: str) -> dict[str, Any]:
    response = await api.post(f"/v1{path}", data=form)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def signing_key() -> str:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


def apn_credential(provider_url: str) -> dict[str, str]:
    return {
        "Type": "apn",
        "PrivateKey": signing_key(),
        "KeyId": KEY_ID,
        "TeamId": TEAM_ID,
        "BundleId": "com.example.app",
        "ProviderUrl": provider_url,
    }


async def test_the_api_refuses_literal_private_destinations_by_default(
    api: httpx.AsyncClient, apns: ApnsEmulator
) -> None:
    response = await api.post("/v1/Credentials", data=apn_credential(apns.url))
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 20001
    assert "127.0.0.1 is a loopback address" in response.json()["message"]
    assert "CLARION_ALLOW_PRIVATE_DESTINATIONS=true" in response.json()["message"]

    response = await api.post(
        "/v1/Services", data={"FriendlyName": "s", "DeliveryCallbackUrl": "http://10.0.0.5/"}
    )
    assert response.status_code == 400, response.text
    assert "DeliveryCallbackUrl" in response.json()["message"]


async def until(check: Any) -> Any:
    """Poll `check()` until it returns something truthy (the server's workers are async)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    pytest.fail(f"nothing happened within {WAIT_SECONDS:g} s")


async def test_the_workers_refuse_a_name_that_resolves_to_a_private_address(
    api: httpx.AsyncClient, apns: ApnsEmulator
) -> None:
    name = private_host_name()
    received: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(request.path)
        return web.Response()

    app = web.Application()
    app.router.add_post("/{path:.*}", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", 0).start()  # noqa: S104 - reachable by any name
    hook_port = runner.addresses[0][1]
    try:
        credential = await created(
            api, "/Credentials", **apn_credential(f"https://{name}:{apns.port}")
        )
        service = await created(
            api, "/Services", FriendlyName="private", ApnCredentialSid=credential["sid"]
        )
        path = f"/Services/{service['sid']}"
        await created(api, f"{path}/Bindings", Identity="ada", BindingType="apn", Address=TOKEN)
        notification = await created(
            api,
            f"{path}/Notifications",
            Identity="ada",
            Body="hello",
            DeliveryCallbackUrl=f"http://{name}:{hook_port}/hook",
        )
        sid = notification["sid"]

        async def finished_delivery() -> dict[str, Any] | None:
            response = await api.get(f"/v1{path}/Notifications/{sid}/Deliveries")
            rows = response.json()["deliveries"]
            return rows[0] if rows and rows[0]["status"] in ("failed", "sent") else None

        delivery = await until(finished_delivery)
        assert delivery["status"] == "failed"
        assert delivery["error_code"] == ERROR_CODE
        assert f"Clarion does not connect to {name} (resolved to " in delivery["error_message"]
        assert "CLARION_ALLOW_PRIVATE_DESTINATIONS=true" in delivery["error_message"]

        async def failed_callback() -> dict[str, Any] | None:
            response = await api.get(f"/v1{path}/Notifications/{sid}")
            state: dict[str, Any] = response.json()["delivery_callback"]
            return state if state["status"] == "failed" else None

        callback = await until(failed_callback)
        assert f"Clarion does not connect to {name} (resolved to " in callback["last_error"]
        assert apns.requests == 0
        assert received == []
    finally:
        await runner.cleanup()
