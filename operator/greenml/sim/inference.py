"""Replay an InferenceBudget over real traces through the operator's own decision code.

``simulate_inference`` walks time step by step. At each step the policy (by default
:func:`greenml.planning.inference.decide`, exactly what the operator runs) sees only
the measured intensity and load of the current step and a forecast of the rest of the
period as issued then (the actuals, or the actuals with multiplicative Gaussian noise of
``forecast_error`` relative std, drawn afresh at every step) — or, ``online=True``, the
operator's own forecasts from the past of the traces only (:class:`OnlineForecasts`:
``greenml.signals.forecaster`` for intensity, ``greenml.planning.loadforecast`` for load,
the code the operator runs with ``spec.loadQuery``). Spend is accounted on the
actual intensity and load. Baselines (always-best, always-cheapest, intensity
threshold) share the loop; :func:`offline_reference` gives the perfect-foresight
optimum per period.

``greenml simulate inference --intensity CSV --load CSV --budget BUDGET.yaml`` is
:func:`run_cli` (wired by ``greenml/commands/simulate.py``).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from pydantic import ValidationError

from greenml.api import InferenceBudget, InferenceBudgetSpec
from greenml.planning.inference import (BudgetModel, BudgetState, PacingConfig, VariantDecision,
                                        compile_spec, pacing_for, decide, new_state, offline_optimum,
                                        step_costs)
from greenml.planning.loadforecast import LoadForecastError, LoadForecastPolicy, forecast_load
from greenml.planning.periods import periods_between
from greenml.signals.base import IntensitySeries, SignalError
from greenml.signals.forecaster import ForecasterPolicy, forecast_from_history
from greenml.signals.file import IntensityFileError, column_line, load_intensity_csv
from greenml.timeutil import format_time, parse_time

Policy = Callable[[BudgetModel, BudgetState, np.ndarray, np.ndarray, timedelta, datetime, float, float],
                  VariantDecision]

_TIME_COLUMNS = ("datetime_utc", "datetime", "from_utc", "time", "timestamp")


# --------------------------------------------------------------------------- inputs


def _regular(path: Path, times: list[datetime], values: list[float], what: str) -> tuple[datetime, timedelta, np.ndarray]:
    """Put (time, value) rows on a regular grid (the most common spacing); gaps repeat the last value."""
    if len(times) < 2:
        raise ValueError(f"{path}: need at least 2 rows of {what}, found {len(times)}")
    order = np.argsort(np.array([t.timestamp() for t in times]))
    ts = np.array([times[i].timestamp() for i in order])
    vs = np.array([values[i] for i in order], dtype=np.float64)
    diffs = np.diff(ts)
    if (diffs <= 0).any():
        raise ValueError(f"{path}: duplicate timestamps in {what}")
    values_, counts = np.unique(diffs, return_counts=True)
    step = float(values_[int(np.argmax(counts))])  # the most common spacing (ties: the shortest)
    idx = np.round((ts - ts[0]) / step).astype(np.int64)
    grid = np.full(int(idx[-1]) + 1, np.nan)
    grid[idx] = vs
    fill = np.where(np.isfinite(grid), np.arange(grid.size), 0)
    grid = grid[np.maximum.accumulate(fill)]
    return times[int(order[0])], timedelta(seconds=step), grid


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror})") from exc


def _column(path: Path, header: list[str], names: tuple[str, ...], what: str) -> str:
    for n in names:
        if n in header:
            return n
    raise ValueError(f"{path}: no {what} column (expected one of {', '.join(names)}; found {', '.join(header)})")


def _parse(path: Path, rows: list[dict[str, str]], tcol: str, vcol: str) -> tuple[list[datetime], list[float]]:
    times, values = [], []
    for i, row in enumerate(rows, start=2):
        raw = (row.get(vcol) or "").strip()
        if not raw:
            continue  # a missing value: filled from the previous one
        try:
            times.append(parse_time(row[tcol]))
            values.append(float(raw))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}:{i}: bad {tcol}/{vcol} value ({exc})") from exc
    return times, values


def read_intensity_csv(path: str | Path, column: str | None = None) -> IntensitySeries:
    """An intensity CSV, read by the project's one reader (greenml.signals.file: its column
    preference — actual, then life-cycle, … — or ``column``; ``meta["column"]`` says which).
    Bad input raises ValueError naming the file."""
    path = Path(path)
    try:
        return load_intensity_csv(path, column=column, source=f"file:{path.name}")
    except IntensityFileError as exc:
        raise ValueError(str(exc)) from None


def read_load_csv(path: str | Path) -> tuple[datetime, timedelta, np.ndarray]:
    """A load CSV ``datetime_utc,requests_per_second`` → (start, step, values)."""
    path = Path(path)
    header, rows = _rows(path)
    tcol = _column(path, header, _TIME_COLUMNS, "time")
    vcol = _column(path, header, ("requests_per_second",), "load")
    times, values = _parse(path, rows, tcol, vcol)
    if any(v < 0 for v in values):
        raise ValueError(f"{path}: negative requests_per_second")
    return _regular(path, times, values, "load")


def read_budget(path: str | Path) -> InferenceBudgetSpec:
    """The spec of an InferenceBudget manifest (the real CR, validated by the API model)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the InferenceBudget manifest ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("kind") != "InferenceBudget":
        raise ValueError(f"{path}: not an InferenceBudget manifest (kind: {doc.get('kind') if isinstance(doc, dict) else None!r})")
    try:
        return InferenceBudget.model_validate(doc).spec
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: invalid InferenceBudget: {problems}") from exc


