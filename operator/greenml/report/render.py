"""Render a showback report: Markdown (pipelines, PR comments) and self-contained HTML
with inline SVG (no plotting library: the operator image stays lean)."""
from __future__ import annotations

import html
from typing import Sequence

from greenml.planning.accounting import SECONDS_PER_YEAR
from greenml.report.model import NamespaceTotal, Report, Row, counterfactual_names
from greenml.sim.plot import label, nice_ticks, number, text_width, y_axis
from greenml.timeutil import format_time

NS_HEADER = ("namespace", "workloads", "energy kWh (IT)", "energy kWh (with PUE)", "operational gCO2e",
             "embodied gCO2e", "total gCO2e", "water L", "counterfactual gCO2e", "saved gCO2e", "saved %")
ROW_HEADER = ("namespace", "name", "kind", "basis", "energy kWh", "operational g", "embodied g", "total g",
              "counterfactual g", "saved %", "note")


def _g(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def ns_cells(t: NamespaceTotal) -> list[str]:
    a = t.actual
    cf = t.counterfactual
    return [t.namespace, str(t.workloads), _g(a.energy_kwh, 3), _g(a.facility_kwh, 3), _g(a.operational_g),
            _g(a.embodied_g), _g(a.total_g), _g(a.water_l), _g(cf.total_g if cf else None), _g(t.saved_g),
            _g(t.saved_percent)]


def row_cells(report: Report) -> list[list[str]]:
    out = []
    for r in sorted(report.rows, key=lambda r: (r.namespace, r.kind, r.name)):
        cf = r.savings.counterfactual.total_g if r.savings else None
        out.append([r.namespace, r.name, r.kind, r.basis, _g(r.actual.energy_kwh, 3), _g(r.actual.operational_g),
                    _g(r.actual.embodied_g), _g(r.actual.total_g), _g(cf),
                    _g(r.savings.percent if r.savings else None), r.note])
    return out


def methodology(report: Report) -> list[str]:
    p, hw = report.policy, report.policy.hardware
    cfs = counterfactual_names(report.rows)
    cf_text = ", ".join(f"{k} ({v} workloads)" for k, v in cfs.items()) or "none recorded: no savings are claimed"
    return [
        "Software Carbon Intensity (ISO/IEC 21031:2024): SCI = (E × I + M) per R; R = one training run "
        "(TrainingJob, or a Kueue Workload held by the carbon-window check) or one budget period (InferenceBudget).",
        f"E = IT energy × PUE {p.pue:g}. I = location-based **{p.kind}** grid intensity (gCO2e/kWh); "
        "average and marginal figures are never mixed.",
        f"M = embodied carbon of the reserved hardware, amortised over its life: {hw.gpu_embodied_kg:g} kgCO2e per GPU "
        f"over {hw.gpu_lifetime_years:g} years, plus {hw.server_embodied_kg:g} kgCO2e per {hw.gpus_per_server}-GPU "
        f"server over {hw.server_lifetime_years:g} years, in proportion to GPUs × time reserved "
        "(defaults: Luccioni et al., JMLR 24, 2023).",
        ("Water = IT energy × WUE " + f"{p.wue_l_per_kwh:g} L/kWh." if p.wue_l_per_kwh is not None
         else "Water: not reported (no WUE configured)."),
        f"Savings are against a stated counterfactual, computed on the same intensity data, both figures shown: "
        f"{cf_text}. Embodied carbon is the same in both and cancels in the difference.",
        "Basis: *measured* = the operator's status (energy from the power model or Prometheus); *planned* savings "
        "compare the plan with running immediately on the same forecast; *simulated* = replayed on the actual series.",
        f"Seconds per year for amortisation: {SECONDS_PER_YEAR:,.0f} (365.25 days).",
    ]


def _period(report: Report) -> str:
    if report.start is None and report.end is None:
        return "all the data (no --since/--until)"
    return f"{format_time(report.start) if report.start else '…'} – {format_time(report.end) if report.end else '…'}"


BUDGET_HEADER = ("namespace", "name", "budget", "periods", "within budget", "spent per period", "most spent",
                 "note")


def _amount(v: float, unit: str) -> str:
    return f"{v:,.0f} {unit}" if unit == "g" else f"{v:,.3g} {unit}"


def budget_cells(r: Row) -> list[str]:
    b = r.budget
    assert b is not None
    spent = [p.spent for p in b.periods]
    most = max(spent, default=0.0)
    limit = f"{_amount(b.limit, b.unit)} per {b.period}" if b.limit is not None else f"unknown (per {b.period})"
    share = f" ({100 * most / b.limit:.0f} % of budget)" if b.limit else ""
    mean = f"{_amount(sum(spent) / len(spent), b.unit)} mean" if spent else "—"
    projected = [p.projected for p in b.periods if p.projected is not None]
    note = f"projected {_amount(projected[-1], b.unit)} this period" if projected else ""
    return [r.namespace, r.name, limit, str(len(b.periods)), f"{b.within}/{len(b.periods)}", mean,
            _amount(most, b.unit) + share, note]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]]


