"""Render a showback report: Markdown (pipelines, PR comments) and self-contained HTML
with inline SVG (no plotting library: the operator image stays lean)."""
from __future__ import annotations

import html
from typing import Sequence

from greenml.planning.accounting import SECONDS_PER_YEAR
from greenml.report.model import NamespaceTotal, Report, counterfactual_names
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
        "(TrainingJob) or one budget period (InferenceBudget).",
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
        return "all time"
    return f"{format_time(report.start) if report.start else '…'} – {format_time(report.end) if report.end else '…'}"


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
    lines += ["", "## Methodology", ""] + [f"- {m}" for m in methodology(report)]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ HTML + SVG
COLORS = {"operational": "#2e7d32", "embodied": "#8d6e63", "counterfactual": "#c62828"}


def bars_svg(totals: Sequence[NamespaceTotal], width: int = 720) -> str:
    """Per namespace: stacked operational+embodied bar, and the counterfactual beside it."""
    if not totals:
        return ""
    bar_h, gap, label_w = 16, 14, 150
    top = max(max(t.actual.total_g, t.counterfactual.total_g if t.counterfactual else 0.0) for t in totals) or 1.0
    scale = (width - label_w - 90) / top
    height = len(totals) * (2 * bar_h + gap) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="carbon per namespace" font-family="sans-serif" font-size="12">']
    y = 10
    for t in totals:
        a = t.actual
        op_w, em_w = a.operational_g * scale, a.embodied_g * scale
        out.append(f'<text x="0" y="{y + bar_h + 4}">{html.escape(t.namespace)}</text>')
        out.append(f'<rect x="{label_w}" y="{y}" width="{op_w:.1f}" height="{bar_h}" fill="{COLORS["operational"]}">'
                   f'<title>operational {a.operational_g:,.1f} g</title></rect>')
        out.append(f'<rect x="{label_w + op_w:.1f}" y="{y}" width="{em_w:.1f}" height="{bar_h}" '
                   f'fill="{COLORS["embodied"]}"><title>embodied {a.embodied_g:,.1f} g</title></rect>')
        out.append(f'<text x="{label_w + op_w + em_w + 4:.1f}" y="{y + 12}">{a.total_g:,.0f} g</text>')
        if t.counterfactual is not None:
            cw = t.counterfactual.total_g * scale
            out.append(f'<rect x="{label_w}" y="{y + bar_h + 2}" width="{cw:.1f}" height="{bar_h - 4}" '
                       f'fill="{COLORS["counterfactual"]}" opacity="0.55"><title>counterfactual '
                       f'{t.counterfactual.total_g:,.1f} g</title></rect>')
            out.append(f'<text x="{label_w + cw + 4:.1f}" y="{y + 2 * bar_h - 2}">{t.counterfactual.total_g:,.0f} g '
                       f'(counterfactual)</text>')
        y += 2 * bar_h + gap
    legend = [("operational", "operational"), ("embodied", "embodied"), ("counterfactual", "counterfactual")]
    for i, (key, text) in enumerate(legend):
        x = label_w + i * 150
        out.append(f'<rect x="{x}" y="{y + 4}" width="12" height="12" fill="{COLORS[key]}"/>'
                   f'<text x="{x + 16}" y="{y + 14}">{text}</text>')
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
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(report.title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style>
</head><body>
<h1>{html.escape(report.title)}</h1>
<p>Source: {html.escape(report.source)}<br>Period: {html.escape(_period(report))}</p>
<h2>Carbon per namespace (gCO2e)</h2>
{bars_svg(ns)}
<h2>Per namespace</h2>
{_html_table(NS_HEADER, [ns_cells(t) for t in ns] + [ns_cells(report.total())])}
<h2>Workloads</h2>
{_html_table(ROW_HEADER, row_cells(report))}
<h2>Methodology</h2><ul>{method}</ul>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""
