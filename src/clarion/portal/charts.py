"""Server-rendered SVG charts: no JavaScript, readable without colour (every chart has a title,
a legend and an accessible text summary), scaled by the viewBox to any screen width.

Colours come from the stylesheet (`series-<n>`, `status-<name>` classes), so the page's Content
Security Policy can forbid inline styles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

WIDTH = 640
HEIGHT = 220
PAD_LEFT = 44
PAD_BOTTOM = 28
PAD_TOP = 10


def _nice_max(value: int) -> int:
    """A round axis maximum at or above `value`."""
    if value <= 5:
        return 5
    magnitude: int = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _legend(names: Sequence[str], classes: Sequence[str]) -> str:
    items = "".join(
        f'<li><span class="swatch {cls}" aria-hidden="true"></span>{escape(name)}</li>'
        for name, cls in zip(names, classes, strict=True)
    )
    return f'<ul class="legend">{items}</ul>'


def stacked_bars(
    *,
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[int]],
    classes: dict[str, str],
) -> Markup:
    """Vertical bars per label, stacked by series (e.g. deliveries per hour by channel)."""
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    top = _nice_max(max(totals, default=0))
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = plot_w / max(len(labels), 1)
    bar = max(slot * 0.7, 1.0)
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" class="chart" '
        f'aria-label="{escape(title)}: {sum(totals)} in all">'
    ]
    for fraction in (0, 0.5, 1):
        y = PAD_TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{int(top * fraction)}</text>"
        )
    every = max(1, len(labels) // 8)
    for index, label in enumerate(labels):
        x = PAD_LEFT + slot * index + (slot - bar) / 2
        base = float(PAD_TOP + plot_h)
        for name, values in series.items():
            value = values[index]
            if not value:
                continue
            height = plot_h * value / top
            base -= height
            parts.append(
                f'<rect class="{classes[name]}" x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" '
                f'height="{height:.1f}"><title>{escape(label)} · {escape(name)}: {value}</title>'
                "</rect>"
            )
        if index % every == 0:
            parts.append(
                f'<text class="axis" x="{x + bar / 2:.1f}" y="{HEIGHT - 8}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append("</svg>")
    legend = _legend(list(series), [classes[name] for name in series])
    return Markup("".join(parts) + legend)  # noqa: S704 - every text in it went through escape()


def horizontal_bars(
    *, title: str, items: Sequence[tuple[str, int]], css_class: str = "series-0"
) -> Markup:
    """One labelled bar per item, longest first (e.g. the top error codes)."""
    row_h = 26
    height = row_h * len(items) + 8
    label_w = 230
    top = max((value for _, value in items), default=1) or 1
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {height}" role="img" class="chart" '
        f'aria-label="{escape(title)}">'
    ]
    for index, (label, value) in enumerate(items):
        y = 4 + row_h * index
        width = (WIDTH - label_w - 60) * value / top
        parts.append(
            f'<text class="label" x="{label_w - 8}" y="{y + 17}" text-anchor="end">'
            f"{escape(label)}</text>"
            f'<rect class="{css_class}" x="{label_w}" y="{y + 4}" width="{max(width, 1):.1f}" '
            f'height="{row_h - 8}"/>'
            f'<text class="value" x="{label_w + width + 6:.1f}" y="{y + 17}">{value}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text in it went through escape()


def proportion(*, title: str, parts: Sequence[tuple[str, int, str]]) -> Markup:
    """One bar split into its parts (name, count, class), with percentages in the legend."""
    total = sum(count for _, count, _ in parts) or 1
    x = 0.0
    rects = []
    for name, count, css_class in parts:
        if not count:
            continue
        width = WIDTH * count / total
        rects.append(
            f'<rect class="{css_class}" x="{x:.1f}" y="0" width="{width:.1f}" height="28">'
            f"<title>{escape(name)}: {count}</title></rect>"
        )
        x += width
    svg = (
        f'<svg viewBox="0 0 {WIDTH} 28" role="img" class="chart bar" '
        f'aria-label="{escape(title)}">{"".join(rects)}</svg>'
    )
    names = [f"{name} {count} ({100 * count / total:.1f} %)" for name, count, _ in parts]
    legend = _legend(names, [css_class for _, _, css_class in parts])
    return Markup(svg + legend)  # noqa: S704 - every text in it went through escape()