# --------------------------------------------------------------------------- baselines


def always_best(model: BudgetModel, state: BudgetState, ci: np.ndarray, load: np.ndarray, step: timedelta,
                now: datetime, current_intensity: float, current_load: float) -> VariantDecision:
    """Highest-quality variant, budget ignored."""
    return _fixed(model, state, 0, current_load, "AlwaysBest")


def always_cheapest(model: BudgetModel, state: BudgetState, ci: np.ndarray, load: np.ndarray, step: timedelta,
                    now: datetime, current_intensity: float, current_load: float) -> VariantDecision:
    """Cheapest variant at/above the quality floor (at the current load), budget ignored."""
    return _fixed(model, state, _cheapest_index(model, current_load), current_load, "AlwaysCheapest")


def threshold_policy(threshold: float) -> Policy:
    """Best variant while the current intensity is ≤ ``threshold`` g/kWh, else the cheapest
    at/above the floor: the threshold switching of today's carbon-aware schedulers."""

    def policy(model: BudgetModel, state: BudgetState, ci: np.ndarray, load: np.ndarray, step: timedelta,
               now: datetime, current_intensity: float, current_load: float) -> VariantDecision:
        idx = 0 if current_intensity <= threshold else _cheapest_index(model, current_load)
        return _fixed(model, state, idx, current_load, "Threshold")

    return policy


def _cheapest_index(model: BudgetModel, load: float) -> int:
    c = step_costs(model, np.array([1.0]), np.array([load]), np.array([1.0]))
    elig = model.eligible
    return int(elig[int(np.argmin(c.kwh[0, elig]))])


def _fixed(model: BudgetModel, state: BudgetState, idx: int, load: float, reason: str) -> VariantDecision:
    reps = int(step_costs(model, np.array([1.0]), np.array([load]), np.array([1.0])).replicas[0, idx])
    return VariantDecision(model.variants[idx].name, reps, reps, 0.0, state.grams_spent, state.kwh_spent, reason, "")


# --------------------------------------------------------------------------- the replay


def _load_on_grid(load: np.ndarray, n: int) -> np.ndarray:
    v = np.asarray(load, dtype=np.float64).ravel()
    if v.size < n:
        raise ValueError(f"load has {v.size} steps but the intensity trace has {n}: they must share one grid")
    if (~np.isfinite(v[:n])).any() or (v[:n] < 0).any():
        raise ValueError("load must be finite and non-negative req/s")
    return v[:n]