def markdown(report: Report) -> str:
    lines = [f"# {report.title}", "", f"Source: {report.source}  ", f"Period: {_period(report)}", "",
             "## Per namespace", ""]
    lines += _md_table(NS_HEADER, [ns_cells(t) for t in report.namespaces()] + [ns_cells(report.total())])
    lines += ["", "## Workloads", ""]
    lines += _md_table(ROW_HEADER, row_cells(report)) if report.rows else ["No workloads in this period."]
    if report.budgets():
        lines += ["", "## Budgets", ""] + _md_table(BUDGET_HEADER, [budget_cells(r) for r in report.budgets()])
    lines += ["", "## Methodology", ""] + [f"- {m}" for m in methodology(report)]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ HTML + SVG
COLORS = {"operational": "#2e7d32", "embodied": "#8d6e63", "counterfactual": "#c62828"}
BUDGET_COLORS = {"within": "#0b7285", "over": "#e03131", "line": "#e03131"}
SVG_W = 960


def _svg_open(height: float, label_text: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_W}" height="{height:.0f}" '
            f'viewBox="0 0 {SVG_W} {height:.0f}" role="img" aria-label="{html.escape(label_text)}" '
            f'font-family="sans-serif" font-size="12">')


def bars_svg(totals: Sequence[NamespaceTotal], width: int = SVG_W, counterfactual: str = "") -> str:
    """Per namespace: the stacked operational + embodied bar, the counterfactual under it,
    on one labelled gCO2e axis; labels fit their space (long names shortened, full name as tooltip)."""
    if not totals:
        return ""
    bar_h, cf_h, gap = 22, 12, 18
    label_w = min(220.0, max(text_width(t.namespace, 12) for t in totals) + 12)
    values = [(t.actual.total_g, t.counterfactual.total_g if t.counterfactual else None) for t in totals]
    top = max(max(a, c or 0.0) for a, c in values) or 1.0
    ticks = nice_ticks(0.0, top, 5)
    right_w = max(text_width(f"{_g(v, 0)} g counterfactual", 12) for v in [top]) + 16
    plot_w = width - label_w - right_w
    scale = plot_w / ticks[-1]
    rows_h = len(totals) * (bar_h + cf_h + 4 + gap)
    height = rows_h + 90
    out = [_svg_open(height, "carbon per namespace, gCO2e")]
    for v in ticks:
        x = label_w + v * scale
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="6" y2="{rows_h + 6}" stroke="#e9ecef"/>')
        out.append(f'<text x="{x:.1f}" y="{rows_h + 22}" text-anchor="middle" font-size="11">{number(v)}</text>')
    out.append(f'<text x="{label_w + plot_w / 2:.1f}" y="{rows_h + 40}" text-anchor="middle" font-size="11" '
               f'fill="#495057">gCO2e (operational + embodied)</text>')
    y = 10.0
    for t in totals:
        a = t.actual
        op_w, em_w = a.operational_g * scale, a.embodied_g * scale
        out.append(label(0, y + bar_h - 6, t.namespace, label_w - 10, size=12))
        out.append(f'<rect x="{label_w}" y="{y}" width="{op_w:.1f}" height="{bar_h}" fill="{COLORS["operational"]}">'
                   f'<title>operational {a.operational_g:,.1f} g</title></rect>')
        out.append(f'<rect x="{label_w + op_w:.1f}" y="{y}" width="{em_w:.1f}" height="{bar_h}" '
                   f'fill="{COLORS["embodied"]}"><title>embodied {a.embodied_g:,.1f} g</title></rect>')
        out.append(f'<text x="{label_w + op_w + em_w + 4:.1f}" y="{y + bar_h - 6}">{a.total_g:,.0f} g</text>')
        if t.counterfactual is not None:
            cw = t.counterfactual.total_g * scale
            cy = y + bar_h + 4
            out.append(f'<rect x="{label_w}" y="{cy}" width="{cw:.1f}" height="{cf_h}" '
                       f'fill="{COLORS["counterfactual"]}" opacity="0.55"><title>counterfactual '
                       f'{t.counterfactual.total_g:,.1f} g</title></rect>')
            out.append(f'<text x="{label_w + cw + 4:.1f}" y="{cy + cf_h - 1}" font-size="11">'
                       f'{t.counterfactual.total_g:,.0f} g counterfactual</text>')
        y += bar_h + cf_h + 4 + gap
    x = label_w
    legend = [("operational", "operational"), ("embodied", "embodied (hardware, amortised)")]
    if any(c is not None for _, c in values):
        legend.append(("counterfactual", f"counterfactual ({counterfactual})" if counterfactual else "counterfactual"))
    for key, text in legend:
        out.append(f'<rect x="{x:.1f}" y="{height - 22}" width="12" height="12" fill="{COLORS[key]}"/>'
                   f'<text x="{x + 16:.1f}" y="{height - 12}">{text}</text>')
        x += 16 + text_width(text, 12) + 24
    out.append("</svg>")
    return "\n".join(out)


