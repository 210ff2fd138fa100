"""Design-phase estimates (`greenml estimate`): energy and carbon before anything runs.

For every TrainingJob and InferenceBudget in the given manifests, with the operator's
own code paths — nothing here re-implements a rule:

- TrainingJob: ``services.trainingjob.resolve``/``check_feasible`` (power from the spec,
  the GPU table or the default; the deadline), then the operator's planner through
  ``services.board.PlanBoard`` on the forecast of the configured ``CarbonSource``: the
  best window(s), the planned vs run-now grams; energy = duration × watts; SCI parts
  (PUE, embodied GPU/server share) from ``planning.accounting``.
- InferenceBudget: ``services.inferencebudget.parse_spec`` → ``planning.inference``'s
  cost model (``step_costs``) over one budget period from now, at a stated constant
  load: the cost of always serving the best variant and of the cheapest variant at or
  above the quality floor, against the budget.

Every figure says which intensity source served it and whether it is an estimate (the
embedded profile is a climatology, never live data). Pure: ``now`` is a parameter,
the source is passed in; this module reads only the files it is given.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from greenml.lint import Finding, documents, finding, is_greenml, yaml_files
from greenml.planning import accounting as acc
from greenml.planning import inference as inf
from greenml.planning.periods import period_bounds
from greenml.services.board import Entry, PlanBoard, to_job_spec
from greenml.services.inferencebudget import parse_spec
from greenml.services.trainingjob import Defaults, InvalidSpec, Progress, check_feasible, resolve
from greenml.signals.base import CarbonSource, IntensitySeries, SignalError
from greenml.timeutil import format_duration, format_time

Format = Literal["table", "json"]
EMBEDDED_NOTE = ("the embedded profile is a climatology fitted to past years (typical hour/season/weekday "
                 "level), an estimate, not a forecast of the actual weather")


@dataclass(frozen=True)
class EstimatePolicy:
    """Everything an estimate assumes, in one typed object.

    ``load_rps`` None: an InferenceBudget is assumed to carry the load that fills
    ``max(1, policy.minReplicas)`` replicas of its best variant (see ``assumed_load``).
    ``horizon`` is the planner's furthest look-ahead (the operator's ``horizon`` setting).
    """

    now: datetime
    defaults: Defaults = field(default_factory=Defaults)
    accounting: acc.AccountingPolicy = acc.AccountingPolicy()
    load_rps: float | None = None
    horizon: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        if self.load_rps is not None and (not math.isfinite(self.load_rps) or self.load_rps < 0):
            raise ValueError(f"load must be a finite number of requests/s >= 0, got {self.load_rps!r}")


@dataclass(frozen=True)
class Intensity:
    """Which source served the intensity, and how far it reached."""

    source: str
    link: str                          # fallback-chain link: provider | forecaster | embedded
    estimate: bool
    kind: str                          # average | marginal
    fallback: tuple[str, ...] = ()     # "link: reason" of links that failed before it
    covered_until: datetime | None = None   # set when the series ends before the needed range

    @classmethod
    def of(cls, series: IntensitySeries, needed_end: datetime) -> "Intensity":
        meta = series.meta if isinstance(series.meta, Mapping) else {}
        failed = tuple(f"{f.get('link', '?')}: {f.get('reason', 'Unknown')}" for f in meta.get("fallback") or ())
        short = series.end if series.end < needed_end else None
        return cls(series.source, str(meta.get("link", "provider")), bool(series.estimate), series.kind,
                   failed, short)

    def notes(self) -> list[str]:
        out = [f"intensity: {self.source} ({self.kind}{', estimate' if self.estimate else ''})"]
        if self.source == "embedded":
            out.append(EMBEDDED_NOTE)
        if self.fallback:
            out.append("fallback after " + "; ".join(self.fallback))
        if self.covered_until is not None:
            out.append(f"the series ends {format_time(self.covered_until)}: its last value is held after that")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "link": self.link, "estimate": self.estimate, "kind": self.kind,
                "fallback": list(self.fallback),
                "coveredUntil": format_time(self.covered_until) if self.covered_until else None}


# ------------------------------------------------------------------ TrainingJob


@dataclass(frozen=True)
class TrainingEstimate:
    file: str
    obj: str
    zone: str
    gpus: int
    watts: float
    power_source: str                  # spec | gpu-table | default
    duration: timedelta
    interruptible: bool
    deadline: datetime
    windows: tuple[tuple[datetime, datetime], ...]
    reason: str                        # the planner's reason (Planned, RunNow, MaxIntensityRelaxed, …)
    savings: acc.Savings               # planned (actual) vs run-now (counterfactual)
    intensity: Intensity

    @property
    def energy_kwh(self) -> float:
        return self.savings.actual.energy_kwh

    @property
    def operational_savings_percent(self) -> float:
        """The planner's figure: operational grams saved against running now (embodied excluded)."""
        now_g = self.savings.counterfactual.operational_g
        return 100.0 * (now_g - self.savings.actual.operational_g) / now_g if now_g > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"kind": "TrainingJob", "file": self.file, "object": self.obj, "zone": self.zone,
                "gpus": self.gpus, "watts": self.watts, "powerSource": self.power_source,
                "duration": format_duration(self.duration), "interruptible": self.interruptible,
                "deadline": format_time(self.deadline), "energyKwh": round(self.energy_kwh, 6),
                "bestWindows": [[format_time(a), format_time(b)] for a, b in self.windows],
                "reason": self.reason, "runNow": self.savings.counterfactual.to_json(),
                "planned": self.savings.actual.to_json(),
                "operationalSavingsPercent": round(self.operational_savings_percent, 2),
                "savings": self.savings.to_json(), "intensity": self.intensity.to_json()}


