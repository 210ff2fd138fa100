"""The simulation page and the report pages in a real browser (headless Chromium over the
DevTools protocol, tests/browser.py): no console errors, the SVG pictures present and
drawn, no text outside its box (SVG labels inside their picture and clear of each other,
table cells and paragraphs not overflowing, the page not wider than the window), and a
full-page screenshot of each written to test-artifacts/browser/ (git-ignored;
``$GREENML_TEST_ARTIFACTS`` moves it). Skipped without Chromium, failed without it in CI."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest

from greenml.cli import main
from greenml.sim.scenario import DEFAULT_EXAMPLES, load_examples
from tests.browser import artifacts_dir, chromium, close_page, open_page  # noqa: F401  (chromium is a fixture)

WIDTH = 1280

MEASURE = """(() => {
  const out = {svgs: [], outside: [], overlaps: [], cells: [], page: null};
  const near = (a, b) => a.left >= b.left - 0.5 && a.right <= b.right + 0.5 && a.top >= b.top - 0.5 && a.bottom <= b.bottom + 0.5;
  const name = t => (t.childNodes[t.childNodes.length - 1] || t).textContent.trim();
  document.querySelectorAll('svg').forEach((svg, i) => {
    const box = svg.getBoundingClientRect();
    const texts = [...svg.querySelectorAll('text')].map(t => [t, t.getBoundingClientRect()]).filter(([, r]) => r.width > 0);
    out.svgs.push({width: box.width, height: box.height, texts: texts.length,
                   shapes: svg.querySelectorAll('rect, polyline, line').length});
    for (const [t, r] of texts)
      if (!near(r, box)) out.outside.push({svg: i, text: name(t), box: [r.left, r.top, r.right, r.bottom].map(Math.round)});
    for (let a = 0; a < texts.length; a++)
      for (let b = a + 1; b < texts.length; b++) {
        const A = texts[a][1], B = texts[b][1];
        const w = Math.min(A.right, B.right) - Math.max(A.left, B.left), h = Math.min(A.bottom, B.bottom) - Math.max(A.top, B.top);
        if (w > 1 && h > 1) out.overlaps.push({svg: i, a: name(texts[a][0]), b: name(texts[b][0])});
      }
  });
  for (const el of document.querySelectorAll('td, th, p, h1, h2, li'))
    if (el.scrollWidth > el.clientWidth + 1) out.cells.push({tag: el.tagName, text: el.textContent.slice(0, 60)});
  const doc = document.documentElement;
  if (doc.scrollWidth > window.innerWidth + 1) out.page = [doc.scrollWidth, window.innerWidth];
  return out;
})()"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """The pages a user opens: the default simulation, and the reports of its jobs and of an
    InferenceBudget simulated over ten days."""
    d = tmp_path_factory.mktemp("pages")
    assert main(["simulate", "--output-dir", str(d), "--json"]) == 0
    assert main(["report", "--from-sim", str(d / "greenml-simulation.json"), "--format", "html",
                 "-o", str(d / "report-jobs.html")]) == 0
    from greenml.signals.embedded import profile_values

    start, step, n = datetime(2023, 6, 5, tzinfo=timezone.utc), timedelta(hours=1), 240
    values = profile_values("DE", start, step, n)
    times = [f"{start + step * i:%Y-%m-%dT%H:%M:%SZ}" for i in range(n)]
    (d / "ci.csv").write_text("datetime_utc,gco2_per_kwh\n" + "".join(f"{t},{v:.1f}\n" for t, v in zip(times, values)))
    (d / "load.csv").write_text("datetime_utc,requests_per_second\n" +
                                "".join(f"{t},{0.3 + 0.2 * ((i % 24) >= 8):.2f}\n" for i, t in enumerate(times)))
    budget = next(p for p, b in load_examples(DEFAULT_EXAMPLES, "InferenceBudget")
                  if (b.get("spec") or {}).get("budget", {}).get("carbonGrams"))
    assert main(["simulate", "inference", "--intensity", str(d / "ci.csv"), "--load", str(d / "load.csv"),
                 "--budget", str(budget), "--output", str(d / "inference.json")]) == 0
    assert main(["report", "--from-sim", str(d / "inference.json"), "--format", "html",
                 "-o", str(d / "report-inference.html")]) == 0
    return {"simulation": d / "greenml-simulation.html", "report-jobs": d / "report-jobs.html",
            "report-inference": d / "report-inference.html"}


@pytest.mark.parametrize("name, min_svgs", [("simulation", 1), ("report-jobs", 1), ("report-inference", 2)])
async def test_page_renders_cleanly_in_chromium(chromium, pages, name, min_svgs):
    async with aiohttp.ClientSession() as session:
        page = await open_page(chromium, pages[name].as_uri(), session, width=WIDTH)
        try:
            m = await page.evaluate(MEASURE)
            shot = await page.screenshot(artifacts_dir() / f"{name}.png", WIDTH)
            errors = page.errors()
        finally:
            await close_page(page)
    assert errors == [], errors
    assert len(m["svgs"]) >= min_svgs, m["svgs"]
    for svg in m["svgs"]:
        assert svg["width"] > 300 and svg["height"] > 100 and svg["texts"] > 5 and svg["shapes"] > 5, svg
    assert m["outside"] == [], json.dumps(m["outside"][:10])
    assert m["overlaps"] == [], json.dumps(m["overlaps"][:10])
    assert m["cells"] == [], json.dumps(m["cells"][:10])
    assert m["page"] is None, f"page wider than the window: {m['page']}"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    print(f"screenshot: {shot}")


BROKEN = """<!doctype html><html><head><meta charset="utf-8"></head><body>
<svg xmlns="http://www.w3.org/2000/svg" width="200" height="50"><text x="150" y="20">a label running out of its picture</text>
<text x="5" y="40">left</text><text x="8" y="42">lapped</text></svg>
<table><tr><td style="max-width:30px;overflow:hidden;white-space:nowrap">averyveryverylongunbreakableword</td></tr></table>
<script>console.error("boom")</script></body></html>"""


async def test_the_checks_see_what_they_look_for(chromium, tmp_path):
    """A page with each defect: the same measurement reports every one (the checks above
    are not vacuous)."""
    bad = tmp_path / "broken.html"
    bad.write_text(BROKEN)
    async with aiohttp.ClientSession() as session:
        page = await open_page(chromium, bad.as_uri(), session, width=WIDTH)
        try:
            m = await page.evaluate(MEASURE)
            errors = page.errors()
        finally:
            await close_page(page)
    assert any("boom" in e for e in errors), errors
    assert [o["text"] for o in m["outside"]] == ["a label running out of its picture"]
    assert [(o["a"], o["b"]) for o in m["overlaps"]] == [("left", "lapped")]
    assert [c["tag"] for c in m["cells"]] == ["TD"]
