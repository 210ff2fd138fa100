"""Carbon-aware time shifting of batch jobs: the planner.

Pure and vectorised. Time is a grid of slots starting at ``now`` (slot 0 is the
slot that starts now); a forecast is an array of gCO2e/kWh per slot, one per zone.

Guarantees (tested by brute force and hypothesis properties):
- every plan's runs lie in [earliest, latest_end) when the job is feasible at all;
- total planned slots == remaining work;
- a non-interruptible job gets exactly one run;
- with a capacity, planned GPU use never exceeds it unless a job is *forced*
  (reason ``CapacityForced``/``DeadlineForced``: the deadline wins over waiting);
- under a perfect forecast a plan never emits more than running immediately.

Capacity coupling: jobs are planned one at a time in order of urgency (least
slack first), each taking the cheapest feasible placement on the capacity that
is still free. This is a greedy heuristic, not a joint optimum; its distance to
the optimum is measured in bench/.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

DEFAULT_ZONE = "default"

# reasons (also used as condition reasons)
PLANNED = "Planned"
RUN_NOW = "RunNow"                    # running immediately is (one of) the cheapest
DEADLINE_FORCED = "DeadlineForced"    # the job cannot wait any longer / cannot meet the deadline
CAPACITY_FORCED = "CapacityForced"    # no placement fits the free capacity before the deadline
MAX_INTENSITY_RELAXED = "MaxIntensityRelaxed"  # not enough slots under maxIntensity
PINNED = "Running"                    # running non-interruptible job: never stopped
DONE = "Done"


@dataclass(frozen=True)
class JobSpec:
    """The planner's view of one job. All times are slot indices relative to now (slot 0)."""

    name: str
    remaining: int                 # slots of work left
    latest_end: int                # runs must end by this slot (exclusive): deadline − safety margin
    earliest: int = 0              # no run before this slot
    gpus: int = 0
    power_kw: float = 0.0          # draw while running (kW), for grams
    interruptible: bool = False
    min_run: int = 1               # interruptible: shortest run (slots)
    pinned: int = 0                # first `pinned` slots from `earliest` must run (job is running)
    max_intensity: float | None = None
    zone: str = DEFAULT_ZONE


@dataclass(frozen=True)
class JobPlan:
    name: str
    runs: tuple[tuple[int, int], ...]   # sorted, non-overlapping, merged [start, end) slot ranges
    grams: float                          # expected on the forecast
    run_now_grams: float                  # counterfactual: run from `earliest`, uninterrupted
    reason: str = PLANNED

    @property
    def starts_now(self) -> bool:
        """True when slot 0 is a run slot: the job should be running right now."""
        return bool(self.runs) and self.runs[0][0] == 0

    @property
    def first_start(self) -> int | None:
        return self.runs[0][0] if self.runs else None

    @property
    def slots(self) -> int:
        return sum(e - s for s, e in self.runs)

    @property
    def savings_fraction(self) -> float:
        if self.run_now_grams <= 0:
            return 0.0
        return (self.run_now_grams - self.grams) / self.run_now_grams


@dataclass
class _Grid:
    forecasts: Mapping[str, np.ndarray]
    horizon: int
    step_hours: float
    free: np.ndarray | None           # free GPUs per slot (float), None = unlimited
    cums: dict[str, np.ndarray] = field(default_factory=dict)

    def forecast(self, zone: str) -> np.ndarray:
        f = self.forecasts.get(zone)
        if f is None:
            if len(self.forecasts) == 1:
                return next(iter(self.forecasts.values()))
            raise KeyError(f"no forecast for zone {zone!r}")
        return f

    def cum(self, zone: str) -> np.ndarray:
        c = self.cums.get(zone)
        if c is None:
            c = np.concatenate(([0.0], np.cumsum(self.forecast(zone))))
            self.cums[zone] = c
        return c


def _extend(f: np.ndarray, n: int) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.size == 0:
        raise ValueError("empty forecast")
    if f.size >= n:
        return f[:n]
    return np.concatenate((f, np.full(n - f.size, f[-1])))