class OnlineForecasts:
    """Forecasts as the operator issues them, from the past of the traces only.

    At step ``t`` the history is the trace up to and including step ``t`` (the current
    step is the measured one, as in the other modes); intensity comes from
    ``greenml.signals.forecaster.forecast_from_history`` (the operator's own forecaster,
    the chain's fallback when a provider has no forecast), load from
    ``greenml.planning.loadforecast.forecast_load`` in ``tz`` (the budget's time zone),
    exactly what the operator runs on its ``spec.loadQuery`` history. Where either
    cannot forecast yet (short history) it falls back as the operator does: the current
    value held flat. Forecasts are cached by step, so several budgets replayed over the
    same traces (a benchmark) share them.
    """

    def __init__(self, intensity: IntensitySeries, load: np.ndarray | list, tz: str = "UTC", *,
                 load_policy: LoadForecastPolicy = LoadForecastPolicy(),
                 intensity_policy: ForecasterPolicy = ForecasterPolicy()) -> None:
        self.intensity = intensity
        self.load = _load_on_grid(load, len(intensity))
        self.tz = tz
        self.load_policy = load_policy
        self.intensity_policy = intensity_policy
        self._cache: dict[tuple[int, int], Issued] = {}

    def at(self, t: int, horizon: int) -> Issued:
        """The forecasts issued at step ``t``, ``horizon`` values each (index 0 the measured step)."""
        key = (t, horizon)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._make(t, horizon)
        return hit

    def _make(self, t: int, horizon: int) -> Issued:
        series, step = self.intensity, self.intensity.step
        now = series.start + step * t
        ahead = step * max(1, horizon - 1)
        ci = np.full(horizon, float(series.values[t]))
        ci_reason = None
        past = series.window(now + step - self.intensity_policy.days * timedelta(days=1), now + step)
        try:
            fc = forecast_from_history(past, now + step, ahead, self.intensity_policy)
            # past the forecaster's 72 h its last value is held, as the operator's resample does
            ci[1:] = fc.resample(now + step, step, horizon - 1)
        except SignalError as exc:
            ci_reason = exc.reason
        load = np.full(horizon, float(self.load[t]))
        load_reason, load_error = None, None
        lb = int(self.load_policy.lookback / step)
        lo = max(0, t + 1 - lb)
        try:
            lf = forecast_load(self.load[lo:t + 1], series.start + step * lo, step, now, ahead, tz=self.tz,
                               policy=self.load_policy)
            load, load_error = lf.on_grid(float(self.load[t]), now, step, horizon), lf.error
        except LoadForecastError as exc:
            load_reason = exc.reason
        return Issued(ci, load, ci_reason, load_reason, pacing_for(True, load_error))


@dataclass(frozen=True)
class Issued:
    """Forecasts issued at one step: values from the measured step on, why each was held
    flat (None: forecast), and the pacer's error reserve for them (``pacing_for``)."""

    intensity: np.ndarray
    load: np.ndarray
    intensity_fallback: str | None
    load_fallback: str | None
    config: PacingConfig