def budget_svg(r: Row) -> str:
    """One budget: a bar per period of what was spent, against the budget (dashed line);
    red where a period went over."""
    b = r.budget
    if b is None or not b.periods:
        return ""
    left, right, top_pad, plot_h = 80, 20, 26, 150
    plot_w = SVG_W - left - right
    top = max([b.limit or 0.0] + [p.spent for p in b.periods] + [p.projected or 0.0 for p in b.periods]) * 1.05
    ticks = nice_ticks(0.0, top or 1.0, 4)
    y1 = top_pad + plot_h

    def y(v: float) -> float:
        return y1 - plot_h * v / ticks[-1]
    title = (f"{r.namespace}/{r.name}: spent per {b.period} against its budget of "
             f"{_amount(b.limit, b.unit) if b.limit is not None else 'unknown'}")
    out = [_svg_open(y1 + 44, title), label(left, 16, title, plot_w, extra=' font-weight="bold"')]
    out += y_axis(ticks, y, left=left, right=SVG_W - right, unit=f"{b.unit} per {b.period}", top=top_pad, bottom=y1)
    slot = plot_w / len(b.periods)
    fmt = "%d %b %H:%M" if b.period == "hour" else "%d %b"
    every = max(1, int(text_width("00 Mon 00:00", 10) // slot) + 1)
    for i, p in enumerate(b.periods):
        x = left + slot * i + slot * 0.15
        over = b.limit is not None and p.spent > b.limit * (1 + 1e-9)
        when = f"{format_time(p.start) if p.start else '?'} … {format_time(p.end) if p.end else '?'}"
        partial = "" if p.complete else " (partial: the data starts or ends inside this period)"
        pale = "" if p.complete else ' opacity="0.35"'
        out.append(f'<rect x="{x:.1f}" y="{y(p.spent):.1f}" width="{slot * 0.7:.1f}" height="{y1 - y(p.spent):.1f}" '
                   f'fill="{BUDGET_COLORS["over" if over else "within"]}"{pale}>'
                   f'<title>{html.escape(when)}: {_amount(p.spent, b.unit)}{" — over budget" if over else ""}'
                   f'{partial}</title></rect>')
        if p.projected is not None:
            out.append(f'<rect x="{x:.1f}" y="{y(p.projected):.1f}" width="{slot * 0.7:.1f}" '
                       f'height="{y1 - y(p.projected):.1f}" fill="none" stroke="#495057" stroke-dasharray="3 2">'
                       f'<title>projected for the period: {_amount(p.projected, b.unit)}</title></rect>')
        if p.start is not None and i % every == 0:
            out.append(f'<text x="{left + slot * (i + 0.5):.1f}" y="{y1 + 16}" text-anchor="middle" '
                       f'font-size="10">{p.start:{fmt}}</text>')
    if b.limit is not None:
        out.append(f'<line x1="{left}" x2="{SVG_W - right}" y1="{y(b.limit):.1f}" y2="{y(b.limit):.1f}" '
                   f'stroke="{BUDGET_COLORS["line"]}" stroke-width="1.5" stroke-dasharray="6 3">'
                   f'<title>budget {_amount(b.limit, b.unit)} per {b.period}</title></line>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{y1 + 34}" text-anchor="middle" font-size="10" '
               f'fill="#495057">{b.period} beginning (UTC)</text>')
    out.append("</svg>")
    return "\n".join(out)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(report: Report) -> str:
    ns = report.namespaces()
    method = "".join(f"<li>{html.escape(m).replace('**', '')}</li>" for m in methodology(report))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    budgets = report.budgets()
    budget_part = ("<h2>Budgets</h2><p>Each bar: what one period spent; dashed line: the budget; red: over it; "
                   "pale: a partial period (the data starts or ends inside it).</p>"
                   + "".join(budget_svg(r) for r in budgets)
                   + _html_table(BUDGET_HEADER, [budget_cells(r) for r in budgets])) if budgets else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(report.title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}svg{{max-width:100%;height:auto;display:block;margin:.5em 0}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style>
</head><body>
<h1>{html.escape(report.title)}</h1>
<p>Source: {html.escape(report.source)}<br>Period: {html.escape(_period(report))}</p>
<h2>Carbon per namespace (gCO2e)</h2>
{bars_svg(ns, counterfactual=", ".join(counterfactual_names(report.rows)))}
<h2>Per namespace</h2>
{_html_table(NS_HEADER, [ns_cells(t) for t in ns] + [ns_cells(report.total())])}
<h2>Workloads</h2>
{_html_table(ROW_HEADER, row_cells(report))}
{budget_part}
<h2>Methodology</h2><ul>{method}</ul>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""