def _job_body(obj: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The object as the API server would hand it to the operator if applied at ``now``."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), Mapping) else {}
    return {**obj, "metadata": {**meta, "creationTimestamp": format_time(now)}}


def estimate_training_job(obj: Mapping[str, Any], source: CarbonSource, policy: EstimatePolicy,
                          file: str = "", label: str = "") -> TrainingEstimate:
    """Plan one TrainingJob as if applied at ``policy.now``. Raises InvalidSpec naming the field."""
    now, defaults = policy.now, policy.defaults
    req = resolve(_job_body(obj, now), defaults)
    check_feasible(req, now, defaults)
    board = PlanBoard(defaults, source, horizon=policy.horizon)
    board.observe(req, Progress(), running=False)
    planned, failure = board.plan_for(req.key, now)
    if planned is None:
        msg = failure.message if failure else "the planner returned no plan"
        raise InvalidSpec("spec.carbon.zone", f"no intensity forecast for zone {req.zone!r}: {msg}")
    max_slots = max(1, int(policy.horizon / defaults.step))
    spec = to_job_spec(Entry(req, Progress(), False), now, defaults, max_slots)
    n = max(spec.latest_end, spec.remaining) if spec else 1
    _, series = board.forecast_for(req.zone, now, n)   # the planner's own call (cached by providers)
    kwh = req.watts * req.duration.total_seconds() / acc.JOULES_PER_KWH
    accounting = replace(policy.accounting, kind=series.kind)

    def fp(grams: float) -> acc.Footprint:
        return acc.footprint_from_grams(kwh, grams, gpus=req.gpus, reserved_seconds=req.duration.total_seconds(),
                                        policy=accounting, kind=series.kind)

    return TrainingEstimate(
        file, label, req.zone, req.gpus, req.watts, req.power_source, req.duration, req.interruptible,
        req.deadline, planned.windows, planned.reason,
        acc.Savings(fp(planned.expected_grams), fp(planned.run_now_grams), "run-now"),
        Intensity.of(series, now + defaults.step * n))


# ------------------------------------------------------------------ InferenceBudget


@dataclass(frozen=True)
class VariantCost:
    """One variant served for the whole period at the assumed load."""

    name: str
    quality: float
    replicas: int
    kwh: float            # IT energy, as the operator accounts the budget
    grams: float          # IT energy × intensity, as the operator accounts the budget
    footprint: acc.Footprint   # SCI view: PUE applied (embodied not known for serving)

    def fits(self, carbon_grams: float | None, energy_kwh: float | None) -> bool:
        return ((carbon_grams is None or self.grams <= carbon_grams)
                and (energy_kwh is None or self.kwh <= energy_kwh))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "quality": self.quality, "replicas": self.replicas,
                "energyKwh": round(self.kwh, 6), "grams": round(self.grams, 3),
                "footprint": self.footprint.to_json()}