def simulate_inference(spec: InferenceBudgetSpec | BudgetModel, intensity: IntensitySeries, load: np.ndarray | list,
                       forecast_error: float = 0.0, seed: int = 0, *, policy: Policy | None = None,
                       config: PacingConfig | None = None, steps: bool = True,
                       online: bool | OnlineForecasts = False, warmup: timedelta = timedelta(0)) -> dict:
    """Replay the budget over ``intensity`` and ``load`` (req/s on the same grid).

    ``online``: the policy sees the operator's own forecasts from the past only
    (:class:`OnlineForecasts`; pass one to share its cache between replays) instead of
    the actuals (± ``forecast_error``), and the pacer's error reserve is the one the
    operator uses with its own forecasts (``pacing_for``; ``config`` overrides). ``warmup``: the first part of the traces is
    history only — not replayed, not counted (whole steps; the replay starts after it).

    Returns JSON-ready ``{"steps": [...], "periods": [...], "summary": {...}}``; with
    ``steps=False`` the per-step list is left out (benchmarks).
    """
    if forecast_error < 0:
        raise ValueError(f"forecast_error must be ≥ 0, got {forecast_error}")
    if online is not False and forecast_error > 0:
        raise ValueError("online forecasts and forecast_error exclude each other")
    model = spec if isinstance(spec, BudgetModel) else compile_spec(spec)
    n = len(intensity)
    actual_ci = intensity.values
    actual_load = _load_on_grid(load, n)
    step = intensity.step
    first = warmup_steps(intensity, warmup)
    rng = np.random.default_rng(seed)
    forecasts = online if isinstance(online, OnlineForecasts) else \
        OnlineForecasts(intensity, actual_load, model.time_zone) if online else None
    pacing = config or PacingConfig()
    fallback = {"intensity": 0, "load": 0}
    errors: dict[str, list[float]] = {"intensity": [0.0, 0.0], "load": [0.0, 0.0]}   # Σ|error|, Σ actual

    state: BudgetState | None = None
    out_steps, periods = [], []
    served_q = demand = served = 0.0
    switches = 0
    prev_variant: str | None = None
    for t in range(first, n):
        now = intensity.start + step * t
        fresh = new_state(model, now, state)
        if fresh is not state and state is not None:
            periods.append(_period_row(model, state, intensity))
        state = fresh
        horizon = max(1, math.ceil((state.period_end - now) / step))
        if forecasts is not None:
            issued = forecasts.at(t, horizon)
            ci_fc, load_fc, pacing = issued.intensity, issued.load, config or issued.config
            fallback["intensity"] += issued.intensity_fallback is not None
            fallback["load"] += issued.load_fallback is not None
            for what, fc, actual in (("intensity", ci_fc, actual_ci), ("load", load_fc, actual_load)):
                a = actual[t + 1:t + horizon]
                errors[what][0] += float(np.abs(fc[1:1 + a.size] - a).sum())
                errors[what][1] += float(a.sum())
        else:
            ci_fc = _forecast(actual_ci, t, horizon, forecast_error, rng)
            load_fc = _forecast(actual_load, t, horizon, forecast_error, rng)
        chooser: Policy = policy or (lambda *a, cfg=pacing: decide(*a, config=cfg))
        d = chooser(model, state, ci_fc, load_fc, step, now, float(actual_ci[t]), float(actual_load[t]))
        idx = model.index(d.variant)
        c = step_costs(model, actual_ci[t:t + 1], actual_load[t:t + 1], np.array([step.total_seconds()]),
                       replica_cap=d.replicas)
        grams, kwh = float(c.grams[0, idx]), float(c.kwh[0, idx])
        served_now = float(c.utility[0, idx] / model.variants[idx].quality) if model.variants[idx].quality > 0 \
            else float(min(actual_load[t], d.replicas * model.variants[idx].capacity_rps) * step.total_seconds())
        served_q += float(c.utility[0, idx])
        served += served_now
        demand += float(actual_load[t] * step.total_seconds())
        if prev_variant is not None and d.variant != prev_variant:
            switches += 1
        prev_variant = d.variant
        state = state.account(grams, kwh).applied(d, now)
        if steps:
            out_steps.append({"time": format_time(now), "variant": d.variant, "replicas": d.replicas,
                              "intensity": round(float(actual_ci[t]), 3), "load": round(float(actual_load[t]), 4),
                              "grams": round(grams, 4), "kwh": round(kwh, 6), "reason": d.reason})
    if state is not None:
        periods.append(_period_row(model, state, intensity))
    replayed = n - first
    days = replayed * step.total_seconds() / 86400.0
    complete = [p for p in periods if p["complete"]]
    summary = {
        "steps": replayed, "periods": len(periods),
        "periods_within_budget": sum(p["within_budget"] for p in periods),
        "budget_adherence": (sum(p["within_budget"] for p in periods) / len(periods)) if periods else 1.0,
        "max_spend_fraction": max((p["spend_fraction"] for p in periods), default=0.0),
        "mean_quality": served_q / demand if demand > 0 else 0.0,
        "served_fraction": served / demand if demand > 0 else 1.0,
        "switches": switches, "switches_per_day": switches / days if days > 0 else 0.0,
        "grams": sum(p["grams"] for p in periods), "kwh": sum(p["kwh"] for p in periods),
        "complete_periods": len(complete),
        "forecasts": "online" if forecasts is not None else ("noisy" if forecast_error > 0 else "perfect"),
        "warmup_steps": first,
    }
    if forecasts is not None:
        summary["online"] = {
            # mean absolute error of every forecast value used, relative to the mean actual
            f"{what}_relative_mae": (e[0] / e[1]) if e[1] > 0 else None for what, e in errors.items()}
        summary["online"].update({f"{what}_fallback_steps": k for what, k in fallback.items()})
    return {"steps": out_steps, "periods": periods, "summary": summary}


def warmup_steps(intensity: IntensitySeries, warmup: timedelta) -> int:
    """Steps of ``intensity`` that ``warmup`` covers (history only); at least one step is replayed."""
    if warmup < timedelta(0):
        raise ValueError(f"warmup must be ≥ 0, got {warmup}")
    k = math.ceil(warmup / intensity.step - 1e-9)
    if k >= len(intensity):
        raise ValueError(f"warmup {warmup} covers the whole trace ({len(intensity)} steps of {intensity.step})")
    return k


