"""A small asyncio HTTP/2 client for the push providers (APNs today; FCM and Web Push can share it).

Why our own: httpx wedges when a server lowers its stream limit and costs ~10x the CPU per
request; aioapns never acknowledges received data, so error bodies stall its connections after
64 KiB (reference/providers.md §0, §8.2). This client keeps a few long-lived connections per
origin and multiplexes many streams on each; it follows SETTINGS_MAX_CONCURRENT_STREAMS even when
the server lowers it mid-connection (callers queue for a free stream, the read path never
blocks), acknowledges every DATA frame, lets the streams a server already took finish after a
GOAWAY, and resets the stream of a request that timed out or whose caller gave up, so that
neither a slow server nor a lost answer ever holds a caller or a stream for good.

h2 is configured the way reference/perf-limits.md measured fastest: outbound headers are neither
normalised nor validated (callers pass lower-case bytes; normalisation would also mark
`authorization` never-indexed and Huffman-encode the same JWT on every request), while values
that change on every request can be sent never-indexed (`unindexed`, `index_path=False`) so they
don't evict the repeated headers from the 4 KiB HPACK table. Beyond that measurement, three
per-request costs h2 has by default are cut (`_LeanH2Connection`): headers are encoded and
decoded by clarion.channels.hpack_codec (each representation a lookup or two away),
inbound headers are not re-validated (the only ones read are parsed defensively anyway), and
the open streams are not counted on every new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from h2.events import Event
from h2.settings import SettingCodes
from hpack import NeverIndexedHeaderTuple
from hyperframe.frame import Frame, GoAwayFrame

from clarion.channels.hpack_codec import HeaderDecoder, HeaderEncoder
from clarion.destinations import PERMISSIVE, DestinationPolicy

Header = tuple[bytes, bytes]

_CONFIG = h2.config.H2Configuration(
    client_side=True,
    header_encoding=None,
    normalize_outbound_headers=False,
    validate_outbound_headers=False,
    normalize_inbound_headers=False,
    validate_inbound_headers=False,
)
# h2 walks every stream of the connection to count the open ones before each new stream, and
# only that walk forgets closed streams. `_Connection` keeps its own count against the server's
# limit (`free_streams`), so the walk runs once per this many new streams, to forget.
_STREAM_SWEEP_EVERY = 64

# Stream ids are 31-bit and never reused: a connection that sends thousands of requests a second
# runs out after a few days, so it retires itself a little before and the pool opens a new one.
_LAST_STREAM_ID = 2**31 - 1_000


def unindexed(name: bytes, value: bytes) -> Header:
    """A header whose value changes on every request: keep it out of the HPACK table."""
    return NeverIndexedHeaderTuple(name, value)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Http2Error(Exception):
    """The request got no HTTP response. All of these are worth retrying later."""

    def __init__(self, message: str, *, debug_data: bytes = b"") -> None:
        super().__init__(message)
        # What the server put in its GOAWAY frame, if anything (APNs sends `{"reason": …}`).
        self.debug_data = debug_data


class ConnectError(Http2Error):
    """No connection could be opened (refused, TLS failure, server without HTTP/2)."""


class ConnectionLostError(Http2Error):
    """The connection ended before the response did; the server may have processed the request."""


class StreamRefusedError(Http2Error):
    """The server says it never processed the request (GOAWAY, REFUSED_STREAM): safe to resend."""


class StreamResetError(Http2Error):
    """The server reset the stream with an error."""


class RequestTimeoutError(Http2Error, TimeoutError):
    """No whole response within the client's `request_timeout`; the stream was reset."""


