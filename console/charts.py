"""The daily-consumption chart, drawn on the server as inline SVG (no script, no CDN):
one stacked bar per day, one colour per model, plus the same figures as a table for screen
readers. Heights are layout, not money: credits are only ever formatted by
``wallet.money``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from wallet import money

# Distinguishable, colour-blind-friendly (Okabe-Ito), dark enough on white.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#6B6B00", "#000"]
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 220, 56, 24, 10
MAX_DAYS = 92


@dataclass(frozen=True)
class Segment:
    model: str
    color: str
    y: float
    height: float
    label: str


@dataclass(frozen=True)
class Bar:
    day: dt.date
    x: float
    width: float
    total_label: str
    segments: list[Segment]


@dataclass
class Chart:
    bars: list[Bar] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    baseline: int = HEIGHT - BOTTOM

    @property
    def empty(self) -> bool:
        return not self.bars


def daily_chart(
    daily: dict[dt.date, dict[str, int]],
    *,
    start: dt.date | None,
    end: dt.date | None,
    models: list[str],
) -> Chart:
    """Bars for every day from ``start`` to ``end`` (defaults: the data's first and last
    day; at most the last ``MAX_DAYS``), stacked in the order of ``models``."""
    if not daily and (start is None or end is None):
        return Chart()
    first = start or min(daily)
    last = end or max(daily)
    first = max(first, last - dt.timedelta(days=MAX_DAYS - 1))
    days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    peak = max((sum(daily.get(d, {}).values()) for d in days), default=0) or 1
    plot_h = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT) / max(len(days), 1)
    chart = Chart(legend=[(m, colors[m]) for m in models])
    for i, day in enumerate(days):
        values = daily.get(day, {})
        y = float(HEIGHT - BOTTOM)
        segments = []
        for model in models:
            micro = values.get(model, 0)
            if micro <= 0:
                continue
            h = max(plot_h * micro / peak, 1.0)
            y -= h
            segments.append(
                Segment(model, colors[model], round(y, 2), round(h, 2), money.format_credits(micro))
            )
        chart.bars.append(
            Bar(
                day=day,
                x=round(LEFT + i * slot + slot * 0.15, 2),
                width=round(max(slot * 0.7, 1.0), 2),
                total_label=money.format_credits(sum(values.values())),
                segments=segments,
            )
        )
    for fraction in (0, 0.5, 1):
        chart.ticks.append(
            (
                round(HEIGHT - BOTTOM - plot_h * fraction, 2),
                money.format_credits(int(peak * fraction) if fraction < 1 else peak),
            )
        )
    return chart