def _forecast(actual: np.ndarray, t: int, horizon: int, error: float, rng: np.random.Generator) -> np.ndarray:
    fc = actual[t:t + horizon].copy()
    if error > 0 and fc.size > 1:
        fc[1:] *= np.maximum(0.0, 1.0 + error * rng.standard_normal(fc.size - 1))
    return fc


def _period_row(model: BudgetModel, state: BudgetState, series: IntensitySeries) -> dict:
    fracs = []
    if model.carbon_grams is not None:
        fracs.append(state.grams_spent / model.carbon_grams)
    if model.energy_kwh is not None:
        fracs.append(state.kwh_spent / model.energy_kwh)
    frac = max(fracs)
    return {"start": format_time(state.period_start), "end": format_time(state.period_end),
            "grams": state.grams_spent, "kwh": state.kwh_spent,
            "budget_grams": model.carbon_grams, "budget_kwh": model.energy_kwh,
            "spend_fraction": frac, "within_budget": frac <= 1.0 + 1e-9,
            "complete": series.start <= state.period_start and state.period_end <= series.end}


def offline_reference(spec: InferenceBudgetSpec | BudgetModel, intensity: IntensitySeries,
                      load: np.ndarray | list, warmup: timedelta = timedelta(0)) -> dict:
    """The perfect-foresight optimum, period by period (see ``offline_optimum``), over
    what :func:`simulate_inference` replays after the same ``warmup``."""
    model = spec if isinstance(spec, BudgetModel) else compile_spec(spec)
    actual_load = _load_on_grid(load, len(intensity))
    k = warmup_steps(intensity, warmup)
    if k:
        intensity, actual_load = intensity.window(intensity.start + intensity.step * k, intensity.end), actual_load[k:]
    n = len(intensity)
    step_s = intensity.step.total_seconds()
    util = bound = demand = grams = kwh = 0.0
    feasible = True
    for p_start, p_end in periods_between(model.period, intensity.start, intensity.end, model.time_zone):
        i0 = max(0, intensity.index_of(p_start) if p_start > intensity.start else 0)
        i1 = min(n, math.ceil((p_end - intensity.start).total_seconds() / step_s))
        if i1 <= i0:
            continue
        secs = np.full(i1 - i0, step_s)
        costs = step_costs(model, intensity.values[i0:i1], actual_load[i0:i1], secs)
        plan = offline_optimum(model, costs)
        util += plan.utility
        bound += plan.upper_bound
        demand += float((actual_load[i0:i1] * secs).sum())
        grams += plan.grams
        kwh += plan.kwh
        feasible &= (model.carbon_grams is None or plan.grams <= model.carbon_grams * (1 + 1e-9)) and \
            (model.energy_kwh is None or plan.kwh <= model.energy_kwh * (1 + 1e-9))
    return {"mean_quality": util / demand if demand else 0.0,
            "mean_quality_upper_bound": bound / demand if demand else 0.0,
            "grams": grams, "kwh": kwh, "feasible": bool(feasible)}


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--intensity", required=True, type=Path, help="intensity CSV (datetime_utc + g/kWh column)")
    parser.add_argument("--column", default=None,
                        help="intensity column (default: actual, then life-cycle, … — see greenml.signals.file; "
                             "the chosen one is printed)")
    parser.add_argument("--load", required=True, type=Path, help="load CSV: datetime_utc,requests_per_second")
    parser.add_argument("--budget", required=True, type=Path, help="InferenceBudget manifest (YAML)")
    parser.add_argument("--forecast-error", type=float, default=0.0,
                        help="relative std of the multiplicative forecast noise (0 = perfect forecast)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--online", action="store_true",
                        help="the policy sees only the past: intensity and load forecast by the operator's own "
                             "forecasters (greenml.signals.forecaster, greenml.planning.loadforecast)")
    parser.add_argument("--warmup", type=_duration, default=timedelta(0), metavar="DURATION",
                        help="the first DURATION of the traces is history only, not replayed (e.g. 7d: "
                             "the online forecasters have a week to learn from)")
    parser.add_argument("--output", "-o", type=Path, required=True, help="result JSON")


