"""The pictures answer their questions (issue 16, item 8), read from the SVG itself:

- the simulation page: when each job ran against its own zone's intensity curve (hour
  ticks, labelled axes with units, nothing drawn outside the plot), and how each budget is
  spent against its budget line, per budget, in its own zone and unit;
- the report: a readable bar chart with labels inside the picture, an inference report
  that lists workloads (not periods), states its period and shows the budget, and
  ``--from-sim --since 30d`` counted back from the data's end, not today.

A real browser checks the rendered boxes in tests/unit/test_pages_browser.py.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

import pytest

from greenml.cli import main
from greenml.planning.accounting import AccountingPolicy
from greenml.report import Report, html_page, markdown, rows_from_sim
from greenml.signals.base import IntensitySeries
from greenml.sim import plot

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2024, 3, 4, tzinfo=timezone.utc)


def svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]


def texts(svg: ET.Element) -> list[tuple[float, float, str, ET.Element]]:
    return [(float(t.get("x")), float(t.get("y")), "".join(t.itertext()).strip(), t) for t in svg.iter(f"{SVG}text")]


def shown(t: ET.Element) -> str:
    """The text a <text> shows (its <title> tooltip left out)."""
    return (t.text or "") + "".join(c.tail or "" for c in t)


def text_extent(x: float, t: ET.Element) -> tuple[float, float]:
    w = plot.text_width(shown(t), float(t.get("font-size", 12)))
    return {"start": (x, x + w), "middle": (x - w / 2, x + w / 2), "end": (x - w, x)}[t.get("text-anchor", "start")]


def assert_inside(svg: ET.Element) -> None:
    """Every rect and (estimated) text box lies within the SVG's width and height."""
    width, height = float(svg.get("width")), float(svg.get("height"))
    for r in svg.iter(f"{SVG}rect"):
        x, w = float(r.get("x")), float(r.get("width"))
        assert 0 <= x and x + w <= width + 0.5, ET.tostring(r)[:200]
    for x, y, _, t in texts(svg):
        if t.get("transform"):
            continue
        lo, hi = text_extent(x, t)
        assert lo >= -0.5 and hi <= width + 0.5 and 0 < y <= height, (shown(t), lo, hi, width)


def series(values, start=T0, step=timedelta(hours=1), source="embedded DE") -> IntensitySeries:
    return IntensitySeries(start, step, values, source=source, estimate=True)


def picture(**kw) -> plot.Picture:
    base = dict(title="t", intensity={"DE": series([300 + 50 * (i % 24 > 12) for i in range(24 * 8)])},
                start=T0, end=T0 + timedelta(days=7))
    return plot.Picture(**{**base, **kw})


# ------------------------------------------------------------------ the simulation page

