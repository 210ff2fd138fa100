"""InferenceBudgets in the default scenario (`greenml simulate`)."""
from __future__ import annotations

from datetime import timedelta

import numpy as np

from greenml.api import InferenceBudget
from greenml.planning.inference import compile_spec, step_costs
from greenml.signals.base import IntensitySeries
from greenml.signals.embedded import profile_values
from greenml.sim.inference import demo_load, scenario_rows
from greenml.sim.scenario import ScenarioConfig, load_examples


def test_demo_load_makes_always_best_overspend_as_asked():
    cfg = ScenarioConfig()
    _, body = next(iter(load_examples(cfg.examples, "InferenceBudget")))
    model = compile_spec(InferenceBudget.model_validate(body).spec)
    step, n = timedelta(minutes=15), 96 * 7
    ci = IntensitySeries(cfg.start, step, profile_values("DE", cfg.start, step, n))
    load = demo_load(model, ci, cfg.start, step, n, overspend=1.4)
    cost = step_costs(model, ci.values, load, np.full(n, step.total_seconds())).cost(model)[:, 0].sum()
    periods = n * step.total_seconds() / {"hour": 3600, "day": 86400, "week": 604800}[model.period]
    budget = model.carbon_grams if model.carbon_grams is not None else model.energy_kwh
    assert abs(cost / max(1.0, periods) / budget - 1.4) < 0.01


def test_scenario_rows_pace_every_example_budget():
    cfg = ScenarioConfig()
    rows, pictures, notes, spends, curves = scenario_rows(cfg, None)
    names = {r[0] for r in rows}
    assert names == {(b.get("metadata") or {}).get("name") for _, b in load_examples(cfg.examples, "InferenceBudget")}
    for r in rows:
        held, total = r[6].removeprefix("budget ").split("/")
        assert held == total, r                     # paced: within budget every period
        assert float(r[3].replace(",", "")) < float(r[4].replace(",", ""))   # spends less than always-best
    assert all(p.segments for p in pictures) and notes
    # each budget's picture: its own zone's curve, its spend per period in its own unit
    assert {p.zone for p in pictures} == {s.zone for s in spends} == set(curves)
    for s in spends:
        assert curves[s.zone].source == f"embedded {s.zone}"
        assert max(s.spent) <= s.budget * (1 + 1e-9) < max(s.counterfactual)   # paced holds; always-best would not
