"""The shared HTTP/2 client, against the APNs emulator as a real HTTP/2 server.

The APNs channel tests cover what APNs does to a connection (stream limits, GOAWAY, flow control
of answers); these cover what the client promises any caller: bodies larger than the peer's
window, a second connection when the first is full, callers waiting in line, and clear errors.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from clarion.channels.http2 import ConnectError, ConnectionLostError, Http2Client, Response
from clarion.emulators.apns import ApnsEmulator

T = TypeVar("T")
PAYLOAD = b'{"aps":{"alert":"hi"}}'


@pytest.fixture
async def emulator() -> AsyncIterator[ApnsEmulator]:
    emulator = ApnsEmulator(slow_delay=0.2)
    await emulator.start()
    yield emulator
    await emulator.close()


@pytest.fixture
def client_context(emulator: ApnsEmulator, tmp_path: Path) -> ssl.SSLContext:
    """Trusts the emulator and authenticates with a push certificate, so no JWT is needed."""
    certificate = emulator.issue_client_certificate("com.example.app")
    pem = tmp_path / "client.pem"
    pem.write_bytes(certificate.certificate_pem + certificate.private_key_pem)
    context = emulator.client_ssl_context()
    context.load_cert_chain(pem)
    return context


async def bounded(awaitable: Awaitable[T]) -> T:
    """The bound only turns a hang into a failure; nothing is timed."""
    async with asyncio.timeout(15):
        return await awaitable


async def push(client: Http2Client, token: str, body: bytes = PAYLOAD) -> Response:
    return await client.request("POST", f"/3/device/{token}", body=body, index_path=False)


async def test_response_carries_status_headers_and_body(
    emulator: ApnsEmulator, client_context: ssl.SSLContext
) -> None:
    client = Http2Client(emulator.url, ssl_context=client_context)

    accepted = await push(client, "ab" * 32)
    refused = await push(client, "bad-token")
    await client.close()

    assert accepted.status == 200
    assert accepted.body == b""
    assert "apns-id" in accepted.headers
    assert (refused.status, refused.body) == (400, b'{"reason":"BadDeviceToken"}')


async def test_body_larger_than_the_peers_window_is_sent_as_the_window_opens(
    emulator: ApnsEmulator, client_context: ssl.SSLContext
) -> None:
    client = Http2Client(emulator.url, ssl_context=client_context)

    # 200 KB is three times HTTP/2's initial 64 KiB window; APNs reads it all, then refuses.
    response = await bounded(push(client, "ab" * 32, body=b" " * 200_000))
    await client.close()

    assert (response.status, response.body) == (413, b'{"reason":"PayloadTooLarge"}')


async def test_second_connection_opens_when_the_first_has_no_free_stream(
    emulator: ApnsEmulator, client_context: ssl.SSLContext
) -> None:
    client = Http2Client(
        emulator.url, ssl_context=client_context, max_connections=2, max_streams_per_connection=1
    )

    pending = [asyncio.create_task(push(client, f"slow-{i}")) for i in range(2)]
    await bounded(emulator.wait_until_held(2))  # both at once: one stream on each connection
    responses = await bounded(asyncio.gather(*pending))
    await client.close()

    assert [r.status for r in responses] == [200, 200]


async def test_callers_beyond_every_connections_limit_wait_their_turn(
    emulator: ApnsEmulator, client_context: ssl.SSLContext
) -> None:
    client = Http2Client(
        emulator.url, ssl_context=client_context, max_connections=1, max_streams_per_connection=1
    )
    first = asyncio.create_task(push(client, "slow-first"))
    await bounded(emulator.wait_until_held(1))
    given_up = asyncio.create_task(push(client, "ab" * 32))
    waiting = asyncio.create_task(push(client, "cd" * 32))
    await asyncio.sleep(0)  # both are in line now

    given_up.cancel()
    responses = await bounded(asyncio.gather(first, waiting))
    await client.close()

    assert [r.status for r in responses] == [200, 200]
    assert [n.token for n in emulator.accepted] == ["slow-first", "cd" * 32]


async def test_closing_the_client_ends_requests_in_flight_and_in_line(
    emulator: ApnsEmulator, client_context: ssl.SSLContext
) -> None:
    client = Http2Client(
        emulator.url, ssl_context=client_context, max_connections=1, max_streams_per_connection=1
    )
    in_flight = asyncio.create_task(push(client, "slow-in-flight"))
    await bounded(emulator.wait_until_held(1))
    in_line = asyncio.create_task(push(client, "ab" * 32))
    await asyncio.sleep(0)

    await client.close()
    results = await bounded(asyncio.gather(in_flight, in_line, return_exceptions=True))

    assert [type(r) for r in results] == [ConnectionLostError, ConnectionLostError]


async def test_server_without_http2_is_a_connect_error(emulator: ApnsEmulator) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    emulator.ca.issue_cert("127.0.0.1").configure_cert(server_context)  # no ALPN: HTTP/1.1 only
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client = Http2Client(f"https://127.0.0.1:{port}", ssl_context=emulator.client_ssl_context())

    with pytest.raises(ConnectError, match="HTTP/2"):
        await bounded(push(client, "ab" * 32))

    await client.close()
    server.close()
    await server.wait_closed()


async def test_refused_connection_is_a_connect_error(emulator: ApnsEmulator) -> None:
    client = Http2Client(emulator.url, ssl_context=emulator.client_ssl_context())
    await emulator.close()

    with pytest.raises(ConnectError, match="cannot connect"):
        await bounded(push(client, "ab" * 32))
    await client.close()