def run_cli(args: argparse.Namespace) -> int:
    """``greenml simulate inference``: returns the exit code; bad input → message, code 2."""
    import sys

    try:
        spec = read_budget(args.budget)
        model = compile_spec(spec)
        series = read_intensity_csv(args.intensity, getattr(args, "column", None))
        print(column_line(series))   # which series of the file, and why
        l_start, l_step, l_values = read_load_csv(args.load)
        _align_load(series, l_start, l_step, l_values, args.load)  # fails clearly when they don't overlap
        series = _overlap(series, l_start, l_step, len(l_values))
        load = _align_load(series, l_start, l_step, l_values, args.load)
        online, warmup = getattr(args, "online", False), getattr(args, "warmup", timedelta(0))
        result = simulate_inference(model, series, load, args.forecast_error, args.seed, online=online, warmup=warmup)
    except ValueError as exc:
        print(f"greenml simulate inference: {exc}", file=sys.stderr)
        return 2
    result["offline_optimum"] = offline_reference(model, series, load, warmup)
    # what `greenml report --from-sim` names the workload and its periods by
    result["name"], result["period"] = _manifest_name(args.budget), model.period
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1, default=str) + "\n")
    s = result["summary"]
    print(f"{s['periods']} periods, within budget {s['periods_within_budget']}, mean quality "
          f"{s['mean_quality']:.4f} (offline optimum {result['offline_optimum']['mean_quality']:.4f}), "
          f"{s['switches_per_day']:.2f} switches/day → {args.output}")
    if "online" in s:
        o = s["online"]
        print(f"online forecasts: intensity error {_pct(o['intensity_relative_mae'])}, load error "
              f"{_pct(o['load_relative_mae'])} (mean absolute, of the mean); held flat for lack of history: "
              f"intensity {o['intensity_fallback_steps']}, load {o['load_fallback_steps']} of {s['steps']} steps")
    return 0


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _duration(text: str) -> timedelta:
    from greenml.timeutil import parse_duration

    try:
        return parse_duration(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} ({exc})") from None


def _manifest_name(path: Path) -> str:
    """metadata.name of the (already validated) manifest, else the file's stem."""
    doc = yaml.safe_load(Path(path).read_text())
    return str((doc.get("metadata") or {}).get("name") or Path(path).stem)


def _align_load(series: IntensitySeries, start: datetime, step: timedelta, values: np.ndarray, path: Path) -> np.ndarray:
    """The load trace on the intensity grid (time-weighted means, edges repeated)."""
    if start > series.end or start + step * len(values) < series.start:
        raise ValueError(f"{path}: load trace [{start}, {start + step * len(values)}) does not overlap the "
                         f"intensity trace [{series.start}, {series.end})")
    lseries = IntensitySeries(start, step, values, source="load")
    return lseries.resample(series.start, series.step, len(series))


def _overlap(series: IntensitySeries, start: datetime, step: timedelta, n: int) -> IntensitySeries:
    """The intensity slots covered by the load trace (the replay runs where both exist)."""
    return series.window(max(series.start, start), min(series.end, start + step * n))


# --------------------------------------------------------------------------- the default scenario

def diurnal_load(start: datetime, step: timedelta, n: int, mean_rps: float) -> np.ndarray:
    """A documented stand-in load for the offline default scenario: a daily cycle peaking at
    15:00 UTC, from 40 % to 160 % of the mean. (The benchmark uses real Azure arrival shapes.)"""
    hours = np.array([((start + step * i).hour + (start + step * i).minute / 60.0) for i in range(n)])
    return mean_rps * (1.0 + 0.6 * np.cos(2 * np.pi * (hours - 15.0) / 24.0))


def demo_load(model: BudgetModel, ci: IntensitySeries, start: datetime, step: timedelta, n: int,
              overspend: float) -> np.ndarray:
    """The diurnal load whose always-best spend is ``overspend`` × the budget (bisection on the mean)."""
    secs = np.full(n, step.total_seconds())
    periods = max(1.0, n * step.total_seconds() / {"hour": 3600, "day": 86400, "week": 604800,
                                                    "month": 2629800}[model.period])

    def spend(mean: float) -> float:
        c = step_costs(model, ci.values[:n], diurnal_load(start, step, n, mean), secs)
        return float(c.cost(model)[:, 0].sum()) / periods

    target = overspend * (1.0 if model.carbon_grams is not None and model.energy_kwh is not None else
                          (model.carbon_grams if model.carbon_grams is not None else model.energy_kwh))
    lo, hi = 0.0, model.max_replicas * model.variants[0].capacity_rps / 1.6
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spend(mid) < target else (lo, mid)
    return diurnal_load(start, step, n, (lo + hi) / 2)


