"""Charts as inline SVG, drawn on the server: no chart library, no CDN, nothing to download."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 14, 30
PALETTE = ("#2563eb", "#dc2626", "#f59e0b", "#16a34a", "#7c3aed", "#0891b2", "#db2777", "#65a30d")


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    color: str


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(value))) / 10
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value


def _number(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _frame(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    top: float,
    unit: str,
    body: str,
    legend: Sequence[Series],
    points: int,
) -> str:
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    grid = []
    for step in range(5):
        y = TOP + plot_height * step / 4
        value = top * (4 - step) / 4
        grid.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{_number(value)}</text>'
        )
    every = max(1, len(labels) // 8)
    ticks = [
        f'<text x="{LEFT + plot_width * (index + 0.5) / len(labels):.1f}" y="{HEIGHT - 10}" '
        f'class="axis" text-anchor="middle">{escape(label)}</text>'
        for index, label in enumerate(labels)
        if index % every == 0
    ]
    keys = "".join(
        f'<span class="key"><svg class="swatch" viewBox="0 0 1 1" aria-hidden="true"><rect width="1" height="1" '
        f'fill="{series.color}"/></svg>{escape(series.name)}</span>'
        for series in legend
    )
    return (
        f'<figure class="chart"><figcaption>{escape(title)}'
        f'<span class="unit">{escape(unit)}</span></figcaption>'
        f'<svg id="{chart_id}" data-chart="{chart_id}" data-points="{points}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}">{"".join(grid)}{body}{"".join(ticks)}</svg>'
        f'<div class="legend">{keys}</div></figure>'
    )


def stacked_bars(chart_id: str, title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "") -> str:
    """Bars per label, the series stacked on each other."""
    totals = [sum(s.values[index] or 0 for s in series) for index in range(len(labels))]
    top = _nice_max(max(totals, default=0))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / max(1, len(labels))
    bars, points = [], 0
    for index, label in enumerate(labels):
        base = 0.0
        for s in series:
            value = s.values[index] or 0
            if not value:
                continue
            points += 1
            height = plot_height * value / top
            y = TOP + plot_height - plot_height * base / top - height
            bars.append(
                f'<rect class="bar" x="{LEFT + index * slot + slot * 0.15:.1f}" y="{y:.1f}" '
                f'width="{slot * 0.7:.1f}" height="{height:.1f}" fill="{s.color}">'
                f"<title>{escape(label)} · {escape(s.name)}: {value:g}</title></rect>"
            )
            base += value
    return _frame(chart_id, title, labels, top, unit, "".join(bars), series, points)


def lines(chart_id: str, title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "") -> str:
    """One line per series; gaps where a value is missing."""
    top = _nice_max(max((v for s in series for v in s.values if v is not None), default=0))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / max(1, len(labels))
    body, points = [], 0
    for s in series:
        segment: list[str] = []
        for index, value in enumerate(list(s.values) + [None]):
            if value is None:
                if segment:
                    body.append(f'<polyline class="line" fill="none" stroke="{s.color}" points="{" ".join(segment)}"/>')
                segment = []
                continue
            x, y = LEFT + slot * (index + 0.5), TOP + plot_height - plot_height * value / top
            segment.append(f"{x:.1f},{y:.1f}")
            points += 1
            body.append(
                f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.color}">'
                f"<title>{escape(labels[index])} · {escape(s.name)}: {value:g}</title></circle>"
            )
    return _frame(chart_id, title, labels, top, unit, "".join(body), series, points)


def horizontal_bars(chart_id: str, title: str, rows: Sequence[tuple[str, float]], unit: str = "") -> str:
    """One bar per row (e.g. per model), longest first."""
    top = _nice_max(max((value for _, value in rows), default=0))
    row_height = 26
    height = max(row_height * len(rows) + 10, 40)
    name_width, plot_width = 200, WIDTH - 200 - 70
    bars = []
    for index, (name, value) in enumerate(rows):
        y = 6 + index * row_height
        width = plot_width * value / top
        color = PALETTE[index % len(PALETTE)]
        bars.append(
            f'<text x="{name_width - 8}" y="{y + 15}" class="axis" text-anchor="end">{escape(name[:28])}</text>'
            f'<rect class="bar" x="{name_width}" y="{y}" width="{width:.1f}" height="{row_height - 8}" fill="{color}">'
            f"<title>{escape(name)}: {value:g}</title></rect>"
            f'<text x="{name_width + width + 6:.1f}" y="{y + 15}" class="axis">{_number(value)}</text>'
        )
    return (
        f'<figure class="chart"><figcaption>{escape(title)}<span class="unit">{escape(unit)}</span></figcaption>'
        f'<svg id="{chart_id}" data-chart="{chart_id}" data-points="{len([r for r in rows if r[1]])}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">{"".join(bars)}</svg></figure>'
    )
