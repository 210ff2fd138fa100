"""A self-contained HTML page with an inline SVG picture of a simulation (no matplotlib,
no scripts, no external assets), made to answer two questions at a glance:

- *When did each workload run against the carbon curve?* One panel per grid zone: the
  zone's intensity (gCO2e/kWh, labelled axis) over green bands where its jobs ran, then
  one row per workload of that zone
  with its allowed window (submit → deadline, grey) and its runs (or, for an inference
  budget, its variant switches), on one time axis with hour ticks (UTC).
- *How is each budget spent against its line?* One panel per budget: the spend since
  the start of each period against the budget (a dashed line), in the budget's own unit,
  with what always serving the best variant would have spent.

Everything is drawn inside the plot area: windows that run past it are clipped (their
tooltip keeps the real times), long names are shortened with the full name as a tooltip.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Mapping, Sequence

import numpy as np

from greenml.signals.base import IntensitySeries
from greenml.timeutil import format_time

PALETTE = ("#2b8a3e", "#1971c2", "#e8590c", "#9c36b5", "#c92a2a", "#0c8599", "#5f3dc4", "#868e96")
WIDTH, LEFT, RIGHT = 1100, 190, 30
PANEL_H, SPEND_H, ROW_H, TITLE_H, GAP, AXIS_H = 140, 120, 22, 24, 18, 50
FONT = 11
#: average advance of a sans-serif glyph, in em: what names are shortened by (a browser test
#: measures the real boxes)
CHAR_EM = 0.62
BUDGET_COLOUR, SPENT_COLOUR, COUNTERFACTUAL_COLOUR = "#e03131", "#0b7285", "#868e96"


@dataclass(frozen=True)
class Segment:
    start: datetime
    end: datetime
    label: str = ""        # e.g. a variant name; segments with the same label share a colour


@dataclass(frozen=True)
class Row:
    label: str
    segments: tuple[Segment, ...]
    submit: datetime | None = None
    deadline: datetime | None = None
    note: str = ""
    zone: str = ""         # the curve it runs against; "" = the picture's first zone


@dataclass(frozen=True)
class Spend:
    """How one budget is spent: ``spent[i]`` is the spend from the start of the period
    holding ``times[i]`` up to ``times[i]`` (so it restarts at 0 each period)."""
    label: str
    zone: str
    unit: str                                      # "g" | "kWh"
    budget: float                                  # per period
    period: str                                    # hour | day | week | month
    periods: tuple[tuple[datetime, datetime], ...]
    times: tuple[datetime, ...]
    spent: tuple[float, ...]
    counterfactual: tuple[float, ...] = ()         # same times; e.g. always the best variant
    counterfactual_label: str = ""


@dataclass
class Picture:
    title: str
    intensity: Mapping[str, IntensitySeries]       # zone → the series its workloads ran on
    start: datetime
    end: datetime
    rows: list[Row] = field(default_factory=list)
    budgets: list[Spend] = field(default_factory=list)
    table_html: str = ""
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ shared helpers

def esc(text: object) -> str:
    return html.escape(str(text))


def text_width(text: str, size: float = FONT) -> float:
    """An upper estimate of the rendered width of ``text`` at ``size`` px."""
    return len(text) * size * CHAR_EM


def fit(text: str, width: float, size: float = FONT) -> str:
    """``text``, shortened with an ellipsis to fit ``width`` px."""
    if text_width(text, size) <= width:
        return text
    keep = max(1, int(width / (size * CHAR_EM)) - 1)
    return text[:keep] + "…"


def label(x: float, y: float, text: str, width: float, *, anchor: str = "start", size: float = FONT,
          extra: str = "") -> str:
    """A <text> that fits ``width`` px; the full text is its tooltip when shortened."""
    shown = fit(text, width, size)
    tip = f"<title>{esc(text)}</title>" if shown != text else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size:g}"{extra}>'
            f'{tip}{esc(shown)}</text>')


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 × 10^k)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v < hi + step * 0.999:
        ticks.append(round(v, 10))
        v += step
    return ticks


def number(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 or v == int(v) else f"{v:,.3g}"


def y_axis(ticks: Sequence[float], y_of, *, left: float, right: float, unit: str, top: float, bottom: float) -> list[str]:
    """Horizontal grid lines with tick labels, and the unit as a vertical axis title."""
    out = []
    for v in ticks:
        y = y_of(v)
        out.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e9ecef"/>')
        out.append(label(left - 6, y + 4, number(v), 44, anchor="end", size=10))
    mid = (top + bottom) / 2
    out.append(f'<text x="{left - 56}" y="{mid:.1f}" font-size="10" text-anchor="middle" fill="#495057" '
               f'transform="rotate(-90 {left - 56} {mid:.1f})">{esc(unit)}</text>')
    return out


# ------------------------------------------------------------------ the simulation picture

def _x(t: datetime, p: Picture) -> float:
    span = (p.end - p.start).total_seconds() or 1.0
    return LEFT + (WIDTH - LEFT - RIGHT) * (t - p.start).total_seconds() / span


def _clip(t0: datetime, t1: datetime, p: Picture) -> tuple[float, float] | None:
    """The x range of [t0, t1) inside the plot, or None when it lies outside."""
    a, b = max(t0, p.start), min(t1, p.end)
    if b <= a:
        return None
    return _x(a, p), _x(b, p)


def hour_step(p: Picture) -> timedelta:
    """The tick spacing: the smallest of 1, 2, 3, 6, 12, 24 h leaving ≥ 26 px between ticks."""
    px_per_h = (WIDTH - LEFT - RIGHT) / max(1e-9, (p.end - p.start).total_seconds() / 3600)
    for h in (1, 2, 3, 6, 12, 24):
        if h * px_per_h >= 26:
            return timedelta(hours=h)
    return timedelta(days=math.ceil(26 / (24 * px_per_h)))


def _ticks(p: Picture, step: timedelta) -> list[datetime]:
    t = p.start.replace(minute=0, second=0, microsecond=0)
    while t < p.start:
        t += timedelta(hours=1)
    out = []
    while t <= p.end:
        if (t.hour * 3600) % step.total_seconds() == 0 or step >= timedelta(days=1) and t.hour == 0:
            out.append(t)
        t += timedelta(hours=1)
    return out


def _grid(p: Picture, top: float, bottom: float) -> list[str]:
    out = []
    for t in _ticks(p, hour_step(p)):
        x = _x(t, p)
        colour = "#ced4da" if t.hour == 0 else "#f1f3f5"
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" stroke="{colour}"/>')
    return out


def _time_axis(p: Picture, y: float) -> list[str]:
    """Hour ticks (UTC) with labels, day names centred on their day, and the axis title."""
    step = hour_step(p)
    out = [f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y}" y2="{y}" stroke="#495057"/>']
    for t in _ticks(p, step):
        x = _x(t, p)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y}" y2="{y + 4}" stroke="#495057"/>')
        if step < timedelta(days=1):
            out.append(f'<text x="{x:.1f}" y="{y + 14}" font-size="9" text-anchor="middle" fill="#495057">'
                       f'{t:%H}</text>')
    day = p.start.replace(hour=0, minute=0, second=0, microsecond=0)
    while day < p.end:
        span = _clip(day, day + timedelta(days=1), p)
        if span and span[1] - span[0] >= text_width("Mon 04 Mar", 10):
            out.append(f'<text x="{(span[0] + span[1]) / 2:.1f}" y="{y + 28}" font-size="10" '
                       f'text-anchor="middle">{day:%a %d %b}</text>')
        day += timedelta(days=1)
    out.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2:.1f}" y="{y + 44}" font-size="10" text-anchor="middle" '
               f'fill="#495057">time (UTC)</text>')
    return out


def _busy(rows: Sequence[Row]) -> list[tuple[datetime, datetime]]:
    """The union of the jobs' runs (unlabelled segments: variants are not runs)."""
    spans = sorted((seg.start, seg.end) for r in rows for seg in r.segments if not seg.label)
    out: list[tuple[datetime, datetime]] = []
    for s, e in spans:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _curve(p: Picture, zone: str, series: IntensitySeries, top: float, busy=()) -> list[str]:
    """The zone's intensity as steps, with a labelled y axis (gCO2e/kWh), over bands where
    a job of the zone was running (``busy``)."""
    s = series.window(p.start, p.end)
    out = [label(LEFT, top + 14, f"Grid carbon intensity, {zone} ({series.source}"
                 f"{', estimate' if series.estimate else ''})", WIDTH - LEFT - RIGHT, extra=' font-weight="bold"')]
    v = s.values
    if len(v) == 0:
        return out
    ticks = nice_ticks(float(np.min(v)), float(np.max(v)), 4)
    lo, hi = ticks[0], ticks[-1]
    y0, y1 = top + TITLE_H, top + TITLE_H + PANEL_H

    def y(val: float) -> float:
        return y1 - (y1 - y0) * (val - lo) / ((hi - lo) or 1.0)
    out += y_axis(ticks, y, left=LEFT, right=WIDTH - RIGHT, unit="gCO2e/kWh", top=y0, bottom=y1)
    for b0, b1 in busy:
        span = _clip(b0, b1, p)
        if span:
            out.append(f'<rect x="{span[0]:.1f}" y="{y0}" width="{max(1.0, span[1] - span[0]):.1f}" height="{y1 - y0}" '
                       f'fill="{PALETTE[0]}" opacity="0.13"><title>jobs running {format_time(b0)} … '
                       f'{format_time(b1)}</title></rect>')
    pts = []
    for i, val in enumerate(v):
        span = _clip(s.start + s.step * i, s.start + s.step * (i + 1), p)
        if span:
            pts.append(f"{span[0]:.1f},{y(val):.1f} {span[1]:.1f},{y(val):.1f}")
    out.append(f'<polyline fill="none" stroke="#343a40" stroke-width="1.3" points="{" ".join(pts)}">'
               f'<title>{esc(zone)} gCO2e/kWh</title></polyline>')
    return out


