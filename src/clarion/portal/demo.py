"""The web push demo: a page that subscribes its own browser and shows what is pushed to it.

It closes the loop a web-push integration has to get right — the VAPID key a page subscribes
with, the subscription the server stores as a `webpush` binding, the encrypted payload Clarion
sends and the service worker that decrypts and shows it — with nothing but a browser and the
portal. The page is signed-in like every portal page; the binding is registered through the API
in-process, as the signed-in account, like every portal write.

The service worker script is a vendored static file (`static/demo-webpush-sw.js`) served from
the page's own path, so its scope can be the page: browsers re-fetch it on their own to check
for updates, without a session, so like the portal's other static files it is public (it holds
no account data).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from clarion import errors, sids
from clarion.portal.app import HERE, Portal, page
from clarion.store import credentials, services
from clarion.store.paging import PageRequest

PAGE = "/portal/demo/webpush"
WORKER_FILE = HERE / "static" / "demo-webpush-sw.js"
# The service worker controls the page's path and nothing else of the portal.
WORKER_SCOPE = PAGE
SERVICE_CHOICES = 200
IDENTITY_MAX = 256
ADDRESS_MAX = 4096


async def entry(_request: Request) -> Response:
    """`/demo/webpush`, the address the README gives: the page lives under `/portal`, where
    the portal's session cookie is sent."""
    return RedirectResponse(PAGE, status_code=307)


def _vapid_key(row: Any) -> str | None:
    value = (row["settings"] or {}).get("VapidPublicKey")
    return value if isinstance(value, str) and value else None


@page
async def show(portal: Portal) -> Response:
    wanted = portal.request.query_params.get("service", "")
    chosen = sids.normalize_sid(wanted) if sids.is_sid(wanted, sids.SERVICE) else None

    def load(conn: Connection) -> dict[str, Any]:
        listed = services.list_page(
            conn,
            account_id=portal.account_id,
            friendly_name=None,
            page=PageRequest(size=SERVICE_CHOICES),
        ).rows
        service = next((row for row in listed if row["sid"] == chosen), None)
        if service is None and chosen is not None:
            try:
                service = services.get(conn, account_id=portal.account_id, sid=chosen)
            except errors.ClarionError:
                service = None
        if service is None and len(listed) == 1:
            service = listed[0]
        credential = None
        if service is not None and service["webpush_credential_sid"]:
            credential = credentials.get(
                conn, account_id=portal.account_id, sid=service["webpush_credential_sid"]
            )
        return {"services": listed, "service": service, "credential": credential}

    found = await portal.read(load)
    credential = found["credential"]
    return portal.render(
        "demo_webpush.html",
        section="demo",
        services=found["services"],
        service=found["service"],
        credential=credential,
        vapid_public_key=None if credential is None else _vapid_key(credential),
        sandbox=portal.runtime.sandbox,
        worker_url=PAGE + "/sw.js",
        worker_scope=WORKER_SCOPE,
    )


@page
async def subscribe(portal: Portal) -> Response:
    """Store the browser's PushSubscription as a `webpush` binding; JSON for the page's script."""
    form = portal.posted
    try:
        service_sid = form.required("ServiceSid", max_length=64)
        identity = form.required("Identity", max_length=IDENTITY_MAX)
        address = form.required("Address", max_length=ADDRESS_MAX)
    except errors.ClarionError as exc:
        return JSONResponse({"message": exc.message}, status_code=exc.status)
    if not sids.is_sid(service_sid, sids.SERVICE):
        return JSONResponse({"message": "Choose one of your services."}, status_code=400)
    params = [("Identity", identity), ("BindingType", "webpush"), ("Address", address)]
    answer = await portal.api(
        "POST", f"/Services/{sids.normalize_sid(service_sid)}/Bindings", params
    )
    if not answer.ok:
        return JSONResponse({"message": answer.message}, status_code=answer.status)
    return JSONResponse(
        {"sid": answer.body.get("sid"), "identity": answer.body.get("identity")}, status_code=201
    )


async def worker_script(_request: Request) -> Response:
    """The service worker, allowed to control the page's path (not only `/…/webpush/`)."""
    return Response(
        WORKER_FILE.read_bytes(),
        media_type="text/javascript; charset=utf-8",
        # Not cached (the portal's `no-store`): an update reaches browsers at their next check.
        headers={"Service-Worker-Allowed": WORKER_SCOPE},
    )


ROUTES = [
    Route("/demo/webpush", show, methods=["GET"]),
    Route("/demo/webpush/subscriptions", subscribe, methods=["POST"]),
    Route("/demo/webpush/sw.js", worker_script, methods=["GET"]),
]