def scenario_rows(cfg, intensity: IntensitySeries) -> tuple[list[list[str]], list, list[str], list, dict]:
    """Rows of `greenml simulate` for the example InferenceBudgets over the scenario week:
    the paced policy (the operator's decide()) against always-best as the counterfactual.
    Returns (table rows, picture rows, notes, budget spend pictures, zone → curve)."""
    from greenml.signals.embedded import profile_values
    from greenml.sim import plot
    from greenml.sim.scenario import load_examples

    rows, pictures, notes, spends, curves = [], [], [], [], {}
    step = timedelta(minutes=15)
    n = int(timedelta(days=cfg.days) / step)
    for path, body in load_examples(cfg.examples, "InferenceBudget"):
        spec = InferenceBudget.model_validate(body).spec
        name = (body.get("metadata") or {}).get("name", path.stem)
        zone = spec.zone or cfg.zone
        ci = IntensitySeries(cfg.start, step, profile_values(zone, cfg.start, step, n), source=f"embedded {zone}",
                             estimate=True)
        curves.setdefault(zone, ci)
        model = compile_spec(spec)
        load = demo_load(model, ci, cfg.start, step, n, overspend=1.4)
        paced = simulate_inference(model, ci, load)
        best = simulate_inference(model, ci, load, policy=always_best)
        s, b = paced["summary"], best["summary"]
        held = sum(p["within_budget"] for p in paced["periods"])
        mix: dict[str, int] = {}
        for st in paced["steps"]:
            mix[st["variant"]] = mix.get(st["variant"], 0) + 1
        mix_text = ", ".join(f"{v} {100 * c / n:.0f}%" for v, c in sorted(mix.items(), key=lambda kv: -kv[1]))
        unit = (f"{model.carbon_grams:g} g" if model.carbon_grams is not None else f"{model.energy_kwh:g} kWh")
        saving = 100.0 * (b["grams"] - s["grams"]) / b["grams"] if b["grams"] > 0 else 0.0
        rows.append([name, "InferenceBudget", f"{unit}/{model.period} ({zone}), quality {s['mean_quality']:.2f}",
                     f"{s['grams']:,.0f}", f"{b['grams']:,.0f}", f"{saving:.1f}%",
                     f"budget {held}/{len(paced['periods'])}", mix_text])
        segments, cur, since = [], None, None
        for st in paced["steps"]:
            t = parse_time(st["time"])
            if st["variant"] != cur:
                if cur is not None:
                    segments.append(plot.Segment(since, t, cur))
                cur, since = st["variant"], t
        if cur is not None:
            segments.append(plot.Segment(since, cfg.start + step * n, cur))
        pictures.append(plot.Row(name, tuple(segments), note="variant", zone=zone))
        spends.append(spend_picture(name, zone, model, paced, best, step))
    if rows:
        notes.append("InferenceBudgets: paced by the operator's decide() on the embedded profile, with a "
                     "synthetic daily load cycle (40–160 % of its mean), the mean sized so that always serving the best variant "
                     "would spend 1.4 × the budget; "
                     "'run-now g' is always serving the best variant, 'deadline met' is periods within budget.")
    return rows, pictures, notes, spends, curves


def spend_picture(name: str, zone: str, model: BudgetModel, paced: dict, best: dict, step: timedelta):
    """A budget's spend since each period's start (carbon when it has a carbon budget,
    else energy) for the picture, paced against ``best`` (always the best variant)."""
    from greenml.sim import plot

    key, unit, budget = (("grams", "g", model.carbon_grams) if model.carbon_grams is not None
                         else ("kwh", "kWh", model.energy_kwh))
    periods = tuple((parse_time(p["start"]), parse_time(p["end"])) for p in paced["periods"])
    times = tuple(parse_time(st["time"]) + step for st in paced["steps"])

    def cumulative(steps: list[dict]) -> tuple[float, ...]:
        out, total, k = [], 0.0, 0
        for t, st in zip(times, steps):
            while k < len(periods) and t > periods[k][1]:
                k, total = k + 1, 0.0
            total += st[key]
            out.append(total)
        return tuple(out)
    return plot.Spend(name, zone, unit, float(budget), model.period, periods, times, cumulative(paced["steps"]),
                      cumulative(best["steps"]), "always the best variant")