@pytest.fixture(scope="module")
def default_page(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--output-dir", str(out)]) == 0
    return (out / "greenml-simulation.html").read_text()


def test_time_axis_has_hour_ticks_day_names_and_a_title(default_page):
    (svg,) = svgs(default_page)
    labels = [s for _, _, s, _ in texts(svg)]
    assert sum(s in ("00", "06", "12", "18") for s in labels) >= 7 * 4        # every 6 h over the week
    assert {"Mon 04 Mar", "Sun 10 Mar"} <= set(labels) and "time (UTC)" in labels
    assert "Mon 11 Mar" not in labels        # the day after the plot is not half-drawn at its edge


def test_every_curve_has_a_labelled_axis_with_units(default_page):
    (svg,) = svgs(default_page)
    labels = [s for _, _, s, _ in texts(svg)]
    assert labels.count("gCO2e/kWh") == 2                                     # DE and GB panels
    de_title = next(s for s in labels if s.startswith("Grid carbon intensity, DE"))
    assert "estimate" in de_title
    ticks = [s for s in labels if re.fullmatch(r"\d{3}", s)]
    assert len(ticks) >= 8                                                     # ≥ 4 ticks per curve


def test_each_row_sits_under_its_own_zones_curve(default_page):
    """image-classifier has a GB budget: it is drawn under the GB curve, the DE jobs under DE."""
    (svg,) = svgs(default_page)
    y = {s: yy for _, yy, s, _ in texts(svg)}
    de = next(v for k, v in y.items() if k.startswith("Grid carbon intensity, DE"))
    gb = next(v for k, v in y.items() if k.startswith("Grid carbon intensity, GB"))
    assert de < y["finetune-llama-1"] < y["chat-assistant"] < gb < y["image-classifier"]


def test_the_curve_shows_when_jobs_ran():
    """Green bands on the zone's curve where its jobs ran (variants of a budget are not runs)."""
    runs = (plot.Segment(T0 + timedelta(hours=2), T0 + timedelta(hours=5)),
            plot.Segment(T0 + timedelta(hours=4), T0 + timedelta(hours=8)))
    variants = (plot.Segment(T0, T0 + timedelta(days=7), "int8"),)
    (svg,) = svgs(plot.render_html(picture(rows=[plot.Row("a", runs), plot.Row("b", variants)])))
    bands = [r for r in svg.iter(f"{SVG}rect") if r.get("opacity") == "0.13"]
    assert len(bands) == 1                                          # the overlapping runs merged
    x0, x1 = plot._x(T0 + timedelta(hours=2), picture()), plot._x(T0 + timedelta(hours=8), picture())
    assert float(bands[0].get("x")) == pytest.approx(x0, abs=0.1)
    assert float(bands[0].get("width")) == pytest.approx(x1 - x0, abs=0.1)


def test_each_budget_is_drawn_against_its_line_in_its_unit(default_page):
    (svg,) = svgs(default_page)
    titles = [s for _, _, s, _ in texts(svg) if ": spent in each " in s]
    assert titles == ["image-classifier: spent in each week against its budget of 1.5 kWh (GB)",
                      "chat-assistant: spent in each day against its budget of 2,000 g (DE)"]
    labels = [s for _, _, s, _ in texts(svg)]
    assert "kWh per week" in labels and "g per day" in labels
    budget_lines = [ln for ln in svg.iter(f"{SVG}line") if ln.get("stroke") == plot.BUDGET_COLOUR]
    assert len(budget_lines) >= 1 + 7                                          # a week; each day of the week
    spent = [p for p in svg.iter(f"{SVG}polyline") if p.get("stroke") == plot.SPENT_COLOUR]
    assert len(spent) >= 2


def test_nothing_is_drawn_outside_the_picture(default_page):
    (svg,) = svgs(default_page)
    assert_inside(svg)


def test_windows_past_the_plot_are_clipped_to_it():
    late = plot.Row("late", (plot.Segment(T0 + timedelta(days=6, hours=20), T0 + timedelta(days=8)),),
                    submit=T0 + timedelta(days=5), deadline=T0 + timedelta(days=9))
    early = plot.Row("early", (plot.Segment(T0 - timedelta(days=1), T0 + timedelta(hours=2)),),
                     submit=T0 - timedelta(days=2), deadline=T0 + timedelta(hours=5))
    gone = plot.Row("gone", (plot.Segment(T0 + timedelta(days=10), T0 + timedelta(days=11)),))
    (svg,) = svgs(plot.render_html(picture(rows=[late, early, gone])))
    rects = [r for r in svg.iter(f"{SVG}rect")]
    right, left = plot.WIDTH - plot.RIGHT, plot.LEFT
    assert all(left - 0.01 <= float(r.get("x")) and float(r.get("x")) + float(r.get("width")) <= right + 0.01
               for r in rects)
    rows = [r for r in rects if r.get("opacity") is None]          # not the curve's bands
    assert len(rows) == 4                                          # two windows, two runs; "gone" draws none
    tips = ["".join(r.itertext()) for r in rects]
    assert any("2024-03-13T00:00:00Z (after the picture's end)" in t for t in tips)   # the real deadline


def test_long_names_are_shortened_with_the_full_name_as_tooltip():
    name = "a-very-long-trainingjob-name-from-a-generator-0123456789"
    (svg,) = svgs(plot.render_html(picture(rows=[plot.Row(name, ())])))
    (t,) = [t for _, _, s, t in texts(svg) if s.startswith("a-very")]
    assert shown(t).endswith("…") and t.find(f"{SVG}title").text == name
    assert_inside(svg)


def test_nice_ticks():
    assert plot.nice_ticks(302, 459, 4) == [300, 350, 400, 450, 500]
    assert plot.nice_ticks(0, 2.1, 4) == [0, 1, 2, 3]


# ------------------------------------------------------------------ the report

RESULT = {
    "jobs": [{"name": f"{ns}/{n}", "runs": [["2024-01-01T00:00:00Z", "2024-01-01T02:00:00Z"]], "grams": g,
              "run_now_grams": g * 1.3, "deadline_met": True, "gpus": 8, "watts": 3200.0}
             for ns, n, g in (("ml", "a", 2400.0), ("a-namespace-with-a-rather-long-name-for-teams", "b", 90.0))]
    + [{"name": "ml/late", "runs": [["2024-01-20T00:00:00Z", "2024-01-20T02:00:00Z"]], "grams": 500.0,
        "run_now_grams": 600.0, "deadline_met": True, "gpus": 8, "watts": 3200.0}],
    "summary": {"policy": "greenml", "forecast": "perfect", "jobs": 3, "deadlines_met": 3,
                "start": "2024-01-01T00:00:00Z", "end": "2024-01-21T00:00:00Z"},
}


def _inference_result(days=5, budget=2000.0, over_day=3) -> dict:
    start = datetime(2023, 6, 5, tzinfo=timezone.utc)
    periods = [{"start": f"{start + timedelta(days=d):%Y-%m-%dT%H:%M:%SZ}",
                "end": f"{start + timedelta(days=d + 1):%Y-%m-%dT%H:%M:%SZ}",
                "grams": budget * (1.1 if d == over_day else 0.9), "kwh": 5.0, "budget_grams": budget,
                "budget_kwh": None, "within_budget": d != over_day, "complete": True} for d in range(days)]
    steps = [{"time": f"{start + timedelta(hours=h):%Y-%m-%dT%H:%M:%SZ}", "variant": "v", "grams": 1.0, "kwh": 0.1}
             for h in range(24 * days)]
    return {"steps": steps, "periods": periods, "summary": {}, "name": "chat-assistant", "period": "day"}


def _report(tmp_path, capsys, result, *extra):
    (tmp_path / "r.json").write_text(json.dumps(result))
    rc = main(["report", "--from-sim", str(tmp_path / "r.json"), *extra])
    return rc, capsys.readouterr()


def test_report_bar_chart_is_readable_and_unclipped():
    page = html_page(Report("t", "simulation", None, None, AccountingPolicy(),
                            tuple(rows_from_sim(RESULT, AccountingPolicy()))))
    bars = svgs(page)[0]
    assert float(bars.get("width")) >= 900
    heights = {float(r.get("height")) for r in bars.iter(f"{SVG}rect") if r.get("fill") != "none"}
    assert max(heights) >= 20
    labels = [s for _, _, s, _ in texts(bars)]
    assert "gCO2e (operational + embodied)" in labels and "counterfactual (run-now)" in labels
    assert any(s.endswith(" g counterfactual") for s in labels)
    assert_inside(bars)


def test_inference_report_lists_the_workload_states_the_period_and_shows_the_budget(tmp_path, capsys):
    rc, out = _report(tmp_path, capsys, _inference_result())
    assert rc == 0
    md = out.out
    assert "Period: 2023-06-05T00:00:00Z – 2023-06-10T00:00:00Z" in md            # the data's own range
    workloads = md.split("## Workloads")[1].split("## Budgets")[0]
    assert "| chat-assistant | InferenceBudget |" in workloads and "[0]" not in workloads
    assert "5 day periods, 4 within budget, 1 OVER BUDGET" in workloads
    budgets = md.split("## Budgets")[1].split("## Methodology")[0]
    assert "| simulation | chat-assistant | 2,000 g per day | 5 | 4/5 |" in budgets
    assert "2,200 g (110 % of budget)" in budgets
    page = html_page_of(tmp_path, capsys, _inference_result())
    budget_svg = next(s for s in svgs(page) if "budget of 2,000 g" in "".join(s.itertext()))
    over = [r for r in budget_svg.iter(f"{SVG}rect") if r.get("fill") == "#e03131"]
    assert len(over) == 1                                                            # the one day over, in red
    assert any(ln.get("stroke-dasharray") for ln in budget_svg.iter(f"{SVG}line"))    # the budget line
    assert_inside(budget_svg)


def html_page_of(tmp_path, capsys, result) -> str:
    rc, _ = _report(tmp_path, capsys, result, "--format", "html", "-o", str(tmp_path / "r.html"))
    assert rc == 0
    return (tmp_path / "r.html").read_text()


def test_since_counts_back_from_the_datas_end_not_today(tmp_path, capsys):
    rc, out = _report(tmp_path, capsys, RESULT, "--since", "30d")
    assert rc == 0 and "Period: 2024-01-01T00:00:00Z – 2024-01-21T00:00:00Z" in out.out     # not 2026
    rc, out = _report(tmp_path, capsys, RESULT, "--since", "3d")
    assert rc == 0 and "Period: 2024-01-18T00:00:00Z – 2024-01-21T00:00:00Z" in out.out
    names = [ln.split("|")[2].strip() for ln in out.out.split("## Workloads")[1].splitlines() if ln.startswith("| ")][1:]
    assert names == ["late"]                                        # only what ran in those 3 days
    rc, out = _report(tmp_path, capsys, _inference_result(), "--since", "2d")
    assert rc == 0 and "Period: 2023-06-08T00:00:00Z – 2023-06-10T00:00:00Z" in out.out
    assert "2 day periods, 1 within budget, 1 OVER BUDGET" in out.out
    rc, out = _report(tmp_path, capsys, _inference_result(), "--since", "2d", "--format", "json")
    (w,) = json.loads(out.out)["workloads"]
    assert w["name"] == "chat-assistant" and w["budget"]["limit"] == 2000.0 and w["budget"]["within"] == 1
    assert [p["start"] for p in w["budget"]["periods"]] == ["2023-06-08T00:00:00+00:00", "2023-06-09T00:00:00+00:00"]


def test_since_outside_the_data_is_an_error(tmp_path, capsys):
    rc, out = _report(tmp_path, capsys, RESULT, "--since", "2025-01-01T00:00:00Z")
    assert rc == 2 and "select nothing of" in out.err and "2024-01-21" in out.err


def test_markdown_report_states_the_period_of_a_shifting_result():
    rows = rows_from_sim(RESULT, AccountingPolicy())
    md = markdown(Report("t", "s", datetime(2024, 1, 1, tzinfo=timezone.utc),
                         datetime(2024, 1, 21, tzinfo=timezone.utc), AccountingPolicy(), tuple(rows)))
    assert "Period: 2024-01-01T00:00:00Z – 2024-01-21T00:00:00Z" in md and "## Budgets" not in md


def test_cluster_budget_is_shown_with_its_current_period():
    from greenml.report import rows_from_cluster

    ib = {"kind": "InferenceBudget", "metadata": {"namespace": "web", "name": "llm",
                                                 "creationTimestamp": "2024-01-02T00:00:00Z"},
          "spec": {"budget": {"carbonGrams": 2000, "period": "day"}},
          "status": {"activeVariant": "int8", "spend": {"grams": 1500.0, "energyKwh": 4.0, "projectedGrams": 1900.0,
                                                        "periodStart": "2024-01-05T00:00:00Z",
                                                        "periodEnd": "2024-01-06T00:00:00Z"}}}
    rows = rows_from_cluster([], [ib], AccountingPolicy())
    report = Report("t", "cluster", None, datetime(2024, 1, 5, 12, tzinfo=timezone.utc), AccountingPolicy(),
                    tuple(rows))
    md = markdown(report)
    assert "| web | llm | 2,000 g per day | 1 | 1/1 | 1,500 g mean | 1,500 g (75 % of budget) | " \
           "projected 1,900 g this period |" in md
    budget_svg = next(s for s in svgs(html_page(report)) if "budget of 2,000 g" in "".join(s.itertext()))
    assert any(r.get("stroke-dasharray") for r in budget_svg.iter(f"{SVG}rect"))      # the projection's outline
    assert_inside(budget_svg)
