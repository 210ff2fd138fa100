"""The default scenario behind ``greenml simulate``: the sample TrainingJobs of
``examples/`` (several copies, created at staggered times) over a week of the embedded
carbon profile, decided by the operator's own code (``policy=greenml``), with the
operator's default settings (5-minute slots, 15-minute safety margin, replan every
15 minutes). Offline and deterministic.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import yaml

from greenml.services.trainingjob import Defaults, InvalidSpec, resolve
from greenml.signals.base import IntensitySeries
from greenml.signals.embedded import profile_values
from greenml.sim import forecasts
from greenml.sim.jobs import SimInputError, SimJob
from greenml.sim.shifting import SimPolicy, SimResult, simulate
from greenml.timeutil import format_time

REPO_EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
START = datetime(2024, 3, 4, tzinfo=timezone.utc)    # a Monday; fixed so the run is reproducible
COPY_OFFSETS = (timedelta(hours=6), timedelta(hours=40), timedelta(hours=78), timedelta(hours=110))


@dataclass(frozen=True)
class ScenarioConfig:
    zone: str = "DE"
    start: datetime = START
    days: int = 7
    copies: int = len(COPY_OFFSETS)
    examples: Path = REPO_EXAMPLES
    policy: SimPolicy = field(default_factory=lambda: SimPolicy(
        step=timedelta(minutes=5), safety_margin=timedelta(minutes=15),
        replan_interval=timedelta(minutes=15), forecast_label="embedded (perfect)"))


@dataclass
class ScenarioRun:
    config: ScenarioConfig
    jobs: list[SimJob]
    result: SimResult
    notes: list[str]


def load_examples(directory: Path, kind: str) -> list[tuple[Path, dict]]:
    """All objects of ``kind`` in ``directory``/*.yaml (multi-document files allowed)."""
    if not directory.is_dir():
        raise SimInputError(f"examples directory not found: {directory} (pass --examples DIR)")
    out = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
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
                               max_intensity=req.max_intensity, body=b))
    return jobs


def embedded_week(cfg: ScenarioConfig, jobs: list[SimJob]) -> IntensitySeries:
    end = max([cfg.start + timedelta(days=cfg.days)] + [j.deadline + j.duration for j in jobs]) + timedelta(hours=1)
    n = int((end - cfg.start) // timedelta(hours=1)) + 1
    return IntensitySeries(cfg.start, timedelta(hours=1), profile_values(cfg.zone, cfg.start, timedelta(hours=1), n),
                           source=f"embedded {cfg.zone}", estimate=True)


def run_default(cfg: ScenarioConfig = ScenarioConfig(), *,
                on_progress: Callable[[float], None] | None = None) -> ScenarioRun:
    jobs = example_jobs(cfg)
    actual = embedded_week(cfg, jobs)
    result = simulate(jobs, actual, forecasts.perfect(actual), cfg.policy, on_progress=on_progress)
    notes = [f"Carbon intensity: the embedded {cfg.zone} profile (a fitted climatology, estimate=True), "
             "used both as the actual series and as the forecast."]
    return ScenarioRun(cfg, jobs, result, notes)
