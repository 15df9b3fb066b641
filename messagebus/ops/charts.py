"""Bar charts as inline SVG, drawn on the server: no JavaScript, nothing fetched.

A bar per minute with its exact value as a tooltip (its ``<title>``), gridlines at
zero, half and the top, the time (in the current time zone) every quarter of an hour.
The ``viewBox`` scales the chart to the page's width; a stylesheet colours it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

# (the minute, its value, its tooltip: None for a minute without a bar)
Bar = tuple[dt.datetime, float, str | None]

WIDTH, HEIGHT = 720, 190
LEFT, RIGHT, TOP, BOTTOM = 56, 24, 30, 40  # room for the title, the ticks and the axes' names
TIME_EVERY = 15  # minutes between the times under the bars, counted back from the last


def hhmm(when: dt.datetime) -> str:
    """``14:05``, in the current time zone."""
    return f"{timezone.localtime(when):%H:%M}"


def bar_chart(
    title: str, axis: str, bars: list[Bar], label: Callable[[float], str], least: float = 1
) -> SafeString:
    """The chart of ``bars``, one slot each, oldest first; ``label`` words a value on the
    y axis, whose top is a round number of at least ``least``."""
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / len(bars)
    top = _ceiling(max([least, *(value for _, value, _ in bars)]))
    baseline = TOP + plot_height

    def y(value: float) -> float:
        return baseline - value / top * plot_height

    def at(number: float) -> str:  # format_html escapes its arguments, format codes and all
        return f"{number:.1f}"

    grid = format_html_join(
        "",
        '<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"/>'
        '<text class="tick" x="{}" y="{}" text-anchor="end">{}</text>',
        (
            (
                LEFT,
                WIDTH - RIGHT,
                at(y(value)),
                at(y(value)),
                LEFT - 6,
                at(y(value) + 4),
                label(value),
            )
            for value in (0, top / 2, top)
        ),
    )
    rects = format_html_join(
        "",
        '<rect class="bar" x="{}" y="{}" width="{}" height="{}"><title>{}</title></rect>',
        (
            (at(LEFT + (n + 0.1) * slot), at(min(y(value), baseline - 1)), at(0.8 * slot),
             at(max(baseline - y(value), 1)), tooltip)
            for n, (_, value, tooltip) in enumerate(bars)
            if tooltip is not None
        ),
    )  # fmt: skip
    times = format_html_join(
        "",
        '<text class="tick" x="{}" y="{}" text-anchor="middle">{}</text>',
        (
            (at(LEFT + (n + 0.5) * slot), baseline + 16, hhmm(start))
            for n, (start, _, _) in enumerate(bars)
            if (len(bars) - 1 - n) % TIME_EVERY == 0
        ),
    )
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}">'
        '<text class="chart-title" x="{}" y="16">{}</text>{}{}{}'
        '<text class="axis" x="{}" y="{}" text-anchor="middle">time ({})</text>'
        '<text class="axis" transform="rotate(-90)" x="{}" y="14" text-anchor="middle">'
        "{}</text></svg>",
        WIDTH, HEIGHT, title, LEFT, title, grid, rects, times,
        at(LEFT + plot_width / 2), HEIGHT - 4, timezone.get_current_timezone_name(),
        at(-(TOP + plot_height / 2)), axis,
    )  # fmt: skip


def _ceiling(value: float) -> float:
    """The least round number (1, 2, 4, 6 or 8 times a power of ten) at or above ``value``,
    whose half is round too; 1 for 0."""
    if value <= 0:
        return 1
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 4, 6, 8, 10) if value <= step * power)
