"""The dashboard: the account's recent deliveries as charts (clarion.portal.charts)."""

from __future__ import annotations

from datetime import datetime, timedelta

from markupsafe import Markup
from starlette.responses import Response

from clarion.portal import charts, display
from clarion.portal.app import Portal, page
from clarion.store import dashboard
from clarion.store.clock import utcnow

# Window → (length, bucket unit, bucket count).
WINDOWS = {
    "24h": (timedelta(hours=24), "hour", 24),
    "7d": (timedelta(days=7), "day", 7),
    "30d": (timedelta(days=30), "day", 30),
}
# Outcome groups of the success/failure chart, in order, with their chart class.
OUTCOMES = (
    ("delivered", ("delivered",), "status-delivered"),
    ("sent", ("sent",), "status-sent"),
    ("in flight", ("pending", "sending"), "status-pending"),
    ("failed", ("failed",), "status-failed"),
    ("expired", ("expired",), "status-expired"),
)


def _buckets(now: datetime, unit: str, count: int) -> list[str]:
    """The bucket names of the window, oldest first, spelled as store.dashboard spells them."""
    if unit == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return [
            (start - timedelta(hours=i)).strftime("%Y-%m-%dT%H") for i in reversed(range(count))
        ]
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return [(start - timedelta(days=i)).strftime("%Y-%m-%d") for i in reversed(range(count))]


def _short(bucket: str, unit: str) -> str:
    return bucket[-2:] + ":00" if unit == "hour" else bucket[5:]


def _by_bucket(counts: dict[tuple[str, str], int], buckets: list[str]) -> dict[str, list[int]]:
    names = sorted({name for _, name in counts})
    return {name: [counts.get((bucket, name), 0) for bucket in buckets] for name in names}


@page
async def show(portal: Portal) -> Response:
    window = portal.request.query_params.get("window", "24h")
    if window not in WINDOWS:
        window = "24h"
    length, unit, count = WINDOWS[window]
    now = utcnow()
    buckets = _buckets(now, unit, count)
    since = datetime.strptime(buckets[0], "%Y-%m-%dT%H" if unit == "hour" else "%Y-%m-%d")
    activity = await portal.read(
        lambda conn: dashboard.activity(conn, account_id=portal.account_id, since=since, unit=unit)
    )
    labels = [_short(bucket, unit) for bucket in buckets]
    per_channel = _by_bucket(activity.per_channel, buckets)
    channel_series = {display.channel_name(name): values for name, values in per_channel.items()}
    retired = {
        display.channel_name(name): values
        for name, values in _by_bucket(activity.retired, buckets).items()
    }
    total = sum(activity.by_status.values())
    outcomes = [
        (name, sum(activity.by_status.get(status, 0) for status in statuses), css)
        for name, statuses, css in OUTCOMES
    ]
    charts_html: dict[str, Markup | None] = {
        "per_channel": charts.stacked_bars(
            title="Deliveries per channel",
            labels=labels,
            series=channel_series,
            classes={name: f"series-{i % 8}" for i, name in enumerate(channel_series)},
        )
        if channel_series
        else None,
        "outcomes": charts.proportion(title="Delivery outcomes", parts=outcomes) if total else None,
        "errors": charts.horizontal_bars(
            title="Top error codes",
            items=[
                (f"{display.channel_name(channel)} · {code}", n)
                for channel, code, n in activity.top_errors
            ],
            css_class="status-failed",
        )
        if activity.top_errors
        else None,
        "retired": charts.stacked_bars(
            title="Dead tokens retired",
            labels=labels,
            series=retired,
            classes={name: f"series-{i % 8}" for i, name in enumerate(retired)},
        )
        if retired
        else None,
    }
    delivered = sum(activity.by_status.get(status, 0) for status in ("delivered", "sent"))
    failed = sum(activity.by_status.get(status, 0) for status in ("failed", "expired"))
    finished = delivered + failed
    return portal.render(
        "dashboard.html",
        section="dashboard",
        window=window,
        windows=list(WINDOWS),
        total=total,
        success_rate=None if not finished else 100 * delivered / finished,
        failed=failed,
        retired_total=sum(activity.retired.values()),
        charts=charts_html,
        length=length,
    )
