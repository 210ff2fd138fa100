"""Power caps in simulation: shifting alone, capping alone, and both, on the same jobs.

Forecasts: perfect foresight by default, any ``sim.forecasts`` forecaster. Strategies:

- ``run-now``   start at submit, uncapped (the baseline);
- ``capping``   start at submit, never paused, one cap for the whole run: the level with the
                least carbon that still ends by the deadline (``power.place_capped`` on a
                running job, on the forecast at submit) — what a carbon-aware cap does
                without shifting (the operator has no such mode: a counterfactual);
- ``shifting``  the operator's replay (``sim.shifting.simulate``, policy ``greenml``): the
                plan board replans every step on the forecast issued then and
                ``services.trainingjob.decide`` pauses and resumes, tick by tick; uncapped;
- ``both``      the same replay with every job carbon-aware over the GPU's curve: the board
                chooses windows and a cap per window (``power.refine``), and each job runs
                as the TrainingJob controller runs it — ``capped_view`` for the board and
                ``decide``, the cap of now (``PlanBoard.cap_for``), a change of cap rebasing
                the run segment (``capped_segment``), energy through ``capped_usage``;
- ``shifting-at-submit`` / ``both-at-submit``: each job planned once at submit
                (``shifting.plan`` / ``power.plan_with_caps``) and followed as planned, for
                comparison with the replays (no replan, no forecast update).

Emissions and energy are accounted on the actual series (``jobs.Accountant``): each run
draws ``watts × power factor`` of its cap and does ``1 / time factor`` of work per unit of
time; the last run ends exactly when the work is done. No GPU capacity limit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Sequence

import numpy as np

from greenml.planning import power, shifting
from greenml.signals.base import IntensitySeries, SignalError
from greenml.sim.forecasts import Forecaster
from greenml.sim.jobs import Accountant, JobResult, SimInputError, SimJob
from greenml.sim.shifting import SimPolicy, simulate

STRATEGIES = ("run-now", "capping", "shifting", "both")
AT_SUBMIT = ("shifting-at-submit", "both-at-submit")


@dataclass(frozen=True)
class CapSimConfig:
    step: timedelta = timedelta(minutes=30)
    gpu_model: str = "A40"                  # the curve (planning.power.curve_for) and the GPU's limit
    min_run: timedelta = timedelta(minutes=30)
    forecast_label: str = "perfect"


@dataclass(frozen=True)
class Outcome:
    grams: float
    kwh: float
    wall_s: float            # run time (all runs)
    end: datetime | None
    deadline_met: bool


@dataclass
class CapSimResult:
    config: CapSimConfig
    jobs: list[str]
    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)

    def summary(self) -> dict:
        base = sum(o.grams for o in self.outcomes["run-now"])
        base_kwh = sum(o.kwh for o in self.outcomes["run-now"])
        out = {"jobs": len(self.jobs), "gpu_model": self.config.gpu_model, "forecast": self.config.forecast_label,
               "step_minutes": self.config.step.total_seconds() / 60, "strategies": {}}
        for name, outs in self.outcomes.items():
            g, kwh = sum(o.grams for o in outs), sum(o.kwh for o in outs)
            out["strategies"][name] = {
                "grams": round(g, 3), "kwh": round(kwh, 4),
                "savings_percent": round(100 * (base - g) / base, 3) if base > 0 else 0.0,
                "energy_change_percent": round(100 * (kwh - base_kwh) / base_kwh, 3) if base_kwh > 0 else 0.0,
                "deadlines_met": sum(o.deadline_met for o in outs),
                "mean_stretch": round(float(np.mean([o.wall_s for o in outs]) /
                                            max(1e-9, np.mean([r.wall_s for r in self.outcomes["run-now"]]))), 4)}
        return out


def cap_policy(gpu_model: str) -> power.CapPolicy:
    """Carbon-aware over the whole curve of the model: from its lowest point to uncapped."""
    from greenml.signals.gpus import lookup

    spec = lookup(gpu_model)
    if spec is None:
        raise SimInputError(f"unknown GPU model {gpu_model!r}")
    curve = power.curve_for(gpu_model)
    return power.CapPolicy("carbonAware", round(curve.points[0].fraction * spec.tdp_w, 1), spec.tdp_w, spec.tdp_w, curve)


def _account(acc: Accountant, job: SimJob, submit: datetime, step: timedelta, runs, levels) -> Outcome:
    """Runs in slots from submit with their levels → grams and kWh on the actual series, the
    last run cut where the work (the job's duration at full speed) is done."""
    left = job.duration.total_seconds()
    grams = kwh = wall = 0.0
    end = None
    for (s, e), lv in zip(runs, levels):
        if left <= 1e-6:
            break
        seg = min((e - s) * step.total_seconds(), left / lv.speed)
        a = submit + step * s
        b = a + timedelta(seconds=seg)
        kw = job.power_kw * lv.power
        grams += kw * acc.kwh_intensity(a, b)
        kwh += kw * seg / 3600.0
        wall += seg
        left -= seg * lv.speed
        end = b
    met = left <= 1e-6 and end is not None and end <= job.deadline + timedelta(seconds=1)
    return Outcome(grams, kwh, wall, end, met)


def simulate_caps(jobs: Sequence[SimJob], actual: IntensitySeries, forecaster: Forecaster,
                  config: CapSimConfig = CapSimConfig()) -> CapSimResult:
    policy = cap_policy(config.gpu_model)
    levels = policy.levels()
    top = levels[-1]
    acc = Accountant(actual)
    step, step_h = config.step, config.step.total_seconds() / 3600.0
    res = CapSimResult(config, [j.name for j in jobs], {s: [] for s in STRATEGIES + AT_SUBMIT})
    for job in jobs:
        work = job.duration / step
        k = int(math.ceil(work - 1e-9))
        latest_end = int((job.deadline - job.submit) // step)
        if latest_end < k:
            raise SimInputError(f"job {job.name}: its deadline is shorter than its duration")
        try:
            f = forecaster(job.zone or "sim", job.submit, step * latest_end).resample(job.submit, step, latest_end)
        except SignalError as exc:
            raise SimInputError(f"job {job.name}: no forecast at submit: {exc}") from None
        spec = shifting.JobSpec(job.name, k, latest_end, gpus=job.gpus, power_kw=job.power_kw,
                                interruptible=job.interruptible,
                                min_run=max(1, int(math.ceil((job.min_run or config.min_run) / step - 1e-9))),
                                max_intensity=job.max_intensity,
                                # the capped plans sized on the work itself, as the board does (a part last slot)
                                work=work if work < k else None)
        plain = shifting.plan([spec], f, step_hours=step_h)[0]
        capped = power.place_capped(f, replace(spec, pinned=k, interruptible=False), levels)
        (joint, caps), = power.plan_with_caps([spec], f, step_hours=step_h, levels={spec.name: levels})
        joint_levels = [policy.level(c) if caps else top for c in (caps or [None] * len(joint.runs))]
        plans = {
            "run-now": (((0, k),), (top,)),
            "capping": (capped.runs, capped.levels) if capped else (((0, k),), (top,)),
            "shifting-at-submit": (plain.runs, (top,) * len(plain.runs)),
            "both-at-submit": (joint.runs, tuple(joint_levels)),
        }
        for name, (runs, lvs) in plans.items():
            res.outcomes[name].append(_account(acc, job, job.submit, step, runs, lvs))
    # the operator's own loop, tick by tick: uncapped, and every job carbon-aware over the curve
    replay = SimPolicy("greenml", step=step, min_run=config.min_run, forecast_label=config.forecast_label)
    for name, run in (("shifting", jobs), ("both", [replace(j, cap=policy) for j in jobs])):
        res.outcomes[name] = [_outcome(r) for r in simulate(run, actual, forecaster, replay).jobs]
    return res


def _outcome(r: JobResult) -> Outcome:
    return Outcome(r.grams, r.kwh, sum((e - s).total_seconds() for s, e in r.runs),
                   max((e for _, e in r.runs), default=None), r.deadline_met)