def _merge(runs: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for s, e in sorted(runs):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return tuple((s, e) for s, e in out)


def _runs_of_mask(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    if not mask.any():
        return ()
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return tuple(zip(starts.tolist(), ends.tolist()))


def _window_best(cost_cum: np.ndarray, bad: np.ndarray | None, lo: int, hi: int, k: int) -> int | None:
    """Cheapest start s in [lo, hi] of a k-slot window with no bad slot; earliest on ties."""
    if hi < lo:
        return None
    starts = np.arange(lo, hi + 1)
    sums = cost_cum[starts + k] - cost_cum[starts]
    if bad is not None:
        bad_cum = np.concatenate(([0], np.cumsum(bad[lo:hi + k], dtype=np.int64)))
        ok = (bad_cum[k:k + len(starts)] - bad_cum[:len(starts)]) == 0
        if not ok.any():
            return None
        sums = np.where(ok, sums, np.inf)
    return lo + int(np.argmin(sums))


def _cheapest_slots(f: np.ndarray, bad: np.ndarray | None, lo: int, hi: int, k: int) -> np.ndarray | None:
    """Boolean mask (length hi) of the k cheapest allowed slots in [lo, hi); earliest on ties."""
    span = f[lo:hi]
    allowed = np.ones(span.size, dtype=bool) if bad is None else ~bad[lo:hi]
    idx = np.flatnonzero(allowed)
    if idx.size < k:
        return None
    # stable sort: ties go to the earlier slot
    order = idx[np.argsort(span[idx], kind="stable")[:k]]
    mask = np.zeros(hi, dtype=bool)
    mask[lo + order] = True
    return mask


def _greedy_min_run(f: np.ndarray, cum: np.ndarray, bad: np.ndarray | None, lo: int, hi: int,
                    k: int, m: int) -> tuple[tuple[int, int], ...] | None:
    """k slots in [lo, hi) as runs of at least m slots: one window of m + (k mod m), then
    windows of m, each the cheapest that overlaps nothing chosen so far."""
    q, r = divmod(k, m)
    lengths = [m + r] + [m] * (q - 1) if q >= 1 else [k]
    taken = np.zeros(hi, dtype=bool) if bad is None else bad[:hi].copy()
    runs: list[tuple[int, int]] = []
    for length in lengths:
        s = _window_best(cum, taken, lo, hi - length, length)
        if s is None:
            return None
        runs.append((s, s + length))
        taken[s:s + length] = True
    return _merge(runs)


class _Planner:
    def __init__(self, grid: _Grid) -> None:
        self.g = grid

    def cost(self, zone: str, runs: Sequence[tuple[int, int]]) -> float:
        cum = self.g.cum(zone)
        return float(sum(cum[e] - cum[s] for s, e in runs))

    def bad_mask(self, job: JobSpec, *, capacity: bool, intensity: bool) -> np.ndarray | None:
        bad = None
        if capacity and self.g.free is not None and job.gpus > 0:
            bad = self.g.free < job.gpus
        if intensity and job.max_intensity is not None:
            hot = self.g.forecast(job.zone) > job.max_intensity
            bad = hot if bad is None else (bad | hot)
        return bad

    def place(self, job: JobSpec, lo: int, hi: int, k: int, bad: np.ndarray | None) -> tuple[tuple[int, int], ...] | None:
        f = self.g.forecast(job.zone)
        cum = self.g.cum(job.zone)
        if k <= 0:
            return ()
        best_window = _window_best(cum, bad, lo, hi - k, k)
        if not job.interruptible:
            return None if best_window is None else ((best_window, best_window + k),)
        candidates: list[tuple[tuple[int, int], ...]] = []
        if best_window is not None:
            candidates.append(((best_window, best_window + k),))
        if job.min_run <= 1:
            mask = _cheapest_slots(f, bad, lo, hi, k)
            if mask is not None:
                candidates.append(_runs_of_mask(mask))
        else:
            runs = _greedy_min_run(f, cum, bad, lo, hi, k, job.min_run)
            if runs is not None:
                candidates.append(runs)
        if not candidates:
            return None
        return min(candidates, key=lambda rs: (self.cost(job.zone, rs), rs[0][0]))

    def plan_one(self, job: JobSpec) -> JobPlan:
        g = self.g
        k = max(0, int(job.remaining))
        e = max(0, int(job.earliest))
        end = int(job.latest_end)
        run_now = ((e, e + k),) if k else ()
        rn_grams = self.grams(job, run_now)
        if k == 0:
            return JobPlan(job.name, (), 0.0, 0.0, DONE)
        pinned = min(k, max(0, int(job.pinned)))
        if pinned and not job.interruptible:
            return self._done(job, run_now, rn_grams, PINNED)
        prefix: tuple[tuple[int, int], ...] = ((e, e + pinned),) if pinned else ()
        lo = e + pinned
        rest = k - pinned
        hi = min(end, g.horizon)
        if lo + rest > hi:
            # cannot finish by the deadline: run from now, uninterrupted
            return self._done(job, _merge(prefix + ((lo, lo + rest),)), rn_grams, DEADLINE_FORCED)
        reason = PLANNED
        runs = self.place(job, lo, hi, rest, self.bad_mask(job, capacity=True, intensity=True))
        if runs is None and job.max_intensity is not None:
            runs = self.place(job, lo, hi, rest, self.bad_mask(job, capacity=True, intensity=False))
            reason = MAX_INTENSITY_RELAXED
        if runs is None:
            runs = self.place(job, lo, hi, rest, self.bad_mask(job, capacity=False, intensity=False))
            reason = CAPACITY_FORCED
        assert runs is not None  # lo + rest <= hi, so an unconstrained window exists
        runs = _merge(prefix + runs)
        if reason == PLANNED and runs and runs[0][0] == e and len(runs) == 1:
            reason = RUN_NOW
        return self._done(job, runs, rn_grams, reason)

    def grams(self, job: JobSpec, runs: Sequence[tuple[int, int]]) -> float:
        return self.cost(job.zone, runs) * job.power_kw * self.g.step_hours

    def _done(self, job: JobSpec, runs: tuple[tuple[int, int], ...], rn_grams: float, reason: str) -> JobPlan:
        if self.g.free is not None and job.gpus > 0:
            for s, e in runs:
                self.g.free[s:e] -= job.gpus
        return JobPlan(job.name, runs, self.grams(job, runs), rn_grams, reason)


def urgency_order(jobs: Sequence[JobSpec]) -> list[int]:
    """Running jobs first, then least slack, then earliest deadline, then name (deterministic)."""
    def key(i: int) -> tuple:
        j = jobs[i]
        slack = j.latest_end - j.earliest - j.remaining
        return (0 if j.pinned else 1, slack, j.latest_end, j.name)
    return sorted(range(len(jobs)), key=key)


def plan(jobs: Sequence[JobSpec], forecasts: Mapping[str, np.ndarray] | np.ndarray, *,
         step_hours: float, capacity_gpus: float | None = None,
         reserved_gpus: np.ndarray | None = None) -> list[JobPlan]:
    """Plan all jobs together. Returns one JobPlan per job, in the input order.

    ``forecasts``: gCO2e/kWh per slot from now, per zone (or one array for all jobs);
    shorter forecasts are extended with their last value up to the furthest deadline.
    ``capacity_gpus``: GPUs available per slot (None: unlimited); ``reserved_gpus``:
    GPUs already taken per slot by work the planner does not manage.
    """
    if isinstance(forecasts, np.ndarray) or isinstance(forecasts, (list, tuple)):
        forecasts = {DEFAULT_ZONE: np.asarray(forecasts, dtype=np.float64)}
    if not jobs:
        return []
    horizon = max(max(j.latest_end, j.earliest + j.remaining) for j in jobs)
    horizon = max(horizon, 1)
    fc = {z: _extend(f, horizon) for z, f in forecasts.items()}
    free = None
    if capacity_gpus is not None:
        free = np.full(horizon, float(capacity_gpus))
        if reserved_gpus is not None:
            r = np.asarray(reserved_gpus, dtype=np.float64)[:horizon]
            free[: r.size] -= r
    planner = _Planner(_Grid(fc, horizon, step_hours, free))
    out: list[JobPlan | None] = [None] * len(jobs)
    for i in urgency_order(jobs):
        out[i] = planner.plan_one(jobs[i])
    return [p for p in out if p is not None]


def usage(plans: Sequence[JobPlan], jobs: Sequence[JobSpec], horizon: int) -> np.ndarray:
    """GPUs in use per slot under the given plans (for checks and metrics)."""
    use = np.zeros(horizon)
    by_name = {j.name: j for j in jobs}
    for p in plans:
        for s, e in p.runs:
            use[s:min(e, horizon)] += by_name[p.name].gpus
    return use