class Http2Client:
    """Requests to one origin over a few long-lived HTTP/2 connections.

    A second connection is opened only when every open one has no free stream, up to
    `max_connections`; `max_streams_per_connection` caps what a server allows because h2's cost
    per new stream grows with the number open on the connection (perf-limits.md).
    """

    def __init__(
        self,
        origin: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 4,
        max_streams_per_connection: int = 100,
        connect_timeout: float = 10.0,
        request_timeout: float | None = None,
        destinations: DestinationPolicy = PERMISSIVE,
    ) -> None:
        """`request_timeout` bounds each request, waiting for a stream included, with
        `RequestTimeoutError`: kept per stream and checked by one timer per connection, it costs
        a request nothing (`asyncio.timeout()` around each costs ~6 µs, 3 % of a send)."""
        url = urlsplit(origin)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"not an https:// origin: {origin!r}")
        self.origin = origin
        self._host = url.hostname
        self._port = url.port or 443
        self._authority = url.netloc.encode()
        self._ssl = ssl_context or ssl.create_default_context()
        self._ssl.set_alpn_protocols(["h2"])
        self._max_connections = max_connections
        self._max_streams = max_streams_per_connection
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._destinations = destinations
        self._connections: list[_Connection] = []  # open and accepting new streams
        self._retired: set[_Connection] = set()  # finishing their streams after a GOAWAY
        self._connecting: asyncio.Task[_Connection] | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[Header] = (),
        body: bytes = b"",
        index_path: bool = True,
    ) -> Response:
        """Send one request and wait for its whole response, or raise an `Http2Error`.

        The client's `request_timeout`, if any, bounds it; a caller may also cancel it (e.g.
        `asyncio.timeout()`): either way its stream is reset, which frees the stream for the next
        caller. Pass `index_path=False` when the path is unique to this request (a device token
        in it).
        """
        deadline = None
        if self._request_timeout is not None:
            deadline = asyncio.get_running_loop().time() + self._request_timeout
        connection = self._free_connection()
        if connection is None:
            try:
                async with asyncio.timeout_at(deadline):
                    connection = await self._connection_with_free_stream()
            except TimeoutError:
                raise RequestTimeoutError("no free stream within the request timeout") from None
        stream = connection.start(
            method.encode(), path.encode(), headers, body, index_path=index_path, deadline=deadline
        )
        try:
            return await stream.response
        finally:
            connection.abandon(stream)

    async def close(self) -> None:
        """Close every connection; requests waiting or in flight fail with ConnectionLostError."""
        self._closed = True
        connections = [*self._connections, *self._retired]
        for connection in connections:
            connection.close()
        self._wake(len(self._waiters))
        if connections:
            _, unfinished = await asyncio.wait([c.closed for c in connections], timeout=1.0)
            for connection in connections:
                if connection.closed in unfinished:
                    connection.abort()

    def _free_connection(self) -> _Connection | None:
        """A connection that can open a stream now, if there is one (no coroutine: the usual
        case, once the pool is warm)."""
        if not self._closed:
            for connection in self._connections:
                if connection.free_streams > 0:
                    return connection
        return None

    async def _connection_with_free_stream(self) -> _Connection:
        """A connection that can open a stream now; waits in line while all of them are full."""
        while True:
            if self._closed:
                raise ConnectionLostError("the client is closed")
            connection = self._free_connection()
            if connection is not None:
                return connection
            if self._connecting is not None:
                await asyncio.shield(self._connecting)
            elif len(self._connections) < self._max_connections:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            else:
                await self._wait_for_free_stream()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(
            authority=self._authority,
            max_streams=self._max_streams,
            on_streams_freed=self._wake,
            on_retired=self._retire,
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._destinations.allow_private:
                    await loop.create_connection(
                        lambda: connection, self._host, self._port, ssl=self._ssl
                    )
                else:
                    await self._connect_checked(connection)
                await connection.ready
        except (OSError, TimeoutError) as error:
            if not connection.ready.done():
                connection.ready.cancel()
            connection.abort()
            raise ConnectError(f"cannot connect to {self.origin}: {error or 'timeout'}") from error
        finally:
            self._connecting = None
        if self._closed:
            connection.close()
            raise ConnectionLostError("the client is closed")
        self._connections.append(connection)
        return connection

    async def _connect_checked(self, connection: _Connection) -> None:
        """Connect to the host's addresses the destination policy checked (raising
        DestinationNotAllowedError if it refuses one), never to a second lookup's answer;
        TLS still verifies the certificate for, and sends SNI of, the host name."""
        loop = asyncio.get_running_loop()
        addresses = await self._destinations.resolve(self._host, self._port)
        for index, address in enumerate(addresses):
            try:
                await loop.create_connection(
                    lambda: connection,
                    address,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host,
                )
                return
            except OSError:
                if index == len(addresses) - 1:
                    raise

    async def _wait_for_free_stream(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if not waiter.cancelled():
                self._wake(1)  # woken, then cancelled: hand the free stream to the next in line
            raise

    def _wake(self, count: int) -> None:
        while count > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    def _retire(self, connection: _Connection) -> None:
        """Stop choosing `connection`; everyone waiting looks again (maybe at a new connection)."""
        with contextlib.suppress(ValueError):
            self._connections.remove(connection)
        if connection.closed.done():
            self._retired.discard(connection)
        else:
            self._retired.add(connection)
        self._wake(len(self._waiters))


class _Stream:
    __slots__ = ("body", "deadline", "headers", "id", "response", "unsent")

    def __init__(
        self,
        stream_id: int,
        response: asyncio.Future[Response],
        body: bytes,
        deadline: float | None,
    ) -> None:
        self.id = stream_id
        self.response = response
        self.deadline = deadline  # loop time by which the response must be whole
        self.unsent = body  # request body still waiting for flow-control window
        self.headers: list[Header] = []
        self.body = bytearray()

    def finish(self) -> None:
        if self.response.done():  # the caller was cancelled meanwhile
            return
        status = 0
        headers: dict[str, str] = {}
        for name, value in self.headers:
            if name == b":status":
                status = int(value)
            else:
                headers[name.decode("latin-1")] = value.decode("latin-1")
        self.response.set_result(Response(status, headers, bytes(self.body)))

    def fail(self, error: Http2Error) -> None:
        if not self.response.done():
            self.response.set_exception(error)


class _LeanH2Connection(h2.connection.H2Connection):
    """h2 that lets the server finish the streams it kept after sending GOAWAY, without the
    per-request costs the module docstring lists.

    Plain h2 closes its state machine on any GOAWAY and then rejects the responses the server
    still owes (python-hyper/h2#1181), although RFC 9113 §6.8 lets every stream up to
    `last_stream_id` complete. Here a GOAWAY only reports `ConnectionTerminated`; `_Connection`
    itself stops opening streams.
    """

    # How many closed streams h2 remembers, to tell a late frame on a stream it reset from a
    # protocol error. h2's 65,536 is ~25 MB over a pool's connections at thousands of
    # requests a second; 8,192 still covers several seconds of them, far more than a round trip.
    MAX_CLOSED_STREAMS = 2**13

    def __init__(self) -> None:
        super().__init__(config=_CONFIG)
        # hpack's Encoder and Decoder API, at a fraction of the CPU.
        self.encoder = HeaderEncoder()  # type: ignore[assignment]
        self.decoder = HeaderDecoder()  # type: ignore[assignment]
        self.decoder.max_header_list_size = self.DEFAULT_MAX_HEADER_LIST_SIZE
        self._streams_opened = 0

    @property
    def open_outbound_streams(self) -> int:
        """0 but on every `_STREAM_SWEEP_EVERY`th call (each new stream makes one): h2's limit
        check then always passes, as `_Connection` opens none beyond `free_streams`."""
        self._streams_opened += 1
        if self._streams_opened % _STREAM_SWEEP_EVERY:
            return 0
        return self._open_streams(int(self.config.client_side))

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: the h2 state machine, its socket and the streams in flight on it."""

    def __init__(
        self,
        *,
        authority: bytes,
        max_streams: int,
        on_streams_freed: Callable[[int], None],
        on_retired: Callable[[_Connection], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._authority = authority
        self._max_streams = max_streams
        self._on_streams_freed = on_streams_freed
        self._on_retired = on_retired
        self._h2 = _LeanH2Connection()
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, _Stream] = {}  # bodies waiting for flow-control window
        self._accepting = False
        self._flush_scheduled = False
        # Checks the streams' deadlines while any stream has one.
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._goaway_data = b""
        # Resolved by the server's first SETTINGS: only then is its stream limit known.
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    @property
    def free_streams(self) -> int:
        if not self._accepting:
            return 0
        server_limit = self._h2.remote_settings.max_concurrent_streams
        return min(server_limit, self._max_streams) - len(self._streams)

    def start(
        self,
        method: bytes,
        path: bytes,
        headers: Sequence[Header],
        body: bytes,
        *,
        index_path: bool,
        deadline: float | None = None,
    ) -> _Stream:
        """Open a stream for one request; the caller has checked `free_streams`."""
        stream_id = self._h2.get_next_available_stream_id()
        request_headers: list[Header] = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", self._authority),
            (b":path", path) if index_path else unindexed(b":path", path),
            *headers,
        ]
        self._h2.send_headers(stream_id, request_headers, end_stream=not body)
        stream = _Stream(stream_id, self._loop.create_future(), body, deadline)
        self._streams[stream_id] = stream
        if deadline is not None and self._deadline_timer is None:
            self._deadline_timer = self._loop.call_at(deadline, self._expire_streams)
        if body:
            self._send_body(stream)
        self._schedule_flush()
        if stream_id >= _LAST_STREAM_ID:
            self._retire()
        return stream

    def abandon(self, stream: _Stream) -> None:
        """The caller is done with `stream`: if it is still open (timeout, cancel), reset it."""
        if self._streams.pop(stream.id, None) is None:
            return
        self._blocked.pop(stream.id, None)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.reset_stream(stream.id, ErrorCodes.CANCEL)
        self._schedule_flush()
        self._stream_finished()

    def _expire_streams(self) -> None:
        """Reset the streams past their deadline, failing their requests; then sleep until the
        earliest deadline left. A stream's deadline is set when it opens, so a connection's
        timer fires about once per request timeout, however many requests it carries."""
        self._deadline_timer = None
        now = self._loop.time()
        expired = [
            stream
            for stream in self._streams.values()
            if stream.deadline is not None and stream.deadline <= now
        ]
        for stream in expired:  # a list first: abandoning a stream takes it out of `_streams`
            self.abandon(stream)
            stream.fail(RequestTimeoutError("no whole response within the request timeout"))
        upcoming = [s.deadline for s in self._streams.values() if s.deadline is not None]
        if upcoming:
            self._deadline_timer = self._loop.call_at(min(upcoming), self._expire_streams)

    def close(self) -> None:
        """Say goodbye with a GOAWAY and close; streams in flight fail as ConnectionLostError."""
        self._accepting = False
        if self._transport is None or self._transport.is_closing():
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.close_connection()
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            self.ready.set_exception(ConnectError("the server does not offer HTTP/2 (ALPN h2)"))
            transport.close()
            return
        self._h2.initiate_connection()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            self._accepting = False
            self._flush()  # h2 has queued a GOAWAY that tells the server why
            self._fail_all(ConnectionLostError(f"HTTP/2 protocol error: {error}"))
            self.abort()
            return
        for event in events:
            match event:
                case h2.events.ResponseReceived():
                    self._on_response(event)
                case h2.events.DataReceived():
                    self._on_data(event)
                case h2.events.StreamEnded():
                    self._on_stream_ended(event)
                case h2.events.StreamReset():
                    self._on_stream_reset(event)
                case h2.events.WindowUpdated():
                    self._send_blocked_bodies()
                case h2.events.RemoteSettingsChanged():
                    self._on_settings(event)
                case h2.events.ConnectionTerminated():
                    self._on_goaway(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._accepting = False
        if not self.ready.done():
            self.ready.set_exception(ConnectError("connection closed during the HTTP/2 handshake"))
        reason = f"connection lost: {exc}" if exc else "connection closed by the server"
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._fail_all(ConnectionLostError(reason, debug_data=self._goaway_data))
        self.closed.set_result(None)
        self._on_retired(self)

    # h2 events

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream.headers = event.headers

    def _on_data(self, event: h2.events.DataReceived) -> None:
        # Hand the window back at once, even for streams we gave up on: the connection-level
        # window is shared, and forgetting this is what stalls aioapns after 64 KiB.
        self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream.body += event.data

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self._streams.pop(event.stream_id, None)
        if stream is None:
            return
        if stream.unsent:  # answered before we sent the whole body: stop sending it
            self._blocked.pop(stream.id, None)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(stream.id, ErrorCodes.NO_ERROR)
        stream.finish()
        self._stream_finished()

    def _on_stream_reset(self, event: h2.events.StreamReset) -> None:
        stream = self._streams.pop(event.stream_id, None)
        if stream is None:
            return
        self._blocked.pop(stream.id, None)
        if event.error_code == ErrorCodes.REFUSED_STREAM:
            stream.fail(StreamRefusedError("the server refused the stream"))
        else:
            stream.fail(StreamResetError(f"the server reset the stream ({event.error_code!r})"))
        self._stream_finished()

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        if not self.ready.done():
            self._accepting = True
            self.ready.set_result(None)
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._send_blocked_bodies()
        if SettingCodes.MAX_CONCURRENT_STREAMS in event.changed_settings and self.free_streams > 0:
            self._on_streams_freed(self.free_streams)

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        """No new streams here; those above `last_stream_id` were never processed, the rest may
        still complete (RFC 9113 §6.8)."""
        self._goaway_data = event.additional_data or b""
        last_stream_id = event.last_stream_id or 0
        for stream_id in [i for i in self._streams if i > last_stream_id]:
            self._blocked.pop(stream_id, None)
            self._streams.pop(stream_id).fail(
                StreamRefusedError("the server is going away", debug_data=self._goaway_data)
            )
        self._retire()

    # helpers

    def _send_body(self, stream: _Stream) -> None:
        """Send as much of the body as the flow-control windows allow; the rest waits."""
        while stream.unsent:
            size = min(
                len(stream.unsent),
                self._h2.local_flow_control_window(stream.id),
                self._h2.max_outbound_frame_size,
            )
            if size <= 0:
                self._blocked[stream.id] = stream
                return
            chunk, stream.unsent = stream.unsent[:size], stream.unsent[size:]
            self._h2.send_data(stream.id, chunk, end_stream=not stream.unsent)
        self._blocked.pop(stream.id, None)

    def _send_blocked_bodies(self) -> None:
        for stream in list(self._blocked.values()):
            self._send_body(stream)

    def _stream_finished(self) -> None:
        if self._accepting:
            self._on_streams_freed(1)
        elif not self._streams:
            self.close()

    def _retire(self) -> None:
        """Open no more streams here; close once the last one in flight is done."""
        self._accepting = False
        self._on_retired(self)
        if not self._streams:
            self.close()

    def _fail_all(self, error: Http2Error) -> None:
        streams = list(self._streams.values())
        self._streams.clear()
        self._blocked.clear()
        for stream in streams:
            stream.fail(error)

    def _schedule_flush(self) -> None:
        """Write once per event-loop turn: concurrent requests share one socket write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
