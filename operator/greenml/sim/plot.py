"""A self-contained HTML page with an inline SVG picture of a simulation (no matplotlib,
no scripts, no external assets): carbon intensity over time on top, then one row per
workload with its run windows (or, for an inference budget, its variant switches),
submit and deadline marks.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Sequence

import numpy as np

from greenml.signals.base import IntensitySeries
from greenml.timeutil import format_time

PALETTE = ("#2b8a3e", "#1971c2", "#e8590c", "#9c36b5", "#c92a2a", "#0c8599", "#5f3dc4", "#868e96")
WIDTH, LEFT, RIGHT, CHART_H, ROW_H = 1100, 190, 20, 180, 22


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


@dataclass
class Picture:
    title: str
    intensity: IntensitySeries
    start: datetime
    end: datetime
    rows: list[Row] = field(default_factory=list)
    table_html: str = ""
    notes: list[str] = field(default_factory=list)


def _x(t: datetime, p: Picture) -> float:
    span = (p.end - p.start).total_seconds() or 1.0
    return LEFT + (WIDTH - LEFT - RIGHT) * (t - p.start).total_seconds() / span


def _intensity_svg(p: Picture) -> list[str]:
    s = p.intensity.window(p.start, p.end)
    v = s.values
    if len(v) == 0:
        return []
    lo, hi = float(np.min(v)), float(np.max(v))
    pad = (hi - lo) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad

    def y(val: float) -> float:
        return 10 + (CHART_H - 30) * (1 - (val - lo) / (hi - lo))
    pts = []
    for i, val in enumerate(v):
        t0, t1 = s.start + s.step * i, s.start + s.step * (i + 1)
        pts.append(f"{_x(max(t0, p.start), p):.1f},{y(val):.1f} {_x(min(t1, p.end), p):.1f},{y(val):.1f}")
    out = [f'<polyline fill="none" stroke="#495057" stroke-width="1.2" points="{" ".join(pts)}"/>']
    for val in (lo + pad, (lo + hi) / 2, hi - pad):
        out.append(f'<text x="{LEFT - 6}" y="{y(val) + 4:.1f}" text-anchor="end" font-size="11">{val:.0f}</text>')
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(val):.1f}" y2="{y(val):.1f}" stroke="#dee2e6"/>')
    out.append(f'<text x="8" y="16" font-size="12" font-weight="bold">gCO2e/kWh ({html.escape(s.source)})</text>')
    return out


def _day_grid(p: Picture, height: float) -> list[str]:
    out = []
    day = p.start.replace(hour=0, minute=0, second=0, microsecond=0)
    while day <= p.end:
        if day >= p.start:
            x = _x(day, p)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" stroke="#e9ecef"/>')
            out.append(f'<text x="{x + 3:.1f}" y="{height - 4}" font-size="10" fill="#868e96">{day:%a %d %b}</text>')
        day += timedelta(days=1)
    return out


def _rows_svg(p: Picture) -> list[str]:
    colours: dict[str, str] = {}
    out = []
    for r, row in enumerate(p.rows):
        y = CHART_H + 10 + r * ROW_H
        out.append(f'<text x="{LEFT - 6}" y="{y + 14}" text-anchor="end" font-size="11">{html.escape(row.label)}</text>')
        if row.submit and row.deadline:
            x0, x1 = _x(row.submit, p), _x(row.deadline, p)
            out.append(f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(1.0, x1 - x0):.1f}" height="{ROW_H - 6}" '
                       f'fill="#f1f3f5" stroke="#ced4da"><title>allowed: {format_time(row.submit)} … '
                       f'{format_time(row.deadline)}</title></rect>')
        for seg in row.segments:
            c = colours.setdefault(seg.label, PALETTE[len(colours) % len(PALETTE)])
            x0, x1 = _x(seg.start, p), _x(seg.end, p)
            tip = f"{seg.label + ': ' if seg.label else ''}{format_time(seg.start)} … {format_time(seg.end)}"
            out.append(f'<rect x="{x0:.1f}" y="{y + 5}" width="{max(1.0, x1 - x0):.1f}" height="{ROW_H - 10}" '
                       f'fill="{c}"><title>{html.escape(tip)}</title></rect>')
    legend = [f'<span style="color:{c}">&#9632;</span> {html.escape(k or "run")}' for k, c in colours.items()]
    p.notes.insert(0, "Legend: " + " &nbsp; ".join(legend) + " &nbsp; (grey: allowed window, submit → deadline)")
    return out


def render_html(p: Picture) -> str:
    height = CHART_H + 20 + ROW_H * len(p.rows) + 10
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">']
    svg += _day_grid(p, height) + _intensity_svg(p) + _rows_svg(p) + ["</svg>"]
    notes = "".join(f"<p>{n}</p>" for n in p.notes)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(p.title)}</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #dee2e6;padding:3px 8px;text-align:right}td:first-child,th:first-child"
            "{text-align:left}</style></head><body>"
            f"<h2>{html.escape(p.title)}</h2><p>{format_time(p.start)} … {format_time(p.end)}</p>"
            + "\n".join(svg) + notes + p.table_html + "</body></html>\n")


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
