"""Simulated jobs, their results, CSV readers (JOBS.csv, FORECASTS.csv) and emission
accounting on the actual series.

Accounting integrates the actual intensity (a step function) over each run exactly,
so a run that ends mid-slot is charged for the part it used.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from greenml.signals.base import IntensitySeries
from greenml.timeutil import format_time, parse_time

if TYPE_CHECKING:
    from greenml.planning.power import CapPolicy

JOB_COLUMNS = ("name", "submit_utc", "duration_minutes", "deadline_utc", "gpus", "watts_per_gpu", "interruptible")
FORECAST_COLUMNS = ("issued_utc", "target_utc", "gco2_per_kwh")
EPS = timedelta(microseconds=1)


class SimInputError(ValueError):
    """A bad simulator input; the message names the file, line and column."""


@dataclass(frozen=True)
class SimJob:
    """One batch job as the simulator sees it (absolute UTC times)."""

    name: str
    submit: datetime
    duration: timedelta
    deadline: datetime
    gpus: int = 1
    watts_per_gpu: float = 300.0
    interruptible: bool = False
    min_run: timedelta | None = None     # None: the policy's default
    max_intensity: float | None = None
    zone: str | None = None              # the grid zone whose series it runs on (None: the one series given)
    body: dict | None = field(default=None, compare=False)  # the TrainingJob CR, when it came from one
    #: its resolved spec.power.cap (None: uncapped), as in ``JobRequirements``: carbon-aware,
    #: ``duration`` and ``watts`` are at maxWatts and the replay runs it at the published cap;
    #: static, they are already the capped ones
    cap: "CapPolicy | None" = None

    @property
    def watts(self) -> float:
        """Total draw: gpus × watts_per_gpu (a CPU-only job: watts_per_gpu is the job's draw)."""
        return self.gpus * self.watts_per_gpu if self.gpus > 0 else self.watts_per_gpu

    @property
    def power_kw(self) -> float:
        return self.watts / 1000.0

    @property
    def slack(self) -> timedelta:
        return self.deadline - self.submit - self.duration


@dataclass(frozen=True)
class JobResult:
    name: str
    runs: tuple[tuple[datetime, datetime], ...]
    grams: float                 # on the actual series
    run_now_grams: float         # counterfactual: start at submit, run uninterrupted
    deadline_met: bool
    completed: bool
    reason: str = ""             # last decision reason (greenml) or policy note
    gpus: int = 0
    watts: float = 0.0           # total draw while running
    unplaceable: bool = False    # more GPUs than the capacity: never runs, never counted as savings
    #: a carbon-aware capped job: the cap (W per GPU, None: uncapped) of each run in ``runs``
    #: and its energy as the operator counts it (``services.trainingjob.capped_usage``)
    caps: tuple[float | None, ...] | None = None
    energy_kwh: float | None = None

    @property
    def kwh(self) -> float:
        if self.energy_kwh is not None:
            return self.energy_kwh
        return self.watts * sum((e - s).total_seconds() for s, e in self.runs) / 3.6e6

    @property
    def savings_fraction(self) -> float:
        """Below running at submit; 0 for a job that did not complete (work never done is no saving)."""
        if not self.completed or self.run_now_grams <= 0:
            return 0.0
        return (self.run_now_grams - self.grams) / self.run_now_grams

    def to_json(self) -> dict:
        return {"name": self.name, "runs": [[format_time_precise(s), format_time_precise(e)] for s, e in self.runs],
                "grams": round(self.grams, 3), "run_now_grams": round(self.run_now_grams, 3),
                "deadline_met": self.deadline_met, "completed": self.completed, "reason": self.reason,
                "gpus": self.gpus, "watts": round(self.watts, 3), "kwh": round(self.kwh, 6),
                "unplaceable": self.unplaceable, **({"caps": list(self.caps)} if self.caps is not None else {})}


def format_time_precise(dt: datetime) -> str:
    """format_time, keeping sub-second precision only when there is some."""
    return format_time(dt) if dt.microsecond == 0 else dt.isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- accounting

class Accountant:
    """Exact integrals of an actual series: grams = kW × ∫ intensity dt (hours)."""

    def __init__(self, actual: IntensitySeries) -> None:
        self.actual = actual
        self._step_h = actual.step.total_seconds() / 3600.0
        self._cum = np.concatenate(([0.0], np.cumsum(actual.values) * self._step_h))

    def _integral_to(self, t: datetime) -> float:
        pos = (t - self.actual.start).total_seconds() / self.actual.step.total_seconds()
        n = len(self.actual)
        if pos < 0 or pos > n + 1e-9:
            raise SimInputError(f"time {format_time(t)} is outside the intensity series "
                                f"[{format_time(self.actual.start)}, {format_time(self.actual.end)})")
        i = min(int(pos), n - 1)
        return float(self._cum[i] + (pos - i) * self._step_h * self.actual.values[i])

    def kwh_intensity(self, start: datetime, end: datetime) -> float:
        """∫ intensity dt over [start, end) in g/kWh × h."""
        return self._integral_to(end) - self._integral_to(start) if end > start else 0.0

    def grams(self, power_kw: float, runs: Sequence[tuple[datetime, datetime]]) -> float:
        return power_kw * sum(self.kwh_intensity(s, e) for s, e in runs)


# ---------------------------------------------------------------- readers

def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "y", "t"):
        return True
    if t in ("0", "false", "no", "n", "f", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _rows(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SimInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise SimInputError(f"{path}: empty file") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise SimInputError(f"{path}: missing column(s) {', '.join(missing)}; header is {header}")
    rows = []
    for line, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise SimInputError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
        rows.append((line, {h: c.strip() for h, c in zip(header, row)}))
    return header, rows


def _field(path: Path, line: int, column: str, raw: str, convert):
    try:
        return convert(raw)
    except (ValueError, TypeError) as exc:
        raise SimInputError(f"{path}:{line}: column {column!r}: {exc}") from None


def _positive_float(text: str) -> float:
    v = float(text)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"must be a positive number, got {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise ValueError(f"must be >= 0, got {text!r}")
    return v


def read_jobs_csv(path: str | Path) -> list[SimJob]:
    """JOBS.csv: name,submit_utc,duration_minutes,deadline_utc,gpus,watts_per_gpu,interruptible."""
    p = Path(path)
    _, rows = _rows(p, JOB_COLUMNS)
    jobs: list[SimJob] = []
    seen: set[str] = set()
    for line, r in rows:
        name = r["name"]
        if not name:
            raise SimInputError(f"{p}:{line}: column 'name': empty")
        if name in seen:
            raise SimInputError(f"{p}:{line}: column 'name': duplicate job name {name!r}")
        seen.add(name)
        submit = _field(p, line, "submit_utc", r["submit_utc"], parse_time)
        minutes = _field(p, line, "duration_minutes", r["duration_minutes"], _positive_float)
        deadline = _field(p, line, "deadline_utc", r["deadline_utc"], parse_time)
        duration = timedelta(minutes=minutes)
        if submit + duration > deadline:
            raise SimInputError(f"{p}:{line}: column 'deadline_utc': deadline {format_time(deadline)} is before "
                                f"submit + duration ({format_time(submit + duration)})")
        jobs.append(SimJob(
            name=name, submit=submit, duration=duration, deadline=deadline,
            gpus=_field(p, line, "gpus", r["gpus"], _nonneg_int),
            watts_per_gpu=_field(p, line, "watts_per_gpu", r["watts_per_gpu"], _positive_float),
            interruptible=_field(p, line, "interruptible", r["interruptible"], _bool),
        ))
    if not jobs:
        raise SimInputError(f"{p}: no jobs")
    return jobs


def write_jobs_csv(path: str | Path, jobs: Sequence[SimJob]) -> None:
    """The inverse of read_jobs_csv (benchmarks and tests write their workloads this way)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(JOB_COLUMNS)
        for j in jobs:
            w.writerow([j.name, format_time(j.submit), f"{j.duration.total_seconds() / 60:g}", format_time(j.deadline),
                        j.gpus, f"{j.watts_per_gpu:g}", "true" if j.interruptible else "false"])


@dataclass(frozen=True)
class ForecastSnapshots:
    """FORECASTS.csv: forecast snapshots as issued. ``issues`` sorted; per issue (targets, values)."""

    issues: tuple[datetime, ...]
    targets: tuple[tuple[datetime, ...], ...]
    values: tuple[np.ndarray, ...]


def read_forecasts_csv(path: str | Path) -> ForecastSnapshots:
    p = Path(path)
    _, rows = _rows(p, FORECAST_COLUMNS)
    by_issue: dict[datetime, dict[datetime, float]] = {}
    for line, r in rows:
        issued = _field(p, line, "issued_utc", r["issued_utc"], parse_time)
        target = _field(p, line, "target_utc", r["target_utc"], parse_time)
        value = _field(p, line, "gco2_per_kwh", r["gco2_per_kwh"], float)
        if not np.isfinite(value) or value < 0:
            raise SimInputError(f"{p}:{line}: column 'gco2_per_kwh': must be finite and >= 0, got {r['gco2_per_kwh']!r}")
        by_issue.setdefault(issued, {})[target] = value
    if not by_issue:
        raise SimInputError(f"{p}: no forecast rows")
    issues = tuple(sorted(by_issue))
    targets = tuple(tuple(sorted(by_issue[i])) for i in issues)
    values = tuple(np.array([by_issue[i][t] for t in ts]) for i, ts in zip(issues, targets))
    return ForecastSnapshots(issues, targets, values)
