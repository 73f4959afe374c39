"""Sending and the delivery debugger: notification list, notification page, delivery page.

A notification may have hundreds of thousands of deliveries: its page reads its summary (one
grouped count on the notification's delivery index) and one keyset page of deliveries, never
the whole list. While it is in flight the page stays live over Server-Sent Events: the server
re-reads the same summary and page every `LIVE_INTERVAL` seconds and sends them as HTML
fragments, which htmx swaps in.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as day_start
from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from clarion import addresses, failover_policy, sids
from clarion.api.deliveries import STATUSES
from clarion.errors import not_found
from clarion.portal import display
from clarion.portal.app import TEMPLATES, Portal, page
from clarion.portal.configuration import keyset, path_sid
from clarion.store import callbacks, deliveries, failover, notifications, services
from clarion.store.paging import PageRequest, PageResult

DELIVERY_PAGE = 50
# Delivery-callback POSTs shown on a notification's page, newest first.
CALLBACK_ATTEMPTS = 20
NOTIFICATION_PAGE = 50
LIVE_INTERVAL = 1.0
# A live view reconnects (and is authenticated again) after this long.
LIVE_MAX_SECONDS = 600.0
IN_FLIGHT = ("queued", "fanning_out", "dispatched")
NOTIFICATION_STATUSES = (*IN_FLIGHT, "completed", "failed")
FINAL_FAILURES = ("failed", "expired")
_LIST_SPLIT = re.compile(r"[\n,]+")


# --- sending ---------------------------------------------------------------------------------

SEND_TEXT = ("Title", "Body", "Sound", "Action", "Priority", "Ttl", "DeliveryCallbackUrl")
SEND_JSON = ("Data", "Apn", "Fcm", "Gcm", "Sms", "FacebookMessenger", "Email")
SEND_LISTS = ("Identity", "Tag", "Segment")


def _send_params(portal: Portal) -> list[tuple[str, str]]:
    form = portal.posted
    params: list[tuple[str, str]] = []
    for name in SEND_LISTS:
        text = form.string(name, max_length=64 * 1024) or ""
        params += [(name, item.strip()) for item in _LIST_SPLIT.split(text) if item.strip()]
    for name in (*SEND_TEXT, *SEND_JSON):
        value = (form.string(name, max_length=64 * 1024) or "").strip()
        if value:
            params.append((name, value))
    choice = form.string("FailoverChoice", max_length=16)
    if choice == "off":
        params.append((failover_policy.PARAMETER, failover_policy.OFF))
    elif choice == "custom":
        params.append(
            (
                failover_policy.PARAMETER,
                form.string(failover_policy.PARAMETER, max_length=4096) or "",
            )
        )
    return params


def _send_form(
    portal: Portal, service: Any, *, values: dict[str, str], error: str | None, status: int = 200
) -> Response:
    return portal.render(
        "send.html",
        status=status,
        section="send",
        service=service,
        values=values,
        error=error,
        json_fields=SEND_JSON,
    )


@page
async def send(portal: Portal) -> Response:
    service_sid = path_sid(portal, "sid", sids.SERVICE)
    service = await portal.read(
        lambda conn: services.get(conn, account_id=portal.account_id, sid=service_sid)
    )
    if portal.form is None:
        return _send_form(portal, service, values={"FailoverChoice": "service"}, error=None)
    answer = await portal.api(
        "POST", f"/Services/{service_sid}/Notifications", _send_params(portal)
    )
    if not answer.ok:
        form = portal.posted
        values = {name: form.string(name, max_length=64 * 1024) or "" for name in form.names()}
        return _send_form(
            portal, service, values=values, error=answer.message, status=answer.status
        )
    return RedirectResponse(
        f"/portal/services/{service_sid}/notifications/{answer.body['sid']}?done=sent",
        status_code=303,
    )


@page
async def choose_service(portal: Portal) -> Response:
    """`Send` in the navigation: pick the service to send from (or go straight to the one)."""
    result = await portal.read(
        lambda conn: services.list_page(
            conn, account_id=portal.account_id, friendly_name=None, page=PageRequest(size=2)
        )
    )
    if len(result.rows) == 1 and not result.has_next:
        return RedirectResponse(f"/portal/services/{result.rows[0]['sid']}/send", status_code=303)
    return RedirectResponse("/portal/services", status_code=303)


# --- notification list -----------------------------------------------------------------------


def _day(text: str) -> datetime | None:
    try:
        return datetime.combine(datetime.strptime(text, "%Y-%m-%d").date(), day_start())
    except ValueError:
        return None


@page
async def notification_list(portal: Portal) -> Response:
    query = portal.request.query_params
    filters = {
        name: query.get(name, "").strip()[:64]
        for name in ("service", "status", "channel", "from", "to")
    }
    status = filters["status"] if filters["status"] in NOTIFICATION_STATUSES else None
    channel = filters["channel"] if filters["channel"] in addresses.BINDING_TYPES else None
    created_from = _day(filters["from"])
    until = _day(filters["to"])
    before = query.get("before", "")
    service_sid = filters["service"] if sids.is_sid(filters["service"], sids.SERVICE) else None

    def load(conn: Connection) -> tuple[PageResult, notifications.RecentPage]:
        all_services = services.list_page(
            conn, account_id=portal.account_id, friendly_name=None, page=PageRequest(size=500)
        )
        service_id = None
        if service_sid is not None:
            service_id = services.resolve(conn, account_id=portal.account_id, sid=service_sid)
        recent = notifications.list_recent(
            conn,
            account_id=portal.account_id,
            service_id=service_id,
            statuses=[status] if status else [],
            channel=channel,
            created_from=created_from,
            created_before=None if until is None else until + timedelta(days=1),
            before_id=int(before) if before.isdigit() and len(before) < 19 else None,
            size=NOTIFICATION_PAGE,
        )
        return all_services, recent

    all_services, recent = await portal.read(load)
    return portal.render(
        "notifications.html",
        section="notifications",
        services=all_services.rows,
        recent=recent,
        filters=filters,
        statuses=NOTIFICATION_STATUSES,
        binding_types=addresses.BINDING_TYPES,
        filter_query=[(name, value) for name, value in filters.items() if value],
    )


# --- one notification ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NotificationView:
    service: Any
    notification: Any
    counts: dict[str, dict[str, int]]
    callback: callbacks.State
    failover: dict[str, Any] | None
    page: PageResult
    # The latest callback POSTs and their answers; only the full page reads them (the callback
    # is sent once the notification is complete, after the live view has closed).
    callback_attempts: callbacks.Attempts | None = None

    @property
    def in_flight(self) -> bool:
        return bool(self.notification["status"] in IN_FLIGHT)

    @property
    def by_status(self) -> dict[str, int]:
        totals = dict.fromkeys(STATUSES, 0)
        for statuses in self.counts.values():
            for status, count in statuses.items():
                totals[status] = totals.get(status, 0) + count
        return totals

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def _delivery_filters(request: Request) -> tuple[list[str], list[str]]:
    query = request.query_params
    statuses = [value for value in query.getlist("status") if value in STATUSES]
    channels = [value for value in query.getlist("channel") if value in addresses.BINDING_TYPES]
    return statuses, channels


async def _load_notification(
    portal: Portal, *, page_request: PageRequest, with_attempts: bool = False
) -> NotificationView:
    service_sid = path_sid(portal, "sid", sids.SERVICE)
    notification_sid = path_sid(portal, "notification", sids.NOTIFICATION)
    statuses, channels = _delivery_filters(portal.request)

    def load(conn: Connection) -> NotificationView:
        service = services.get(conn, account_id=portal.account_id, sid=service_sid)
        row, counts = deliveries.notification_with_counts(
            conn, service_id=service["id"], sid=notification_sid
        )
        return NotificationView(
            service=service,
            notification=row,
            counts=counts,
            callback=callbacks.state(conn, notification_id=row["id"]),
            failover=failover.summary(conn, notification_id=row["id"]),
            page=deliveries.list_page(
                conn,
                notification_id=row["id"],
                statuses=statuses,
                channels=channels,
                page=page_request,
            ),
            callback_attempts=callbacks.attempts(
                conn, notification_id=row["id"], limit=CALLBACK_ATTEMPTS
            )
            if with_attempts
            else None,
        )

    return await portal.read(load)


def _fragments(portal: Portal, view: NotificationView) -> dict[str, str]:
    values = {"view": view, "base": _notification_path(view)}
    return {
        "summary": TEMPLATES.get_template("_summary.html").render(values),
        "deliveries": TEMPLATES.get_template("_delivery_rows.html").render(values),
    }


def _notification_path(view: NotificationView) -> str:
    return f"/portal/services/{view.service['sid']}/notifications/{view.notification['sid']}"


@page
async def notification_page(portal: Portal) -> Response:
    started = time.perf_counter()
    view = await _load_notification(
        portal, page_request=keyset(portal.request, DELIVERY_PAGE), with_attempts=True
    )
    statuses, channels = _delivery_filters(portal.request)
    first_page = not (
        portal.request.query_params.get("after") or portal.request.query_params.get("before")
    )
    filter_query = [("status", value) for value in statuses] + [
        ("channel", value) for value in channels
    ]
    response = portal.render(
        "notification.html",
        section="notifications",
        view=view,
        base=_notification_path(view),
        live=view.in_flight and first_page,
        statuses=STATUSES,
        binding_types=addresses.BINDING_TYPES,
        selected_statuses=statuses,
        selected_channels=channels,
        filter_query=filter_query,
        kept_attempts=callbacks.KEPT_ATTEMPTS,
    )
    # How long the server took, for the browser's devtools and bench/portal.py.
    response.headers["Server-Timing"] = f"page;dur={1000 * (time.perf_counter() - started):.1f}"
    return response


def _event(name: str, html: str) -> str:
    data = "\n".join(f"data: {line}" for line in html.splitlines() or [""])
    return f"event: {name}\n{data}\n\n"


@page
async def notification_live(portal: Portal) -> Response:
    """Server-Sent Events: the summary and the first page of deliveries, every second, until
    the notification is done (then `done`, on which the page closes the stream)."""
    first = await _load_notification(portal, page_request=PageRequest(size=DELIVERY_PAGE))

    async def stream() -> AsyncIterator[str]:
        view = first
        deadline = time.monotonic() + LIVE_MAX_SECONDS
        while True:
            for name, html in _fragments(portal, view).items():
                yield _event(name, html)
            if not view.in_flight:
                yield _event("done", "")
                return
            if time.monotonic() > deadline or await portal.request.is_disconnected():
                return
            await asyncio.sleep(LIVE_INTERVAL)
            view = await _load_notification(portal, page_request=PageRequest(size=DELIVERY_PAGE))

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},
    )


# --- one delivery ----------------------------------------------------------------------------


@page
async def delivery_page(portal: Portal) -> Response:
    service_sid = path_sid(portal, "sid", sids.SERVICE)
    notification_sid = path_sid(portal, "notification", sids.NOTIFICATION)
    delivery_id = sids.row_id(path_sid(portal, "delivery", sids.DELIVERY))
    if delivery_id is None:
        raise not_found()

    def load(conn: Connection) -> dict[str, Any]:
        service_id = services.resolve(conn, account_id=portal.account_id, sid=service_sid)
        notification_id = deliveries.notification_id(
            conn, service_id=service_id, sid=notification_sid
        )
        row = deliveries.get(conn, notification_id=notification_id, delivery_id=delivery_id)
        chain = []
        if row["failover_step"] is not None and row["identity"] is not None:
            chain = deliveries.failover_chain(
                conn, notification_id=notification_id, identity=row["identity"]
            )
        return {
            "delivery": row,
            "events": deliveries.events(conn, delivery_id=delivery_id),
            "chain": chain,
        }

    found = await portal.read(load)
    row = found["delivery"]
    groups: dict[int, list[Any]] = {}
    for link in found["chain"]:
        groups.setdefault(link["failover_step"], []).append(link)
    return portal.render(
        "delivery.html",
        section="notifications",
        service_sid=service_sid,
        notification_sid=notification_sid,
        base=f"/portal/services/{service_sid}/notifications/{notification_sid}",
        delivery=row,
        this_sid=sids.row_sid(sids.DELIVERY, row["id"]),
        events=found["events"],
        chain=sorted(groups.items()),
        help=display.error_help(row["error_code"]),
    )


ROUTES = [
    Route("/send", choose_service, methods=["GET"]),
    Route("/services/{sid}/send", send, methods=["GET", "POST"]),
    Route("/notifications", notification_list, methods=["GET"]),
    Route("/services/{sid}/notifications/{notification}", notification_page, methods=["GET"]),
    Route("/services/{sid}/notifications/{notification}/live", notification_live, methods=["GET"]),
    Route(
        "/services/{sid}/notifications/{notification}/deliveries/{delivery}",
        delivery_page,
        methods=["GET"],
    ),
]
