"""The portal's web app: sessions, CSRF, the page plumbing every screen shares, sign-in/out.

Mounted by the API app at `/portal`. Every page but sign-in needs a session; every POST needs
the session's CSRF token (form field `csrf_token`, or the `X-CSRF-Token` header htmx sends).
Reads come straight from the store, always filtered by the signed-in account; writes go through
the API in-process (clarion.portal.inprocess).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import Connection
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clarion import errors, sids
from clarion.api.context import Runtime
from clarion.api.form import Form
from clarion.portal import display, inprocess
from clarion.portal.session import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    IDLE_SECONDS,
    Session,
    SessionCodec,
    SessionStore,
    anonymous,
    fingerprint,
)
from clarion.store.accounts import Principal

HERE = Path(__file__).parent
log = logging.getLogger(__name__)
T = TypeVar("T")

TEMPLATES = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.filters.update(
    mask=display.mask, when=display.when, iso=display.iso, channel=display.channel_name
)
TEMPLATES.globals.update(
    channel_names=display.CHANNEL_NAMES,
    failover_reasons=display.FAILOVER_REASONS,
    delivery_sid=lambda row_id: sids.row_sid(sids.DELIVERY, row_id),
)

# What a redirect after a change may announce; the URL names the key, never the text.
NOTICES = {
    "signed-out": "You are signed out.",
    "signed-out-everywhere": "You are signed out of every session of your account.",
    "expired": "Your session ended; sign in again.",
    "service-created": "Service created.",
    "service-saved": "Service saved.",
    "service-deleted": "Service deleted.",
    "credential-created": "Credential created. Its secrets are stored encrypted and never shown.",
    "credential-saved": "Credential saved.",
    "credential-deleted": "Credential deleted.",
    "binding-deleted": "Binding deleted.",
    "user-created": "User created.",
    "user-deleted": "User deleted.",
    "segment-added": "Added to the segment.",
    "segment-removed": "Removed from the segment.",
    "sent": "Notification accepted; its deliveries appear below as they happen.",
}

# Every portal answer: no framing, no inline script or style, no caching of account data.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", [])) + SECURITY_HEADERS
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass(frozen=True, kw_only=True)
class Portal:
    """One signed-in request: who, their session, the submitted form, and the helpers."""

    request: Request
    session: Session
    principal: Principal
    form: Form | None
    runtime: Runtime
    api_app: ASGIApp

    @property
    def account_id(self) -> int:
        return self.principal.account_id

    def render(self, template: str, *, status: int = 200, **values: Any) -> HTMLResponse:
        return render(self.request, self.session, template, status=status, **values)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        return await self.runtime.database.read(fn)

    async def api(
        self, method: str, path: str, params: Sequence[tuple[str, str]] = ()
    ) -> inprocess.Answer:
        return await inprocess.call(
            self.api_app, self.request, self.principal, method=method, path=path, params=params
        )

    @property
    def posted(self) -> Form:
        assert self.form is not None, "only a POST has a form"
        return self.form


Handler = Callable[[Portal], Awaitable[Response]]


def render(
    request: Request, session: Session, template: str, *, status: int = 200, **values: Any
) -> HTMLResponse:
    notice = NOTICES.get(request.query_params.get("done", ""))
    html = TEMPLATES.get_template(template).render(
        csrf=session.csrf,
        csrf_field=CSRF_FIELD,
        account_sid=session.account_sid,
        signed_in=session.account_sid is not None,
        path=request.url.path,
        notice=notice,
        **{"section": None, **values},
    )
    return HTMLResponse(html, status_code=status)


def _codec(request: Request) -> SessionCodec:
    codec: SessionCodec = request.app.state.sessions
    return codec


def _store(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.session_store
    return store


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _keep(response: Response, request: Request, session: Session) -> Response:
    """Re-issue the session cookie: every answer restarts the idle clock."""
    response.set_cookie(
        COOKIE,
        _codec(request).seal(session),
        max_age=IDLE_SECONDS,
        path="/portal",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


async def _current(request: Request, session: Session | None) -> Principal | None:
    """The principal of a signed-in session whose credential still has the secret it signed in
    with (a rotated token or deleted key signs its sessions out), and which was not signed out
    nor left idle on the server's side."""
    if session is None or session.username is None:
        return None
    found = await _runtime(request).authenticator.lookup(session.username)
    if found is None:
        return None
    principal, digest = found
    if principal.account_id != session.account_id or not hmac.compare_digest(
        fingerprint(digest), session.fingerprint or ""
    ):
        return None
    if not await _store(request).check(session):
        return None
    return principal


async def _form(request: Request, session: Session) -> Form | Response:
    """The POSTed form, or the answer refusing it (no or wrong CSRF token, bad encoding)."""
    try:
        form = await Form.from_body(request)
        token = form.string(CSRF_FIELD, max_length=128) or request.headers.get(CSRF_HEADER, "")
    except errors.ClarionError as exc:
        return render(request, session, "error.html", status=exc.status, message=exc.message)
    if not hmac.compare_digest(token.encode(), session.csrf.encode()):
        return render(
            request,
            session,
            "error.html",
            status=403,
            message="This form is out of date or did not come from the portal. Reload the page "
            "and submit it again.",
        )
    return form


