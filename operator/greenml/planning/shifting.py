"""Carbon-aware time shifting of batch jobs: the planner.

Pure and vectorised. Time is a grid of slots starting at ``now`` (slot 0 is the
slot that starts now); a forecast is an array of gCO2e/kWh per slot, one per zone.

Guarantees (tested by brute force and hypothesis properties in tests/unit/):
- every plan's runs lie in [earliest, latest_end) when the job is feasible at all;
- total planned slots == remaining work;
- a non-interruptible job gets exactly one run;
- with a capacity, planned GPU use never exceeds it unless a job is *forced*
  (reason ``CapacityForced``/``DeadlineForced``: the deadline wins over waiting)
  or already running (pinned work is never stopped);
- under a perfect forecast and without maxIntensity, a plan never emits more than
  running immediately.

Placement of one job is exact: the cheapest window (non-interruptible), the
cheapest slots (interruptible, min_run = 1), and for min_run > 1 an exact dynamic
programme over (slots used, time) -- O(k * (span - k)) cells, vectorised along
time -- whenever the cheapest slots do not already form runs of >= min_run.
Ties go to the earliest placement.

Capacity coupling: jobs are planned one at a time in order of urgency (least
slack first), each taking the cheapest feasible placement on the capacity that
is still free. This is a greedy heuristic, not a joint optimum.

Speed: per zone the forecast's prefix sums, window sums per length and the slot
ranks are computed once and shared by all jobs, so each job costs a few O(span)
numpy calls (bench/bench_planner.py measures it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

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


class PlanningInputError(ValueError):
    """Input the planner cannot use (bad forecast, unknown zone); the message names it."""


_Runs = tuple[tuple[int, int], ...]


@dataclass
class _Zone:
    """One zone's forecast over the horizon and the per-forecast tables all jobs share."""

    f: np.ndarray                  # gCO2e/kWh per slot
    cum: np.ndarray                # prefix sums, len T + 1: cost of [s, e) = cum[e] - cum[s]
    rank: np.ndarray               # position of each slot in a stable ascending sort (ties: earlier)
    _windows: dict[int, np.ndarray] = field(default_factory=dict)
    _hot: dict[float, np.ndarray] = field(default_factory=dict)
    _tables: dict[tuple[int, int, float | None], "_MinRunTable"] = field(default_factory=dict)

    @classmethod
    def of(cls, f: np.ndarray) -> "_Zone":
        rank = np.empty(f.size, dtype=np.int64)
        rank[np.argsort(f, kind="stable")] = np.arange(f.size)
        return cls(f, np.concatenate(([0.0], np.cumsum(f))), rank)

    def windows(self, k: int) -> np.ndarray:
        """Cost of every k-slot window, indexed by start (len T - k + 1); cached per k."""
        w = self._windows.get(k)
        if w is None:
            w = self.cum[k:] - self.cum[:-k]
            self._windows[k] = w
        return w

    def hot(self, max_intensity: float) -> np.ndarray:
        """Slots above max_intensity; cached per threshold."""
        h = self._hot.get(max_intensity)
        if h is None:
            h = self.f > max_intensity
            self._hot[max_intensity] = h
        return h

    def min_run_table(self, lo: int, m: int, max_intensity: float | None) -> "_MinRunTable":
        """The shared min-run DP table for jobs placed from `lo` on, forbidding the
        slots above max_intensity (None: nothing forbidden); cached."""
        key = (lo, m, max_intensity)
        t = self._tables.get(key)
        if t is None:
            bad = None if max_intensity is None else self.hot(max_intensity)[lo:]
            t = _MinRunTable(self, bad, lo, self.f.size, m, self.f.size - lo + 1)
            self._tables[key] = t
        return t

    def cost(self, runs: Sequence[tuple[int, int]]) -> float:
        """Summed intensity of the runs, added left to right (the same float every time)."""
        if len(runs) == 1:
            (s, e), = runs
            return float(self.cum[e] - self.cum[s])
        return float(sum(self.cum[e] - self.cum[s] for s, e in runs))


def _extend(f: np.ndarray, n: int) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.size == 0:
        raise ValueError("empty forecast")
    if f.size >= n:
        return f[:n]
    return np.concatenate((f, np.full(n - f.size, f[-1])))


def _merge(runs: Sequence[tuple[int, int]]) -> _Runs:
    out: list[list[int]] = []
    for s, e in sorted(runs):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return tuple((s, e) for s, e in out)


