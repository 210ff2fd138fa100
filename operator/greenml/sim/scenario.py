"""The default scenario behind ``greenml simulate``: the sample TrainingJobs shipped
with the package (``greenml/data/scenario/``, the same files as the repository's
``examples/``; several copies, created at staggered times) over a week of the embedded
carbon profile, decided by the operator's own code (``policy=greenml``), with the
operator's default settings (5-minute slots, 15-minute safety margin, replan every
15 minutes). Each job runs on the series of its own ``spec.carbon.zone`` (the
``zone`` setting for jobs without one, as the operator's default zone). Offline and
deterministic.
"""
from __future__ import annotations

import copy
from importlib import resources
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import yaml

from greenml.lint import load_manifests
from greenml.services.trainingjob import Defaults, InvalidSpec, resolve
from greenml.signals.base import IntensitySeries
from greenml.signals.embedded import profile_values
from greenml.sim import forecasts
from greenml.sim.jobs import SimInputError, SimJob
from greenml.sim.shifting import SimPolicy, SimResult, simulate
from greenml.timeutil import format_time

#: the default scenario's manifests, shipped as package data (works from any install)
DEFAULT_EXAMPLES = Path(str(resources.files("greenml") / "data" / "scenario"))
START = datetime(2024, 3, 4, tzinfo=timezone.utc)    # a Monday; fixed so the run is reproducible
COPY_OFFSETS = (timedelta(hours=6), timedelta(hours=40), timedelta(hours=78), timedelta(hours=110))


@dataclass(frozen=True)
class ScenarioConfig:
    zone: str = "DE"
    start: datetime = START
    days: int = 7
    copies: int = len(COPY_OFFSETS)
    examples: Path = DEFAULT_EXAMPLES
    policy: SimPolicy = field(default_factory=lambda: SimPolicy(
        step=timedelta(minutes=5), safety_margin=timedelta(minutes=15),
        replan_interval=timedelta(minutes=15), forecast_label="embedded (perfect)"))


@dataclass
class ScenarioRun:
    config: ScenarioConfig
    jobs: list[SimJob]
    result: SimResult
    notes: list[str]
    intensities: dict[str, IntensitySeries] = field(default_factory=dict)   # zone → the series its jobs ran on


def load_examples(directory: Path, kind: str) -> list[tuple[Path, dict]]:
    """All objects of ``kind`` in ``directory``/*.yaml (multi-document files allowed)."""
    if not directory.is_dir():
        raise SimInputError(f"examples directory not found: {directory} (pass --examples DIR)")
    out = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            docs = load_manifests(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise SimInputError(f"{path}: not valid YAML: {exc}") from None
        out += [(path, d) for d in docs if isinstance(d, dict) and d.get("kind") == kind]
    return out


def example_jobs(cfg: ScenarioConfig) -> list[SimJob]:
    """Resolve every example TrainingJob the operator's way, once per copy."""
    defaults = Defaults(zone=cfg.zone, safety_margin=cfg.policy.safety_margin, min_run=cfg.policy.min_run,
                        step=cfg.policy.step)  # GPU watts: the operator's cited table
    jobs = []
    examples = load_examples(cfg.examples, "TrainingJob")
    if not examples:
        raise SimInputError(f"no TrainingJob examples in {cfg.examples}")
    for n, (path, body) in enumerate(examples):
        for c in range(cfg.copies):
            b = copy.deepcopy(body)
            meta = b.setdefault("metadata", {})
            created = cfg.start + COPY_OFFSETS[c % len(COPY_OFFSETS)] + timedelta(hours=24 * (c // len(COPY_OFFSETS)) + 2 * n)
            meta["creationTimestamp"] = format_time(created)
            meta["name"] = f"{meta.get('name', path.stem)}-{c + 1}"
            try:
                req = resolve(b, defaults)
            except InvalidSpec as exc:
                raise SimInputError(f"{path}: {exc}") from None
            jobs.append(SimJob(name=req.name, submit=created, duration=req.duration, deadline=req.deadline,
                               gpus=req.gpus, watts_per_gpu=req.watts / req.gpus if req.gpus else req.watts,
                               interruptible=req.interruptible, min_run=req.min_run,
                               max_intensity=req.max_intensity, zone=req.zone, body=b))
    return jobs


def embedded_week(cfg: ScenarioConfig, jobs: list[SimJob], zone: str | None = None) -> IntensitySeries:
    zone = zone or cfg.zone
    end = max([cfg.start + timedelta(days=cfg.days)] + [j.deadline + j.duration for j in jobs]) + timedelta(hours=1)
    n = int((end - cfg.start) // timedelta(hours=1)) + 1
    values = profile_values(zone, cfg.start, timedelta(hours=1), n)   # SignalError for an unknown zone
    return IntensitySeries(cfg.start, timedelta(hours=1), values, source=f"embedded {zone}", estimate=True)


def _peak_gpus(results) -> int:
    """Most GPUs running at once across all jobs (runs are half-open intervals)."""
    events = sorted([(s, r.gpus) for r in results for s, _ in r.runs] + [(e, -r.gpus) for r in results for _, e in r.runs],
                    key=lambda ev: (ev[0], ev[1]))
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def run_default(cfg: ScenarioConfig = ScenarioConfig(), *,
                on_progress: Callable[[float], None] | None = None) -> ScenarioRun:
    """Simulate the example jobs, each on its own zone's embedded series. Jobs share no
    capacity limit in this scenario, so each zone's jobs are simulated as one group and
    the results merged in the jobs' order; ``result.intensity`` is the ``--zone`` series,
    ``intensities`` each zone's (the picture's curves)."""
    jobs = example_jobs(cfg)
    zones = list(dict.fromkeys(j.zone or cfg.zone for j in jobs))
    by_name = {}
    parts = []
    curves: dict[str, IntensitySeries] = {}
    for i, zone in enumerate(zones):
        group = [j for j in jobs if (j.zone or cfg.zone) == zone]
        actual = curves[zone] = embedded_week(cfg, jobs, zone)

        def progress(f: float, i: int = i) -> None:
            if on_progress:
                on_progress((i + f) / len(zones))

        part = simulate(group, actual, forecasts.perfect(actual), cfg.policy, on_progress=progress)
        parts.append(part)
        by_name.update({r.name: r for r in part.jobs})
    shown = embedded_week(cfg, jobs, cfg.zone)
    merged = [by_name[j.name] for j in jobs]
    result = replace(parts[0], jobs=merged, peak_gpus=_peak_gpus(merged), intensity=shown,
                     wall_seconds=sum(p.wall_seconds for p in parts),
                     start=min(p.start for p in parts), end=max(p.end for p in parts),
                     notes=[n for p in parts for n in p.notes])
    counts = {z: sum((j.zone or cfg.zone) == z for j in jobs) for z in zones}
    notes = [f"Carbon intensity: the embedded profile of each job's spec.carbon.zone "
             f"({', '.join(f'{z}: {c} jobs' for z, c in counts.items())}; default zone {cfg.zone}), "
             "a fitted climatology (estimate=True), used both as the actual series and as the forecast."]
    return ScenarioRun(cfg, jobs, result, notes, curves)