def _to_sign_in(request: Request, notice: str | None = None) -> Response:
    target = "/portal/sign-in?next=" + quote(request.url.path, safe="/")
    if notice:
        target += f"&done={notice}"
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A route for signed-in users: checks the session (and the CSRF token of a POST)."""

    async def endpoint(request: Request) -> Response:
        session = _codec(request).open(request.cookies.get(COOKIE))
        principal = await _current(request, session)
        if principal is None or session is None:
            return _to_sign_in(request, "expired" if request.cookies.get(COOKIE) else None)
        form = None
        if request.method == "POST":
            checked = await _form(request, session)
            if isinstance(checked, Response):
                return _keep(checked, request, session)
            form = checked
        portal = Portal(
            request=request,
            session=session,
            principal=principal,
            form=form,
            runtime=_runtime(request),
            api_app=request.app.state.api,
        )
        return _keep(await handler(portal), request, session)

    return endpoint


def safe_next(value: str | None) -> str:
    """Where to go after sign-in: a portal path, never another site."""
    if value and value.startswith("/portal/") and "//" not in value and "\\" not in value:
        return value
    return "/portal/"


async def sign_in_page(request: Request) -> Response:
    session = _codec(request).open(request.cookies.get(COOKIE)) or anonymous()
    if await _current(request, session) is not None:
        return RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    response = render(
        request, session, "sign_in.html", next=safe_next(request.query_params.get("next"))
    )
    return _keep(response, request, session)


async def sign_in(request: Request) -> Response:
    session = _codec(request).open(request.cookies.get(COOKIE)) or anonymous()
    checked = await _form(request, session)
    if isinstance(checked, Response):
        return _keep(checked, request, session)
    username = (checked.string("username", max_length=64) or "").strip()
    password = checked.string("password", max_length=256) or ""
    target = safe_next(checked.string("next", max_length=2048))
    authenticator = _runtime(request).authenticator
    try:
        principal = await authenticator.verify(username, password)
    except errors.ClarionError:
        response = render(
            request,
            session,
            "sign_in.html",
            status=401,
            next=target,
            username=username,
            error="That SID and secret do not match. Use an Account SID (AC…) with its auth "
            "token, or an API key SID (SK…) with its secret.",
        )
        return _keep(response, request, session)
    found = await authenticator.lookup(username)
    assert found is not None
    signed_in = session.signed_in(
        username=username, principal=principal, digest=found[1], now=_codec(request).now()
    )
    await _store(request).begin(signed_in)
    return _keep(RedirectResponse(target, status_code=303), request, signed_in)


async def sign_out(request: Request) -> Response:
    """End the session, on the server too (a copy of the cookie is worthless from now on):
    the browser keeps only a fresh, anonymous one."""
    session = _codec(request).open(request.cookies.get(COOKIE))
    if session is None:
        return _to_sign_in(request)
    checked = await _form(request, session)
    if isinstance(checked, Response):
        return _keep(checked, request, session)
    await _store(request).end(session)
    response = RedirectResponse("/portal/sign-in?done=signed-out", status_code=303)
    return _keep(response, request, anonymous())


async def sign_out_everywhere(request: Request) -> Response:
    """End every session of the account, this one included (a lost laptop, a shared one)."""
    session = _codec(request).open(request.cookies.get(COOKIE))
    principal = await _current(request, session)
    if principal is None or session is None:
        return _to_sign_in(request, "expired" if request.cookies.get(COOKIE) else None)
    checked = await _form(request, session)
    if isinstance(checked, Response):
        return _keep(checked, request, session)
    await _store(request).end_all(principal.account_id)
    response = RedirectResponse("/portal/sign-in?done=signed-out-everywhere", status_code=303)
    return _keep(response, request, anonymous())


async def _not_found(request: Request, exc: Exception) -> Response:
    session = _codec(request).open(request.cookies.get(COOKIE)) or anonymous()
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    message = "There is nothing at this address." if status == 404 else str(exc)
    return render(request, session, "error.html", status=status, message=message)


async def _clarion_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ClarionError)
    session = _codec(request).open(request.cookies.get(COOKIE)) or anonymous()
    message = (
        "There is no such record in your account." if exc.code == errors.NOT_FOUND else exc.message
    )
    return render(request, session, "error.html", status=exc.status, message=message)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return render(
        request,
        anonymous(),
        "error.html",
        status=500,
        message="Clarion hit an internal error showing this page; the server's log has details.",
    )


def create_portal(*, runtime: Runtime, api: ASGIApp) -> Starlette:
    """The portal app; `api` is the API app its writes go through."""
    from clarion.portal import account, configuration, dashboard, debugger, demo, users

    routes: list[BaseRoute] = [
        Route("/", dashboard.show, methods=["GET"]),
        Route("/sign-in", sign_in_page, methods=["GET"]),
        Route("/sign-in", sign_in, methods=["POST"]),
        Route("/sign-out", sign_out, methods=["POST"]),
        Route("/sign-out-everywhere", sign_out_everywhere, methods=["POST"]),
        *account.ROUTES,
        *configuration.ROUTES,
        *users.ROUTES,
        *debugger.ROUTES,
        *demo.ROUTES,
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={
            HTTPException: _not_found,
            errors.ClarionError: _clarion_error,
            Exception: _unexpected,
        },
    )
    app.state.runtime = runtime
    app.state.api = api
    app.state.sessions = SessionCodec(runtime.vault)
    app.state.session_store = SessionStore(runtime.database)
    return app
