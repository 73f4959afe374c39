"""An APNs emulator: Apple's provider API over HTTP/2 and TLS on a local port.

It answers the way reference/providers.md §1 documents: `POST /3/device/<token>`, the header
checks with Apple's exact reasons, ES256 provider tokens verified against registered keys (or a
TLS client certificate), `{"reason": …}` error bodies sent within the client's flow-control
window, one stream per connection until the first authenticated request, GOAWAY on demand. The
APNs channel is tested against it instead of a mock, and `clarion serve --sandbox` sends to it.

Outcomes per device token: `scripts[token] = Reply(...)` wins; otherwise the sandbox conventions
apply (`dead…` → 410 Unregistered, `bad…` → 400 BadDeviceToken, `slow…` → accepted after
`slow_delay` seconds); anything else is accepted. Tokens need not be hex, so that sandbox users
can type them. Accepted notifications are recorded in `accepted`; `keep` bounds every record
(and the memory of `apns-id`s seen) to the latest that many, for a long-running sandbox.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import jwt
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hpack import NeverIndexedHeaderTuple
from hyperframe.frame import GoAwayFrame

from clarion.emulators.records import Recent, Records

# providers.md §1.3: the values Apple accepts in `apns-push-type` and `apns-priority`.
PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
    }
)
PRIORITIES = frozenset({"1", "5", "10"})
MAX_COLLAPSE_ID_BYTES = 64
# providers.md §1.4: payload limits.
MAX_PAYLOAD_BYTES = 4096
MAX_VOIP_PAYLOAD_BYTES = 5120
# providers.md §1.2: APNs refuses provider tokens issued more than an hour ago.
PROVIDER_TOKEN_MAX_AGE = 3600.0
# providers.md §1.2: Apple's minimum interval between provider token changes on a connection.
PROVIDER_TOKEN_UPDATE_INTERVAL = 20 * 60.0

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DEVICE_PATH = "/3/device/"
# Header checks are the emulator's own (`_check`, with APNs' reasons); h2's generic validation
# would only double the CPU per request, which matters when it runs inside `clarion --sandbox`.
_PROTOCOL = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    validate_inbound_headers=False,
    normalize_outbound_headers=False,
    validate_outbound_headers=False,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A scripted answer for one device token."""

    status: int = 200
    reason: str | None = None
    # Seconds before answering; `math.inf` never answers (the client's timeout must fire).
    delay: float = 0.0
    # APNs itself sends no Retry-After; scripts can add one to test that clients honour it.
    retry_after: int | None = None


ACCEPT = Reply()