def _row(p: Picture, row: Row, y: float, colours: dict[str, str]) -> list[str]:
    out = [label(LEFT - 8, y + 15, row.label, LEFT - 16, anchor="end")]
    if row.submit and row.deadline:
        span = _clip(row.submit, row.deadline, p)
        if span:
            late = " (after the picture's end)" if row.deadline > p.end else ""
            out.append(f'<rect x="{span[0]:.1f}" y="{y + 3}" width="{max(1.0, span[1] - span[0]):.1f}" '
                       f'height="{ROW_H - 6}" fill="#f1f3f5" stroke="#ced4da"><title>allowed: '
                       f'{format_time(row.submit)} … {format_time(row.deadline)}{late}</title></rect>')
    for seg in row.segments:
        c = colours.setdefault(seg.label, PALETTE[len(colours) % len(PALETTE)])
        span = _clip(seg.start, seg.end, p)
        if span is None:
            continue
        tip = f"{seg.label + ': ' if seg.label else 'ran '}{format_time(seg.start)} … {format_time(seg.end)}"
        out.append(f'<rect x="{span[0]:.1f}" y="{y + 5}" width="{max(1.0, span[1] - span[0]):.1f}" '
                   f'height="{ROW_H - 10}" fill="{c}"><title>{esc(tip)}</title></rect>')
    return out


