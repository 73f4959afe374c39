"""The ASGI application: Twilio Notify v1 routes, Twilio-style errors, `.json` URLs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from clarion import errors
from clarion.api import (
    bindings,
    callbacks,
    credentials,
    deliveries,
    notifications,
    receipts,
    services,
    users,
)
from clarion.api.auth import Authenticator
from clarion.api.context import Runtime, escape_segment
from clarion.api.responses import error_response
from clarion.destinations import PERMISSIVE, DestinationPolicy
from clarion.portal import demo
from clarion.portal.app import create_portal
from clarion.store.database import Database
from clarion.vault import Vault

log = logging.getLogger(__name__)

SERVICE = "/v1/Services/{ServiceSid}"
USER = SERVICE + "/Users/{Identity}"
NOTIFICATION = SERVICE + "/Notifications/{NotificationSid}"
MESSENGER_WEBHOOK = "/v1/Callbacks/Messenger/{CredentialSid}"

ROUTES = [
    Route("/v1/Credentials", credentials.list_, methods=["GET"]),
    Route("/v1/Credentials", credentials.create, methods=["POST"]),
    Route("/v1/Credentials/{Sid}", credentials.fetch, methods=["GET"]),
    Route("/v1/Credentials/{Sid}", credentials.update, methods=["POST"]),
    Route("/v1/Credentials/{Sid}", credentials.delete, methods=["DELETE"]),
    Route("/v1/Services", services.list_, methods=["GET"]),
    Route("/v1/Services", services.create, methods=["POST"]),
    Route("/v1/Services/{Sid}", services.fetch, methods=["GET"]),
    Route("/v1/Services/{Sid}", services.update, methods=["POST"]),
    Route("/v1/Services/{Sid}", services.delete, methods=["DELETE"]),
    Route(SERVICE + "/Bindings", bindings.list_, methods=["GET"]),
    Route(SERVICE + "/Bindings", bindings.create, methods=["POST"]),
    Route(SERVICE + "/Bindings/{Sid}", bindings.fetch, methods=["GET"]),
    Route(SERVICE + "/Bindings/{Sid}", bindings.delete, methods=["DELETE"]),
    Route("/v1/Callbacks/Sms/{CredentialSid}", callbacks.sms_status, methods=["POST"]),
    Route(MESSENGER_WEBHOOK, callbacks.messenger_verify, methods=["GET"]),
    Route(MESSENGER_WEBHOOK, callbacks.messenger_events, methods=["POST"]),
    Route(SERVICE + "/Notifications", notifications.create, methods=["POST"]),
    Route(SERVICE + "/Notifications/{Sid}", notifications.fetch, methods=["GET"]),
    Route(NOTIFICATION + "/Deliveries", deliveries.list_, methods=["GET"]),
    Route(NOTIFICATION + "/Deliveries/{Sid}", deliveries.fetch, methods=["GET"]),
    Route(NOTIFICATION + "/Receipts", receipts.create, methods=["POST"]),
    Route(SERVICE + "/Segments", users.list_segments, methods=["GET"]),
    Route(SERVICE + "/Users", users.list_, methods=["GET"]),
    Route(SERVICE + "/Users", users.create, methods=["POST"]),
    Route(USER, users.fetch, methods=["GET"]),
    Route(USER, users.delete, methods=["DELETE"]),
    Route(USER + "/Bindings", bindings.list_, methods=["GET"]),
    Route(USER + "/Bindings", bindings.create_for_user, methods=["POST"]),
    Route(USER + "/Bindings/{Sid}", bindings.fetch, methods=["GET"]),
    Route(USER + "/Bindings/{Sid}", bindings.delete, methods=["DELETE"]),
    Route(USER + "/SegmentMemberships", users.create_membership, methods=["POST"]),
    Route(USER + "/SegmentMemberships/{Segment}", users.fetch_membership, methods=["GET"]),
    Route(USER + "/SegmentMemberships/{Segment}", users.delete_membership, methods=["DELETE"]),
]


class EncodedSlashes:
    """Route on the path as the client encoded it, so `%2F` stays inside its segment.

    A Twilio identity may contain `/`; its User URL then carries `%2F`, which ASGI servers
    decode before routing, splitting the segment. Each raw segment is decoded here with only
    `%` and `/` left escaped, so a route parameter holds exactly one segment; handlers read
    text parameters through `Context.path_text`, which undoes that escaping.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw:
            segments = raw.decode("latin-1").split("?", 1)[0].split("/")
            path = "/".join(escape_segment(unquote(segment)) for segment in segments)
            scope = {**scope, "path": path}
        await self.app(scope, receive, send)


class JsonSuffix:
    """Serve `/v1/…/X.json` as `/v1/…/X`, as Twilio's older examples call it (§2.1)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith(".json"):
            scope = {**scope, "path": scope["path"].removesuffix(".json")}
        await self.app(scope, receive, send)


async def _clarion_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ClarionError)
    if exc.code == errors.NOT_FOUND:
        exc = _not_found(request)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(_not_found(request))
    if exc.status_code == 405:
        return error_response(
            errors.ClarionError(
                405,
                errors.METHOD_NOT_ALLOWED,
                f"Method {request.method} not allowed on this resource",
            )
        )
    return error_response(
        errors.ClarionError(exc.status_code, 20000 + exc.status_code, str(exc.detail))
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(errors.ClarionError(500, errors.INTERNAL, "Internal server error"))


def _not_found(request: Request) -> errors.ClarionError:
    path = request.url.path.removeprefix("/v1")
    return errors.ClarionError(
        404, errors.NOT_FOUND, f"The requested resource {path} was not found"
    )


def create_app(
    *,
    database: Database,
    vault: Vault,
    on_enqueued: Callable[[], None] = lambda: None,
    webhook_tokens: Mapping[str, str] | None = None,
    sandbox: bool = False,
    destinations: DestinationPolicy = PERMISSIVE,
) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await database.start()
        try:
            yield
        finally:
            await database.close()

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            errors.ClarionError: _clarion_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.runtime = Runtime(
        database=database,
        vault=vault,
        authenticator=Authenticator(database),
        on_enqueued=on_enqueued,
        webhook_tokens=webhook_tokens or {},
        sandbox=sandbox,
        destinations=destinations,
    )
    # The web portal: its pages at /portal, its writes through this app's own API routes.
    app.mount("/portal", create_portal(runtime=app.state.runtime, api=app))
    # The README's address of the web push demo; the page itself lives under /portal.
    app.add_route("/demo/webpush", demo.entry, methods=["GET"])
    app.add_middleware(JsonSuffix)
    app.add_middleware(EncodedSlashes)
    return app