@dataclass(frozen=True)
class InferenceEstimate:
    file: str
    obj: str
    zone: str
    period: str
    start: datetime
    end: datetime
    load_rps: float
    load_assumption: str
    carbon_grams: float | None
    energy_kwh: float | None
    best: VariantCost     # the highest-quality variant, always
    floor: VariantCost    # the cheapest variant at/above the quality floor, always
    intensity: Intensity

    @property
    def holds_at_floor(self) -> bool:
        return self.floor.fits(self.carbon_grams, self.energy_kwh)

    @property
    def best_fits(self) -> bool:
        return self.best.fits(self.carbon_grams, self.energy_kwh)

    def verdict(self) -> str:
        if self.best_fits:
            return "holds serving the best variant all period"
        if self.holds_at_floor:
            return "holds: the pacer mixes variants (the best alone would exceed it)"
        return "does NOT hold even at the quality floor"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "InferenceBudget", "file": self.file, "object": self.obj, "zone": self.zone,
                "period": self.period, "start": format_time(self.start), "end": format_time(self.end),
                "loadRps": self.load_rps, "loadAssumption": self.load_assumption,
                "budget": {"carbonGrams": self.carbon_grams, "energyKWh": self.energy_kwh},
                "best": self.best.to_json(), "floor": self.floor.to_json(),
                "holdsAtFloor": self.holds_at_floor, "bestFits": self.best_fits, "verdict": self.verdict(),
                "intensity": self.intensity.to_json()}


def assumed_load(model: inf.BudgetModel, load_rps: float | None) -> tuple[float, str]:
    """(req/s, what was assumed): the given load, else what fills max(1, minReplicas)
    replicas of the best variant (the least the operator ever serves)."""
    if load_rps is not None:
        return load_rps, f"{load_rps:g} req/s (--load), constant"
    best = model.variants[0]
    replicas = max(1, model.min_replicas)
    return (replicas * best.capacity_rps,
            f"{replicas} × {best.name} capacity {best.capacity_rps:g} req/s (policy.minReplicas, "
            f"fully used), constant; pass --load RPS for your traffic")


def estimate_inference_budget(obj: Mapping[str, Any], source: CarbonSource, policy: EstimatePolicy,
                              file: str = "", label: str = "") -> InferenceEstimate:
    """One budget period from ``policy.now`` (its length: the calendar period containing now)."""
    spec, model = parse_spec(obj)
    now, step = policy.now, policy.defaults.step
    zone = spec.zone or policy.defaults.zone
    p0, p1 = period_bounds(model.period, now, model.time_zone)
    end = now + (p1 - p0)
    n = max(1, math.ceil((end - now) / step))
    seconds = np.full(n, step.total_seconds())
    seconds[-1] = (end - now).total_seconds() - step.total_seconds() * (n - 1)
    try:
        values, series = PlanBoard(policy.defaults, source).forecast_for(zone, now, n)
    except SignalError as exc:
        raise InvalidSpec("spec.zone", f"no intensity forecast for zone {zone!r}: {exc}") from None
    load, assumption = assumed_load(model, policy.load_rps)
    costs = inf.step_costs(model, values, np.full(n, load), seconds)
    accounting = replace(policy.accounting, kind=series.kind)

    def variant(i: int) -> VariantCost:
        kwh, grams = float(costs.kwh[:, i].sum()), float(costs.grams[:, i].sum())
        v = model.variants[i]
        return VariantCost(v.name, v.quality, int(costs.replicas[0, i]), kwh, grams,
                           acc.footprint_from_grams(kwh, grams, policy=accounting, kind=series.kind,
                                                    units=1.0, unit=model.period))

    spend = costs.cost(model).sum(axis=0)
    floor = int(model.eligible[int(np.argmin(spend[model.eligible]))])
    return InferenceEstimate(file, label, zone, model.period, now, end, load, assumption,
                             model.carbon_grams, model.energy_kwh, variant(0), variant(floor),
                             Intensity.of(series, end))


# ------------------------------------------------------------------ manifests


Estimate = TrainingEstimate | InferenceEstimate
ESTIMATORS = {"TrainingJob": estimate_training_job, "InferenceBudget": estimate_inference_budget}


@dataclass(frozen=True)
class Report:
    files: int
    estimates: tuple[Estimate, ...]
    errors: tuple[Finding, ...]
    policy: EstimatePolicy

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        a = self.policy.accounting
        return {"now": format_time(self.policy.now), "files": self.files, "ok": self.ok,
                "assumptions": {"pue": a.pue, "step": format_duration(self.policy.defaults.step),
                                "horizon": format_duration(self.policy.horizon),
                                "hardware": asdict(a.hardware),
                                "creationTimestamp": "now (as if applied now)"},
                "estimates": [e.to_json() for e in self.estimates],
                "errors": [asdict(f) for f in self.errors]}

    def render(self, fmt: Format) -> str:
        if fmt == "json":
            import json

            return json.dumps(self.to_json(), indent=2)
        return render_table(self)