def _spend(p: Picture, b: Spend, top: float) -> list[str]:
    """Spend since each period's start (solid) against the budget line (dashed)."""
    out = [label(LEFT, top + 14, f"{b.label}: spent in each {b.period} against its budget of "
                 f"{number(b.budget)} {b.unit} ({b.zone})", WIDTH - LEFT - RIGHT, extra=' font-weight="bold"')]
    y0, y1 = top + TITLE_H, top + TITLE_H + SPEND_H
    top_v = max([b.budget, *b.spent, *b.counterfactual]) * 1.05
    ticks = nice_ticks(0.0, top_v, 4)

    def y(val: float) -> float:
        return y1 - (y1 - y0) * val / (ticks[-1] or 1.0)
    out += y_axis(ticks, y, left=LEFT, right=WIDTH - RIGHT, unit=f"{b.unit} per {b.period}", top=y0, bottom=y1)
    for ps, pe in b.periods:
        span = _clip(ps, pe, p)
        if span is None:
            continue
        out.append(f'<line x1="{span[0]:.1f}" x2="{span[1]:.1f}" y1="{y(b.budget):.1f}" y2="{y(b.budget):.1f}" '
                   f'stroke="{BUDGET_COLOUR}" stroke-width="1.5" stroke-dasharray="6 3"><title>budget '
                   f'{number(b.budget)} {esc(b.unit)}, {format_time(ps)} … {format_time(pe)}</title></line>')
        for values, colour, dash, what in ((b.counterfactual, COUNTERFACTUAL_COLOUR, ' stroke-dasharray="2 2"',
                                            b.counterfactual_label), (b.spent, SPENT_COLOUR, "", "spent")):
            pts = [f"{span[0]:.1f},{y(0):.1f}"] + [
                f"{_x(t, p):.1f},{y(v):.1f}" for t, v in zip(b.times, values) if ps < t <= pe and p.start <= t <= p.end]
            if len(pts) > 1:
                out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6"{dash} points="{" ".join(pts)}">'
                           f'<title>{esc(what)}</title></polyline>')
    return out


