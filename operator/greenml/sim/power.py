"""Power caps in simulation: shifting alone, capping alone, and both, on the same jobs.

Each job is planned at its submit time on the forecast issued then (perfect foresight by
default; any ``sim.forecasts`` forecaster), through the planning code the operator runs:

- ``run-now``   start at submit, uncapped (the baseline);
- ``capping``   start at submit, never paused, one cap for the whole run: the level with the
                least carbon that still ends by the deadline (``power.place_capped`` on a
                running job) — what a carbon-aware cap does without shifting;
- ``shifting``  the shifting planner (``shifting.plan``), uncapped;
- ``both``      windows and a cap per window chosen jointly (``power.plan_with_caps``, the
                plan board's path).

Emissions and energy are accounted on the actual series (``jobs.Accountant``): each run
draws ``watts × power factor`` of its cap and does ``1 / time factor`` of work per unit of
time; the last run ends exactly when the work is done. Jobs are planned one by one on an
unlimited capacity (no GPU contention), and the live operator's pause/resume loop
(``decide``) is not replayed here: it does not count capped run time at its speed yet
(see docs/power-caps.md).
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
from greenml.sim.jobs import Accountant, SimInputError, SimJob

STRATEGIES = ("run-now", "capping", "shifting", "both")


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
    res = CapSimResult(config, [j.name for j in jobs], {s: [] for s in STRATEGIES})
    for job in jobs:
        k = int(math.ceil(job.duration / step - 1e-9))
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
                                max_intensity=job.max_intensity)
        plain = shifting.plan([spec], f, step_hours=step_h)[0]
        capped = power.place_capped(f, replace(spec, pinned=k, interruptible=False), levels)
        (joint, caps), = power.plan_with_caps([spec], f, step_hours=step_h, levels={spec.name: levels})
        joint_levels = [policy.level(c) if caps else top for c in (caps or [None] * len(joint.runs))]
        plans = {
            "run-now": (((0, k),), (top,)),
            "capping": (capped.runs, capped.levels) if capped else (((0, k),), (top,)),
            "shifting": (plain.runs, (top,) * len(plain.runs)),
            "both": (joint.runs, tuple(joint_levels)),
        }
        for name, (runs, lvs) in plans.items():
            res.outcomes[name].append(_account(acc, job, job.submit, step, runs, lvs))
    return res
