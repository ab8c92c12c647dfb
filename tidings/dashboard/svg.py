"""Lag drawn as inline SVG: a sparkline for a table cell, a chart for a group's page.

Drawing only: the points are the lag samples the log (or the dashboard's own looks)
kept, summed over a group's partitions on a topic."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

from tidings.transport import LagSample

__all__ = ["chart", "sparkline", "summed"]

Point = tuple[int, int]  # (ms since the epoch, lag)


def summed(series: Iterable[Sequence[LagSample]]) -> list[Point]:
    """The partitions' samples as one line: at each sample time, the sum of each
    partition's latest lag known then (a partition counts from its first sample)."""
    events = sorted((s.ts_ms, i, s.lag) for i, samples in enumerate(series) for s in samples)
    latest: dict[int, int] = {}
    points: list[Point] = []
    for ts, i, lag in events:
        latest[i] = lag
        total = sum(latest.values())
        if points and points[-1][0] == ts:
            points[-1] = (ts, total)
        else:
            points.append((ts, total))
    return points


def _path(points: Sequence[Point], x0: int, x1: int, width: float, height: float) -> str:
    top = max((v for _, v in points), default=0) or 1
    span = max(x1 - x0, 1)
    return " ".join(
        f"{'M' if i == 0 else 'L'}{(t - x0) / span * width:.1f},{height - v / top * height:.1f}"
        for i, (t, v) in enumerate(points)
    )


def sparkline(points: Sequence[Point], *, width: int = 120, height: int = 24) -> Markup:
    """A small line of ``points`` (no axes); a flat dash when there are fewer than two."""
    label = f"lag over {len(points)} sample(s), last {points[-1][1]:,}" if points else "no samples"
    if len(points) < 2:
        return Markup(
            f'<svg class="spark" width="{width}" height="{height}" role="img" '
            f'aria-label="{escape(label)}"><line x1="0" y1="{height - 1}" x2="{width}" '
            f'y2="{height - 1}"/></svg>'
        )
    d = _path(points, points[0][0], points[-1][0], width, height - 2)
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(label)}" data-points="{len(points)}"><path d="{d}"/></svg>'
    )


def chart(points: Sequence[Point], now_ms: int, *, span_ms: int = 3_600_000) -> Markup:
    """Lag over the last ``span_ms`` before ``now_ms``, with its axes labelled: the
    highest lag, and the times at both ends (UTC)."""
    width, height, left, bottom = 600, 160, 56, 20
    start = now_ms - span_ms
    shown = [p for p in points if p[0] >= start]
    top = max((v for _, v in shown), default=0)
    d = _path(shown, start, now_ms, width - left, height - bottom) if len(shown) > 1 else ""
    first = datetime.fromtimestamp(start / 1000, UTC).strftime("%H:%M")
    last = datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%H:%M UTC")
    line = f'<path transform="translate({left},0)" d="{d}"/>' if d else ""
    empty = (
        ""
        if d
        else (f'<text x="{left + 8}" y="{height // 2}">fewer than two samples in this hour</text>')
    )
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="lag over the last hour: {len(shown)} sample(s), highest {top:,}" '
        f'data-points="{len(shown)}">'
        f'<line x1="{left}" y1="0" x2="{left}" y2="{height - bottom}"/>'
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}"/>'
        f'<text x="{left - 4}" y="12" text-anchor="end">{top:,}</text>'
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">0</text>'
        f'<text x="{left}" y="{height - 4}">{first}</text>'
        f'<text x="{width}" y="{height - 4}" text-anchor="end">{last}</text>'
        f"{line}{empty}</svg>"
    )