def render_svg(p: Picture) -> str:
    zones = list(p.intensity) or [""]
    by_zone = {z: [r for r in p.rows if (r.zone or zones[0]) == z] for z in zones}
    stray = [r for r in p.rows if (r.zone or zones[0]) not in by_zone]
    by_zone[zones[0]] += stray
    colours: dict[str, str] = {}
    body: list[str] = []
    y = 8.0
    for z in zones:
        if z in p.intensity:
            body += _curve(p, z, p.intensity[z], y, _busy(by_zone[z]))
            y += TITLE_H + PANEL_H + 6
        for r in by_zone[z]:
            body += _row(p, r, y, colours)
            y += ROW_H
        y += GAP
    for b in p.budgets:
        body += _spend(p, b, y)
        y += TITLE_H + SPEND_H + GAP
    height = y + AXIS_H
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
           f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="sans-serif" role="img" aria-label="{esc(p.title)}">']
    svg += _grid(p, 8, y) + body + _time_axis(p, y) + ["</svg>"]
    legend = [f'<span style="color:{c}">&#9632;</span> {esc(k or "ran")}' for k, c in colours.items()]
    p.notes.insert(0, "Rows: " + " &nbsp; ".join(legend) + " &nbsp; <span style=\"color:#adb5bd\">&#9632;</span> "
                   "allowed window (submit → deadline); a green band on a curve: a job of that zone running"
                   + (f". Budgets: <span style=\"color:{SPENT_COLOUR}\">&#9472;</span> spent since the period began, "
                      f"<span style=\"color:{BUDGET_COLOUR}\">- -</span> the budget, "
                      f"<span style=\"color:{COUNTERFACTUAL_COLOUR}\">&middot;&middot;</span> "
                      f"{esc(p.budgets[0].counterfactual_label or 'counterfactual')}" if p.budgets else ""))
    return "\n".join(svg)


PAGE_STYLE = ("body{font-family:sans-serif;margin:1.5em;max-width:1150px}svg{max-width:100%;height:auto}"
              "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #dee2e6;padding:3px 8px;"
              "text-align:right}td:first-child,th:first-child{text-align:left}")


def render_html(p: Picture) -> str:
    svg = render_svg(p)
    notes = "".join(f"<p>{n}</p>" for n in p.notes)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(p.title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body>"
            f"<h2>{esc(p.title)}</h2><p>{format_time(p.start)} … {format_time(p.end)} (UTC)</p>"
            + svg + notes + p.table_html + "</body></html>\n")


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