@dataclass(frozen=True, slots=True)
class Notification:
    """An accepted request: what the device would receive, with the headers it was sent with."""

    token: str
    headers: dict[str, str]
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A push certificate for certificate-based auth, as PEM (what a `.p12` export holds)."""

    certificate_pem: bytes
    private_key_pem: bytes


@dataclass(frozen=True, slots=True)
class _SigningKey:
    key_id: str
    team_id: str
    public_key: ec.EllipticCurvePublicKey
    environments: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Exchange:
    """A request judged, waiting to be answered."""

    stream_id: int
    apns_id: str
    reply: Reply
    notification: Notification | None


class _RefusedError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ApnsEmulator:
    """APNs on `url` (`start()` first). Trust `ca` (or use `client_ssl_context()`), register the
    signing keys whose tokens it accepts, script outcomes in `scripts`, read what it received in
    `accepted`; `clock` lets tests age provider tokens without waiting. `keep` is how many of
    the latest records of each kind it keeps (None: all, what tests want)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        environment: str = "sandbox",
        slow_delay: float = 5.0,
        max_concurrent_streams: int = 1000,
        token_update_interval: float = PROVIDER_TOKEN_UPDATE_INTERVAL,
        lower_limit_after_errors: bool = False,
        clock: Callable[[], float] = time.time,
        keep: int | None = None,
    ) -> None:
        if environment not in ("sandbox", "production"):
            raise ValueError(f"environment must be 'sandbox' or 'production', not {environment!r}")
        self.host = host
        self.port = port
        self.environment = environment
        self.slow_delay = slow_delay
        self.max_concurrent_streams = max_concurrent_streams
        self.token_update_interval = token_update_interval
        # Radar 27870881: after a rejected notification APNs drops the stream limit to 1 and
        # restores it after the next success (providers.md §1.6).
        self.lower_limit_after_errors = lower_limit_after_errors
        self.clock = clock
        self.ca = trustme.CA()
        # What bounds each piece of state: `scripts` and `_keys` hold only what the caller put
        # there; the records and the two `Recent` maps hold at most `keep` entries; connections,
        # held answers and their waiters are dropped once closed, answered or woken.
        self.scripts: dict[str, Reply] = {}
        self.requests = 0  # every complete request received, whatever its answer
        self.accepted: Records[Notification] = Records(maxlen=keep)
        self.duplicate_ids: Records[str] = Records(maxlen=keep)  # `apns-id`s accepted again
        # Each distinct JWT that authenticated, in order.
        self.provider_tokens: Records[str] = Records(maxlen=keep)
        # HTTP/2 violations by clients (stream limit…).
        self.protocol_errors: Records[str] = Records(maxlen=keep)
        self._keys: dict[str, _SigningKey] = {}
        # Provider tokens whose signature checked out; one forgotten is verified again.
        self._verified: Recent[str, tuple[_SigningKey, int]] = Recent(keep)
        # The `apns-id`s of the latest `keep` accepted notifications: a duplicate of an older
        # one is no longer flagged.
        self._accepted_ids: Recent[str, None] = Recent(keep)
        self._connections: set[_ApnsConnection] = set()
        self._held = 0
        self._held_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ApnsConnection(self), self.host, self.port, ssl=self._server_ssl_context()
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this emulator's certificate (ALPN h2 set)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        context.set_alpn_protocols(["h2"])
        return context

    def register_key(
        self,
        *,
        key_id: str,
        team_id: str,
        public_key_pem: bytes,
        environments: Iterable[str] = ("sandbox", "production"),
    ) -> None:
        """Accept provider tokens signed by this key (an APNs `.p8` key's public half)."""
        public_key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise ValueError("APNs signing keys are P-256 EC keys")
        self._keys[key_id] = _SigningKey(key_id, team_id, public_key, frozenset(environments))

    def issue_client_certificate(self, topic: str) -> ClientCertificate:
        """A push certificate for `topic` (its subject UID), trusted by this emulator."""
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_certificate = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.USER_ID, topic),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {topic}"),
            ]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return ClientCertificate(
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    def set_max_concurrent_streams(self, limit: int) -> None:
        """Change the stream limit, on open connections too (APNs does not promise a number)."""
        self.max_concurrent_streams = limit
        for connection in self._connections:
            connection.advertise_full_limit()

    def goaway(self, reason: str = "Shutdown", *, last_stream_id: int | None = None) -> None:
        """GOAWAY `{"reason": …}` on every connection, as APNs does before closing one.

        Requests up to `last_stream_id` (default: every one received so far) are still answered;
        later ones are dropped unanswered, and each connection closes once it owes nothing.
        """
        for connection in list(self._connections):
            connection.go_away(reason, last_stream_id)

    def drop_connections(self) -> None:
        """Reset every TCP connection at once, answered or not."""
        for connection in list(self._connections):
            connection.abort()

    @property
    def held(self) -> int:
        """Requests judged but not answered yet (slow or never-answered tokens)."""
        return self._held

    async def wait_until_held(self, count: int) -> None:
        """Return once at least `count` requests are being held back."""
        if self._held >= count:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._held_waiters.append((count, waiter))
        await waiter

    # What the connections share: judging requests, keys, records.

    def _judge(
        self,
        connection: _ApnsConnection,
        stream_id: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> _Exchange:
        self.requests += 1
        fields: dict[str, str] = {}
        duplicates = False
        for name, value in headers:
            key = name.decode("latin-1")
            duplicates = duplicates or key in fields
            fields[key] = value.decode("latin-1")
        apns_id = fields.get("apns-id", "")
        if not _UUID.fullmatch(apns_id):
            apns_id = str(uuid.uuid4())
        try:
            token = self._check(connection, fields, body, duplicates=duplicates)
        except _RefusedError as refusal:
            reply = Reply(status=refusal.status, reason=refusal.reason)
            return _Exchange(stream_id, apns_id, reply, None)
        reply = self._outcome(token)
        notification = None
        if reply.status == 200:
            received = {k: v for k, v in fields.items() if not k.startswith(":")}
            notification = Notification(token, received, body)
        return _Exchange(stream_id, apns_id, reply, notification)

    def _check(
        self, connection: _ApnsConnection, fields: dict[str, str], body: bytes, *, duplicates: bool
    ) -> str:
        """The device token of a well-formed request; raises `_RefusedError` as APNs would.

        The checks follow providers.md §1.3 to §1.5; Apple does not document their order.
        """
        if fields.get(":method") != "POST":
            raise _RefusedError(405, "MethodNotAllowed")
        path = fields.get(":path", "")
        if not path.startswith(_DEVICE_PATH) or "/" in path.removeprefix(_DEVICE_PATH):
            raise _RefusedError(404, "BadPath")
        token = path.removeprefix(_DEVICE_PATH)
        if not token:
            raise _RefusedError(400, "MissingDeviceToken")
        if duplicates:
            raise _RefusedError(400, "DuplicateHeaders")
        connection.authenticate(fields.get("authorization"))
        topic = fields.get("apns-topic") or connection.certificate_topic
        if topic is None:
            raise _RefusedError(400, "MissingTopic")
        if not connection.may_push_to(topic):
            raise _RefusedError(400, "TopicDisallowed")
        push_type = fields.get("apns-push-type", "alert")
        if push_type not in PUSH_TYPES:
            raise _RefusedError(400, "InvalidPushType")
        priority = fields.get("apns-priority", "10")
        if priority not in PRIORITIES or (push_type == "background" and priority == "10"):
            raise _RefusedError(400, "BadPriority")
        if not fields.get("apns-expiration", "0").isdigit():
            raise _RefusedError(400, "BadExpirationDate")
        if "apns-id" in fields and not _UUID.fullmatch(fields["apns-id"]):
            raise _RefusedError(400, "BadMessageId")
        if len(fields.get("apns-collapse-id", "").encode()) > MAX_COLLAPSE_ID_BYTES:
            raise _RefusedError(400, "BadCollapseId")
        if not body:
            raise _RefusedError(400, "PayloadEmpty")
        limit = MAX_VOIP_PAYLOAD_BYTES if push_type == "voip" else MAX_PAYLOAD_BYTES
        if len(body) > limit:
            raise _RefusedError(413, "PayloadTooLarge")
        return token

    def _outcome(self, token: str) -> Reply:
        if token in self.scripts:
            return self.scripts[token]
        if token.startswith("dead"):
            return Reply(status=410, reason="Unregistered")
        if token.startswith("bad"):
            return Reply(status=400, reason="BadDeviceToken")
        if token.startswith("slow"):
            return Reply(delay=self.slow_delay)
        return ACCEPT

    def _verify_provider_token(self, token: str) -> _SigningKey:
        """The key that signed a valid provider token; raises `_RefusedError` otherwise."""
        verified = self._verified.get(token)
        if verified is None:
            try:
                key = self._keys[jwt.get_unverified_header(token)["kid"]]
                claims = jwt.decode(
                    token,
                    key.public_key,
                    algorithms=["ES256"],
                    options={"require": ["iss", "iat"], "verify_iat": False},
                )
            except (jwt.PyJWTError, KeyError):
                raise _RefusedError(403, "InvalidProviderToken") from None
            if claims["iss"] != key.team_id or not isinstance(claims["iat"], int):
                raise _RefusedError(403, "InvalidProviderToken")
            verified = (key, claims["iat"])
            self._verified[token] = verified
        key, issued_at = verified
        if self.environment not in key.environments:
            raise _RefusedError(403, "BadEnvironmentKeyInToken")
        age = self.clock() - issued_at
        if age > PROVIDER_TOKEN_MAX_AGE:
            raise _RefusedError(403, "ExpiredProviderToken")
        if age < -60:  # issued in the future
            raise _RefusedError(403, "InvalidProviderToken")
        return key

    def _new_provider_token(self, token: str) -> None:
        if token not in self.provider_tokens:
            self.provider_tokens.append(token)

    def _record(self, notification: Notification, apns_id: str) -> None:
        if apns_id in self._accepted_ids:
            self.duplicate_ids.append(apns_id)
        self._accepted_ids[apns_id] = None
        self.accepted.append(notification)

    def _count_held(self, change: int) -> None:
        self._held += change
        for entry in [e for e in self._held_waiters if self._held >= e[0]]:
            self._held_waiters.remove(entry)
            if not entry[1].done():
                entry[1].set_result(None)

    def _server_ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(self.host, "localhost").configure_cert(context)
        # Client certificates are optional: token-auth clients connect without one.
        self.ca.configure_trust(context)
        context.verify_mode = ssl.CERT_OPTIONAL
        context.set_alpn_protocols(["h2"])
        return context


class _ApnsConnection(asyncio.Protocol):
    """One client connection: its h2 state, its authentication and the answers it is owed."""

    def __init__(self, emulator: ApnsEmulator) -> None:
        self._emulator = emulator
        self._loop = asyncio.get_running_loop()
        self._h2 = h2.connection.H2Connection(config=_PROTOCOL)
        self._transport: asyncio.Transport | None = None
        self._requests: dict[int, tuple[list[tuple[bytes, bytes]], bytearray]] = {}
        self._held: dict[int, asyncio.TimerHandle | None] = {}
        self._unsent: dict[int, bytes] = {}  # error bodies waiting for flow-control window
        self._goaway_last_stream_id: int | None = None
        self.certificate_topic: str | None = None
        self._token: str | None = None
        self._token_since = 0.0
        self._signer: tuple[str, str] | None = None  # (key id, team id) of the first token
        self._limit = 0

    # Authentication and stream limits (providers.md §1.2, §1.6).

    def authenticate(self, authorization: str | None) -> None:
        """Let the request through or raise `_RefusedError` with APNs' reason."""
        if self.certificate_topic is not None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if not token:
            raise _RefusedError(403, "MissingProviderToken")
        if scheme.lower() != "bearer":
            raise _RefusedError(403, "InvalidProviderToken")
        key = self._emulator._verify_provider_token(token)
        if self._signer not in (None, (key.key_id, key.team_id)):
            raise _RefusedError(403, "UnrelatedKeyIdInToken")
        if token != self._token:
            now = self._emulator.clock()
            interval = self._emulator.token_update_interval
            if self._token is not None and now - self._token_since < interval:
                raise _RefusedError(429, "TooManyProviderTokenUpdates")
            self._token, self._token_since = token, now
            self._signer = (key.key_id, key.team_id)
            self._emulator._new_provider_token(token)
            self.advertise_full_limit()

    def may_push_to(self, topic: str) -> bool:
        if self.certificate_topic is None:
            return True  # a team key signs for every app of the team
        return topic == self.certificate_topic or topic.startswith(self.certificate_topic + ".")

    def advertise_full_limit(self) -> None:
        """The emulator's full stream limit, once this connection has authenticated."""
        if self._token is not None or self.certificate_topic is not None:
            self._advertise(self._emulator.max_concurrent_streams)

    def _advertise(self, limit: int) -> None:
        if limit != self._limit and self._transport is not None:
            self._limit = limit
            self._h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: limit})
            self._flush()

    # Shutting down.

    def go_away(self, reason: str, last_stream_id: int | None) -> None:
        if self._transport is None or self._goaway_last_stream_id is not None:
            return
        last = self._h2.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        self._goaway_last_stream_id = last
        self._flush()
        # Written by hand: h2 would refuse to send the answers still owed after its own GOAWAY
        # (python-hyper/h2#1181). The frame carries no headers, so HPACK state is unaffected.
        frame = GoAwayFrame(
            stream_id=0,
            last_stream_id=last,
            error_code=ErrorCodes.NO_ERROR,
            additional_data=json.dumps({"reason": reason}, separators=(",", ":")).encode(),
        )
        self._transport.write(frame.serialize())
        for stream_id in [s for s in self._held if s > last]:
            self._release(stream_id)
        for stream_id in [s for s in self._requests if s > last]:
            del self._requests[stream_id]
        self._close_when_done()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            transport.close()  # APNs refuses HTTP/1.1 at connection time
            return
        self.certificate_topic = _certificate_topic(ssl_object.getpeercert())
        # With token auth APNs allows one stream until a request carries a valid token.
        self._limit = 1 if self.certificate_topic is None else self._emulator.max_concurrent_streams
        self._h2.local_settings = h2.settings.Settings(
            client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: self._limit}
        )
        self._h2.initiate_connection()
        self._flush()
        self._emulator._connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            self._emulator.protocol_errors.append(str(error))
            self._flush()  # h2 queued a GOAWAY saying why
            self.abort()
            return
        for event in events:
            match event:
                case h2.events.RequestReceived():
                    self._on_request(event)
                case h2.events.DataReceived():
                    self._h2.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                    if event.stream_id in self._requests:
                        self._requests[event.stream_id][1].extend(event.data)
                case h2.events.StreamEnded():
                    self._on_request_complete(event.stream_id)
                case h2.events.StreamReset():
                    self._requests.pop(event.stream_id, None)
                    self._unsent.pop(event.stream_id, None)
                    if event.stream_id in self._held:
                        self._release(event.stream_id)
                case h2.events.WindowUpdated() | h2.events.RemoteSettingsChanged():
                    self._send_unsent_bodies()
                case h2.events.ConnectionTerminated():
                    self.abort()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._emulator._connections.discard(self)
        for stream_id in list(self._held):
            self._release(stream_id)

    # Requests and answers.

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        if (
            self._goaway_last_stream_id is not None
            and event.stream_id > self._goaway_last_stream_id
        ):
            self._h2.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self._requests[event.stream_id] = (event.headers, bytearray())

    def _on_request_complete(self, stream_id: int) -> None:
        request = self._requests.pop(stream_id, None)
        if request is None:
            return
        headers, body = request
        exchange = self._emulator._judge(self, stream_id, headers, bytes(body))
        delay = exchange.reply.delay
        if delay == 0:
            self._answer(exchange)
            return
        handle = None if math.isinf(delay) else self._loop.call_later(delay, self._answer, exchange)
        self._held[stream_id] = handle
        self._emulator._count_held(+1)

    def _answer(self, exchange: _Exchange) -> None:
        if exchange.stream_id in self._held:
            self._release(exchange.stream_id)
        reply = exchange.reply
        headers: list[tuple[bytes, bytes]] = [
            (b":status", str(reply.status).encode()),
            NeverIndexedHeaderTuple(b"apns-id", exchange.apns_id.encode()),
        ]
        if self._emulator.environment == "sandbox":
            unique_id = str(uuid.uuid4()).encode()
            headers.append(NeverIndexedHeaderTuple(b"apns-unique-id", unique_id))
        if reply.retry_after is not None:
            headers.append((b"retry-after", str(reply.retry_after).encode()))
        try:
            if exchange.notification is not None:
                self._h2.send_headers(exchange.stream_id, headers, end_stream=True)
                self._emulator._record(exchange.notification, exchange.apns_id)
            else:
                self._h2.send_headers(exchange.stream_id, headers)
                self._unsent[exchange.stream_id] = self._error_body(reply)
                self._send_unsent_bodies()
        except h2.exceptions.StreamClosedError:
            return  # the client gave up on this stream
        if self._emulator.lower_limit_after_errors:
            if reply.status == 200:
                self.advertise_full_limit()
            else:
                self._advertise(1)
        self._flush()
        self._close_when_done()

    def _error_body(self, reply: Reply) -> bytes:
        body: dict[str, Any] = {"reason": reply.reason}
        if reply.status == 410:  # when APNs last confirmed the token invalid, in milliseconds
            body["timestamp"] = int(self._emulator.clock() * 1000)
        return json.dumps(body, separators=(",", ":")).encode()

    def _send_unsent_bodies(self) -> None:
        """Send error bodies only as far as the client's flow-control windows allow."""
        for stream_id, body in list(self._unsent.items()):
            window = min(
                self._h2.local_flow_control_window(stream_id), self._h2.max_outbound_frame_size
            )
            chunk, rest = body[:window], body[window:]
            if chunk:
                self._h2.send_data(stream_id, chunk, end_stream=not rest)
            if rest:
                self._unsent[stream_id] = rest
            else:
                del self._unsent[stream_id]
        self._close_when_done()

    def _release(self, stream_id: int) -> None:
        handle = self._held.pop(stream_id)
        if handle is not None:
            handle.cancel()
        self._emulator._count_held(-1)

    def _close_when_done(self) -> None:
        if self._goaway_last_stream_id is None or self._held or self._unsent:
            return
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


def _certificate_topic(peer: Any) -> str | None:
    """The topic of a push certificate: its subject's UID (providers.md §1.2)."""
    for rdn in (peer or {}).get("subject", ()):
        for name, value in rdn:
            if name == "userId":
                return str(value)
    return None