def estimate_paths(paths: Iterable[str | Path], source: CarbonSource, policy: EstimatePolicy,
                   exclude: Sequence[str] = ()) -> Report:
    """Estimate every greenml object in the files/directories (minus ``exclude`` globs,
    as ``greenml lint --exclude``); errors become Findings."""
    files, errors = yaml_files(paths, exclude)
    estimates: list[Estimate] = []
    for f in files:
        docs, problems = documents(f)
        errors += problems
        for doc in docs:
            if not is_greenml(doc.obj):
                continue
            label = finding(doc, "", "").obj
            try:
                estimates.append(ESTIMATORS[doc.obj["kind"]](doc.obj, source, policy, doc.file, label))
            except InvalidSpec as exc:
                errors.append(finding(doc, exc.field, exc.message))
            except (inf.InferenceSpecError, acc.AccountingError, ValueError) as exc:
                errors.append(finding(doc, "spec", str(exc)))
    return Report(len(files), tuple(estimates), tuple(errors), policy)


# ------------------------------------------------------------------ table


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)]


def _windows(windows: tuple[tuple[datetime, datetime], ...]) -> str:
    if not windows:
        return "-"
    text = f"{format_time(windows[0][0])} → {format_time(windows[0][1])}"
    return text + (f" (+{len(windows) - 1} more)" if len(windows) > 1 else "")


def _training_rows(es: list[TrainingEstimate]) -> list[str]:
    rows = [[e.obj.removeprefix("TrainingJob "), e.zone, str(e.gpus), f"{e.watts:g} ({e.power_source})",
             format_duration(e.duration), f"{e.energy_kwh:.2f}", f"{e.savings.counterfactual.operational_g:,.0f}",
             f"{e.savings.actual.operational_g:,.0f}", f"{e.operational_savings_percent:.1f}",
             f"{e.savings.actual.embodied_g:,.0f}", _windows(e.windows), e.reason] for e in es]
    return _table(["TRAININGJOB", "ZONE", "GPUS", "WATTS", "DURATION", "KWH", "RUN-NOW G", "PLANNED G",
                   "SAVED %", "EMBODIED G", "BEST WINDOW (UTC)", "REASON"], rows)


def _budget(e: InferenceEstimate) -> str:
    parts = ([f"{e.carbon_grams:,.0f} g"] if e.carbon_grams is not None else []) + (
        [f"{e.energy_kwh:g} kWh"] if e.energy_kwh is not None else [])
    return " + ".join(parts) + f"/{e.period}"


def _inference_rows(es: list[InferenceEstimate]) -> list[str]:
    rows = [[e.obj.removeprefix("InferenceBudget "), e.zone, _budget(e), f"{e.load_rps:g}",
             f"{e.best.name} ×{e.best.replicas}: {e.best.kwh:.3f} kWh, {e.best.grams:,.0f} g",
             f"{e.floor.name} ×{e.floor.replicas}: {e.floor.kwh:.3f} kWh, {e.floor.grams:,.0f} g",
             e.verdict()] for e in es]
    return _table(["INFERENCEBUDGET", "ZONE", "BUDGET", "LOAD RPS", "ALWAYS BEST (PER PERIOD)",
                   "ALWAYS FLOOR (PER PERIOD)", "VERDICT"], rows)


def render_table(report: Report) -> str:
    lines: list[str] = []
    jobs = [e for e in report.estimates if isinstance(e, TrainingEstimate)]
    budgets = [e for e in report.estimates if isinstance(e, InferenceEstimate)]
    if jobs:
        lines += [*_training_rows(jobs), ""]
    if budgets:
        lines += [*_inference_rows(budgets), ""]
        lines += [f"{e.obj}: {format_time(e.start)} → {format_time(e.end)}, load {e.load_assumption}"
                  for e in budgets] + [""]
    notes = list(dict.fromkeys(n for e in report.estimates for n in e.intensity.notes()))
    a = report.policy.accounting
    lines += [f"note: {n}" for n in notes]
    lines.append(f"note: as if applied at {format_time(report.policy.now)}")
    if jobs:
        h = a.hardware
        lines.append(f"note: TrainingJob grams = IT energy × intensity × PUE {a.pue:g}; embodied = "
                     f"{h.gpu_embodied_kg:g} kg/GPU ({h.gpu_lifetime_years:g} y) + {h.server_embodied_kg:g} kg per "
                     f"{h.gpus_per_server}-GPU server ({h.server_lifetime_years:g} y), for the time reserved "
                     "(Luccioni et al. 2023; greenml.planning.accounting)")
    if budgets:
        lines.append("note: InferenceBudget figures are IT energy × intensity, as the operator accounts budgets "
                     "(no PUE, no embodied)")
    lines += [f.text() for f in report.errors]
    lines.append(f"{report.files} file(s), {len(report.estimates)} estimate(s), {len(report.errors)} error(s)")
    return "\n".join(lines)