def _runs_of_mask(mask: np.ndarray, offset: int = 0) -> _Runs:
    """[start, end) ranges of the True stretches of mask, shifted by offset."""
    padded = np.concatenate(([False], mask, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + offset
    it = iter(edges.tolist())
    return tuple(zip(it, it))


def _window_ok(bad: np.ndarray, k: int) -> np.ndarray:
    """For each start s in [0, len(bad) - k]: no bad slot in [s, s + k)."""
    c = np.concatenate(([0], np.cumsum(bad, dtype=np.int64)))
    return (c[k:] - c[:-k]) == 0


def _best_window(z: _Zone, bad: np.ndarray | None, lo: int, hi: int, k: int) -> int | None:
    """Cheapest start in [lo, hi - k] of a k-slot window without bad slots (bad covers
    [lo, hi)); earliest on ties."""
    if hi - k < lo:
        return None
    sums = z.windows(k)[lo:hi - k + 1]
    if bad is not None:
        ok = _window_ok(bad, k)
        if not ok.any():
            return None
        sums = np.where(ok, sums, np.inf)
    return lo + int(np.argmin(sums))


def _cheapest_mask(z: _Zone, bad: np.ndarray | None, lo: int, hi: int, k: int) -> np.ndarray | None:
    """Mask over [lo, hi) of the k cheapest allowed slots; earliest on ties.

    The k smallest global ranks inside the span are exactly the k first slots of a
    stable sort of the span, so one O(span) partition replaces a sort per job."""
    r = z.rank[lo:hi]
    if bad is not None:
        if int(np.count_nonzero(~bad)) < k:
            return None
        r = np.where(bad, z.rank.size, r)
    elif r.size < k:
        return None
    if k == r.size:
        return np.ones(k, dtype=bool)
    return r <= np.partition(r, k - 1)[k - 1]


class _MinRunTable:
    """Exact cheapest choice of k allowed slots in [lo, lo + t) whose maximal runs are
    all >= m slots (rows computed on demand, for many k and t at once).

    Cells (j slots used, boundary t): ON = slot t-1 used and its run already >= m;
    G = best of any state at t. ON[j][t] = min(ON[j-1][t-1] + c[t-1],
    G[j-m][t-m] + window_m(t-m)); G[j][t] = min over t' <= t of ON[j][t'].
    Row j is stored as a band u = t - j in [0, width): t < j is never feasible, and a
    single job of k slots in n needs only width n - k + 1. A row is five numpy calls
    along the band, so k slots cost O(k * width) in C. Answers for a prefix [lo, hi)
    do not depend on what lies after hi, so one table with width n + 1 serves every
    job that starts at lo with the same forbidden slots."""

    def __init__(self, z: _Zone, bad: np.ndarray | None, lo: int, hi: int, m: int, width: int) -> None:
        self.lo, self.m, self.width = lo, m, width
        n = hi - lo
        c = z.f[lo:hi]
        wm = z.windows(m)[lo:hi - m + 1] if n >= m else np.empty(0)
        if bad is not None:
            c = np.where(bad, np.inf, c)
            if n >= m:
                wm = np.where(_window_ok(bad, m), wm, np.inf)
        self.max_rows = n + 1      # j <= n slots fit: indices stay below n + width
        pad = n + width + 1
        self.c = np.concatenate((c, np.full(pad - c.size, np.inf)))
        self.wm = np.concatenate((wm, np.full(pad - wm.size, np.inf)))
        self.g = np.full((m, width), np.inf)
        self.g[0] = 0.0
        self.new_run = np.ones((m, width), dtype=bool)
        self.on = np.full(width, np.inf)

    def _grow(self, k: int) -> None:
        rows, m, w = self.g.shape[0], self.m, self.width
        if k < rows:
            return
        extra = min(max(k + 1, 2 * rows), self.max_rows) - rows
        self.g = np.vstack((self.g, np.full((extra, w), np.inf)))
        self.new_run = np.vstack((self.new_run, np.ones((extra, w), dtype=bool)))
        new = np.empty(w)
        ext = np.empty(w)
        for j in range(rows, rows + extra):
            np.add(self.g[j - m], self.wm[j - m:j - m + w], out=new)
            if j > m:
                np.add(self.on, self.c[j - 1:j - 1 + w], out=ext)
                np.less_equal(new, ext, out=self.new_run[j])
                np.minimum(new, ext, out=self.on)
            else:
                self.on[:] = new
            np.minimum.accumulate(self.on, out=self.g[j])

    def runs(self, k: int, t: int) -> _Runs | None:
        """The cheapest such choice of k slots in [lo, lo + t) (earliest ends on ties)."""
        u = t - k
        if not 0 <= u < self.width:
            return None
        self._grow(k)
        if not np.isfinite(self.g[k, u]):
            return None
        g, new_run, m = self.g, self.new_run, self.m
        out: list[tuple[int, int]] = []
        j = k
        while j > 0:
            row = g[j, :u + 1]
            u = int(np.argmax(row == row[u]))      # earliest end reaching this cost
            end = u + j
            while not new_run[j, u]:
                j -= 1
            out.append((self.lo + u + j - m, self.lo + end))
            j -= m
        return _merge(out)


def _min_run_exact(z: _Zone, bad: np.ndarray | None, lo: int, hi: int, k: int, m: int,
                   table: _MinRunTable | None = None) -> _Runs | None:
    """Cheapest k slots in [lo, hi) in runs of >= m (k >= 2m): the cheapest slots when
    they already form such runs (then they are optimal), else the exact DP (on
    `table` when given: it must start at lo and forbid exactly `bad` in [lo, hi))."""
    mask = _cheapest_mask(z, bad, lo, hi, k)
    if mask is None:
        return None
    runs = _runs_of_mask(mask, lo)
    if all(e - s >= m for s, e in runs):
        return runs
    if table is None:
        table = _MinRunTable(z, bad, lo, hi, m, hi - lo - k + 1)
    return table.runs(k, hi - lo)


def place(z: _Zone, job: JobSpec, bad: np.ndarray | None, lo: int, hi: int, k: int,
          table: Callable[[int], _MinRunTable] | None = None) -> _Runs | None:
    """Cheapest placement of k slots of `job` in [lo, hi) avoiding bad slots (a mask
    over [lo, hi)), or None when there is none. Ties: earliest first start.
    `table(m)` may supply a shared min-run DP table that forbids exactly `bad`."""
    if k <= 0:
        return ()
    s = _best_window(z, bad, lo, hi, k)
    window: _Runs | None = None if s is None else ((s, s + k),)
    if not job.interruptible:
        return window
    m = max(1, int(job.min_run))
    other: _Runs | None = None
    if m == 1:
        mask = _cheapest_mask(z, bad, lo, hi, k)
        other = None if mask is None else _runs_of_mask(mask, lo)
    elif k >= 2 * m:        # below 2m slots a single run is the only shape allowed
        other = _min_run_exact(z, bad, lo, hi, k, m, None if table is None else table(m))
    if window is None or other is None:
        return window or other
    return min((window, other), key=lambda rs: (z.cost(rs), rs[0][0]))


class _Planner:
    """Plans jobs one by one on shared zone tables and (optionally) free capacity."""

    def __init__(self, zones: Mapping[str, _Zone], step_hours: float, free: np.ndarray | None) -> None:
        self.zones = zones
        self.step_hours = step_hours
        self.free = free

    def zone(self, job: JobSpec) -> _Zone:
        z = self.zones.get(job.zone)
        if z is None:
            if len(self.zones) == 1:
                return next(iter(self.zones.values()))
            raise PlanningInputError(f"job {job.name!r}: no forecast for zone {job.zone!r} "
                                     f"(forecasts cover {sorted(self.zones)})")
        return z

    def attempt(self, z: _Zone, job: JobSpec, lo: int, hi: int, k: int, *, capacity: bool,
                intensity: bool) -> _Runs | None:
        """place() with the free capacity and/or maxIntensity as forbidden slots."""
        full = None
        if capacity and self.free is not None and job.gpus > 0:
            full = self.free[lo:hi] < job.gpus
            full = full if full.any() else None
        thr = float(job.max_intensity) if intensity and job.max_intensity is not None else None
        hot = None if thr is None else z.hot(thr)[lo:hi]
        if hot is not None and not hot.any():
            thr = hot = None
        bad = hot if full is None else (full if hot is None else full | hot)
        table = None if full is not None else (lambda m: z.min_run_table(lo, m, thr))
        return place(z, job, bad, lo, hi, k, table)

    def plan_one(self, job: JobSpec) -> JobPlan:
        z = self.zone(job)
        k = max(0, int(job.remaining))
        e = max(0, int(job.earliest))
        if k == 0:
            return JobPlan(job.name, (), 0.0, 0.0, DONE)
        run_now = ((e, e + k),)
        rn_grams = self.grams(z, job, run_now)
        pinned = min(k, max(0, int(job.pinned)))
        if pinned and not job.interruptible:
            return self._done(z, job, run_now, rn_grams, PINNED)
        prefix: _Runs = ((e, e + pinned),) if pinned else ()
        lo = e + pinned
        rest = k - pinned
        hi = min(int(job.latest_end), z.f.size)
        if lo + rest > hi:
            # cannot finish by the deadline: run from now, uninterrupted
            return self._done(z, job, run_now, rn_grams, DEADLINE_FORCED)
        reason = PLANNED
        runs = self.attempt(z, job, lo, hi, rest, capacity=True, intensity=True)
        if runs is None and job.max_intensity is not None:
            runs = self.attempt(z, job, lo, hi, rest, capacity=True, intensity=False)
            reason = MAX_INTENSITY_RELAXED
        if runs is None:
            runs = self.attempt(z, job, lo, hi, rest, capacity=False, intensity=False)
            reason = CAPACITY_FORCED
        assert runs is not None  # lo + rest <= hi, so an unconstrained window exists
        runs = _merge(prefix + runs) if prefix else runs
        if reason == PLANNED and len(runs) == 1 and runs[0][0] == e:
            reason = RUN_NOW
        return self._done(z, job, runs, rn_grams, reason)

    def grams(self, z: _Zone, job: JobSpec, runs: Sequence[tuple[int, int]]) -> float:
        return z.cost(runs) * job.power_kw * self.step_hours

    def _done(self, z: _Zone, job: JobSpec, runs: _Runs, rn_grams: float, reason: str) -> JobPlan:
        if self.free is not None and job.gpus > 0:
            for s, e in runs:
                self.free[s:e] -= job.gpus
        return JobPlan(job.name, runs, self.grams(z, job, runs), rn_grams, reason)


def urgency_order(jobs: Sequence[JobSpec]) -> list[int]:
    """Running jobs first, then least slack, then earliest deadline, then name (deterministic)."""
    def key(i: int) -> tuple:
        j = jobs[i]
        slack = j.latest_end - j.earliest - j.remaining
        return (0 if j.pinned else 1, slack, j.latest_end, j.name)
    return sorted(range(len(jobs)), key=key)


def _zones(forecasts: Mapping[str, np.ndarray] | np.ndarray, horizon: int) -> dict[str, _Zone]:
    """Validated forecasts, cut or extended (last value) to the horizon, as zone tables."""
    if not isinstance(forecasts, Mapping):
        forecasts = {DEFAULT_ZONE: forecasts}
    if not forecasts:
        raise PlanningInputError("forecasts: no zone given")
    zones = {}
    for name, f in forecasts.items():
        a = np.asarray(f, dtype=np.float64)
        if a.ndim != 1 or a.size == 0:
            raise PlanningInputError(f"forecast for zone {name!r}: need a non-empty 1-D array, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            bad = int(np.flatnonzero(~np.isfinite(a))[0])
            raise PlanningInputError(f"forecast for zone {name!r}: slot {bad} is not a finite number")
        zones[name] = _Zone.of(_extend(a, horizon))
    return zones


def plan(jobs: Sequence[JobSpec], forecasts: Mapping[str, np.ndarray] | np.ndarray, *,
         step_hours: float, capacity_gpus: float | None = None,
         reserved_gpus: np.ndarray | None = None) -> list[JobPlan]:
    """Plan all jobs together. Returns one JobPlan per job, in the input order.

    ``forecasts``: gCO2e/kWh per slot from now, per zone (or one array for all jobs);
    shorter forecasts are extended with their last value up to the furthest deadline.
    ``capacity_gpus``: GPUs available per slot (None: unlimited); ``reserved_gpus``:
    GPUs already taken per slot by work the planner does not manage.
    Raises PlanningInputError (a ValueError) for unusable forecasts or an unknown zone.
    """
    if not jobs:
        return []
    horizon = max(1, max(max(j.latest_end, max(0, j.earliest) + j.remaining) for j in jobs))
    zones = _zones(forecasts, horizon)
    free = None
    if capacity_gpus is not None:
        free = np.full(horizon, float(capacity_gpus))
        if reserved_gpus is not None:
            r = np.asarray(reserved_gpus, dtype=np.float64)[:horizon]
            free[: r.size] -= r
    planner = _Planner(zones, step_hours, free)
    out: list[JobPlan | None] = [None] * len(jobs)
    for i in urgency_order(jobs):
        out[i] = planner.plan_one(jobs[i])
    return [p for p in out if p is not None]


def usage(plans: Sequence[JobPlan], jobs: Sequence[JobSpec], horizon: int) -> np.ndarray:
    """GPUs in use per slot under the given plans (for checks and metrics)."""
    delta = np.zeros(horizon + 1)
    by_name = {j.name: j for j in jobs}
    for p in plans:
        g = by_name[p.name].gpus
        for s, e in p.runs:
            s, e = min(max(s, 0), horizon), min(e, horizon)
            if e > s:
                delta[s] += g
                delta[e] -= g
    return np.cumsum(delta)[:horizon]
