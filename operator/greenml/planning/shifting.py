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
is still free. This is a greedy heuristic, not a joint optimum. When it leaves a
job without room before its deadline, deadlines win: a repair step (see
``_plan_capacity``) looks for a witness schedule that meets every deadline within
the capacity, replans the carbon placement guarded by it (so no job is ever
pushed out), and only jobs that no witness could place are flagged ``at_risk``;
jobs needing more GPUs than the capacity are ``unplaceable`` and take none.
``greenml.planning.capacity`` holds the checks (deadline/capacity verification,
the demand bound that proves infeasibility, the exact MILP for small instances).

Speed: per zone the forecast's prefix sums, window sums per length and the slot
ranks are computed once and shared by all jobs, so each job costs a few O(span)
numpy calls (bench/bench_planner.py measures it).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
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
DEADLINE_AT_RISK = "DeadlineAtRisk"   # no schedule found that meets this deadline within capacity
UNPLACEABLE = "Unplaceable"           # needs more GPUs than the capacity: can never run


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
    #: the work left exactly, in slots (≤ ``remaining``, which rounds it up): the capped
    #: planner (planning.power) sizes a slower cap on it — rounded up first, a job's last
    #: part slot looked like a whole one, and a lower cap then took a slot more than the
    #: work needs, so the tail of a run went uncapped. None: ``remaining``
    work: float | None = None


@dataclass(frozen=True)
class JobPlan:
    name: str
    runs: tuple[tuple[int, int], ...]   # sorted, non-overlapping, merged [start, end) slot ranges
    grams: float                          # expected on the forecast
    run_now_grams: float                  # counterfactual: run from `earliest`, uninterrupted
    reason: str = PLANNED
    # capacity verdicts (always False without a capacity limit):
    at_risk: bool = False       # cannot meet its deadline within the capacity without breaking another's
    unplaceable: bool = False   # needs more GPUs than the capacity: never runs (runs == ())

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

    def fit(self, job: JobSpec) -> tuple[_Runs, str] | None:
        """The job's cheapest placement within the free capacity and before its deadline,
        with its reason; None when there is none. Running work (the pinned prefix, a
        running non-interruptible job) always fits: it is never stopped."""
        z = self.zone(job)
        k = max(0, int(job.remaining))
        e = max(0, int(job.earliest))
        if k == 0:
            return (), DONE
        pinned = min(k, max(0, int(job.pinned)))
        if pinned and not job.interruptible:
            return ((e, e + k),), PINNED
        prefix: _Runs = ((e, e + pinned),) if pinned else ()
        lo = e + pinned
        rest = k - pinned
        hi = min(int(job.latest_end), z.f.size)
        if lo + rest > hi:
            return None
        reason = PLANNED
        runs = self.attempt(z, job, lo, hi, rest, capacity=True, intensity=True)
        if runs is None and job.max_intensity is not None:
            runs = self.attempt(z, job, lo, hi, rest, capacity=True, intensity=False)
            reason = MAX_INTENSITY_RELAXED
        if runs is None:
            return None
        runs = _merge(prefix + runs) if prefix else runs
        if reason == PLANNED and len(runs) == 1 and runs[0][0] == e:
            reason = RUN_NOW
        return runs, reason

    def forced(self, job: JobSpec) -> tuple[_Runs, str]:
        """When nothing fits: run from now if the deadline cannot be met at all, else the
        cheapest placement before the deadline regardless of capacity."""
        z = self.zone(job)
        k = max(0, int(job.remaining))
        e = max(0, int(job.earliest))
        pinned = min(k, max(0, int(job.pinned)))
        lo, rest, hi = e + pinned, k - pinned, min(int(job.latest_end), z.f.size)
        if lo + rest > hi:
            return ((e, e + k),), DEADLINE_FORCED
        runs = self.attempt(z, job, lo, hi, rest, capacity=False, intensity=False)
        assert runs is not None  # lo + rest <= hi, so an unconstrained window exists
        return (_merge(((e, lo),) + runs) if pinned else runs), CAPACITY_FORCED

    def plan_one(self, job: JobSpec) -> JobPlan:
        got = self.fit(job)
        runs, reason = got if got is not None else self.forced(job)
        self.take(job, runs)
        return self.price(job, runs, reason, at_risk=reason == DEADLINE_FORCED)

    def grams(self, z: _Zone, job: JobSpec, runs: Sequence[tuple[int, int]]) -> float:
        return z.cost(runs) * job.power_kw * self.step_hours

    def take(self, job: JobSpec, runs: _Runs, sign: float = 1.0) -> None:
        """Occupy (sign 1) or free (sign -1) the job's GPUs over its runs."""
        if self.free is not None and job.gpus > 0:
            for s, e in runs:
                self.free[s:e] -= sign * job.gpus

    def price(self, job: JobSpec, runs: _Runs, reason: str, **flags: bool) -> JobPlan:
        """The plan with its grams, and the run-now grams from `earliest`."""
        z = self.zone(job)
        k = max(0, int(job.remaining))
        if k == 0:
            return JobPlan(job.name, (), 0.0, 0.0, DONE)
        e = max(0, int(job.earliest))
        return JobPlan(job.name, runs, self.grams(z, job, runs), self.grams(z, job, ((e, e + k),)), reason, **flags)


def urgency_order(jobs: Sequence[JobSpec]) -> list[int]:
    """Running jobs first, then least slack, then earliest deadline, then name (deterministic)."""
    def key(i: int) -> tuple:
        j = jobs[i]
        slack = j.latest_end - j.earliest - j.remaining
        return (0 if j.pinned else 1, slack, j.latest_end, j.name)
    return sorted(range(len(jobs)), key=key)


def _time_infeasible(job: JobSpec) -> bool:
    """Cannot meet its deadline even on an empty cluster (running non-interruptible work aside)."""
    k = max(0, int(job.remaining))
    if k == 0 or (job.pinned and not job.interruptible):
        return False
    return max(0, int(job.earliest)) + k > int(job.latest_end)


def _edf_order(jobs: Sequence[JobSpec]) -> list[int]:
    """Running jobs first, then earliest deadline, least slack, name."""
    def key(i: int) -> tuple:
        j = jobs[i]
        return (0 if j.pinned else 1, j.latest_end, j.latest_end - j.earliest - j.remaining, j.name)
    return sorted(range(len(jobs)), key=key)


_Placed = dict[int, tuple[_Runs, str]]


def _greedy_pass(planner: _Planner, jobs: Sequence[JobSpec], order: Sequence[int]) -> tuple[_Placed, list[int]]:
    """Place jobs in `order`, each on what the ones before it left; a job with no room
    before its deadline takes nothing and is returned in the second list."""
    placed: _Placed = {}
    failed: list[int] = []
    for i in order:
        got = planner.fit(jobs[i])
        if got is None:
            failed.append(i)
            continue
        planner.take(jobs[i], got[0])
        placed[i] = got
    return placed, failed


# improvement passes after a repair: each job re-placed cheapest on what all others leave
# (after the plain greedy such a pass changes nothing: each job already has its cheapest)
IMPROVE_PASSES = 2
IMPROVE_ALL_UP_TO = 2_000     # jobs; above it one pass (speed: 10,000 jobs plan in seconds)
# the exact witness (a MILP, see greenml.planning.capacity) when the heuristics find none:
# only on instances up to this many variables (job × slot choices), and for at most this long
EXACT_MAX_VARIABLES = 50_000
EXACT_TIME_LIMIT_S = 2.0


def _plan_capacity(jobs: Sequence[JobSpec], zones: Mapping[str, _Zone], step_hours: float,
                   free: np.ndarray, capacity_gpus: float,
                   incumbent: Mapping[str, Sequence[tuple[int, int]]] | None = None) -> list[JobPlan]:
    """Plan under a GPU capacity with deadlines as promises.

    1. Jobs needing more GPUs than the capacity are unplaceable: no runs, no capacity, no
       savings (``unplaceable``). Jobs that cannot meet their deadline even alone are late
       whatever happens (``at_risk``).
    2. The greedy (urgency order, cheapest placement on the free capacity), late jobs
       first from now. When it places every other job before its deadline within the
       capacity, that is the plan.
    3. Else repair. A witness -- a schedule that meets deadlines within the capacity -- is
       looked for (``_witness``: the incumbent plan first, so promises made stand, then
       heuristics, then the exact MILP on small instances). Jobs it cannot place, and the
       late ones, are at risk: they get the earliest room the witness leaves, past their
       deadline (reason DeadlineAtRisk), so they take no GPUs promised to others. Then the
       carbon placement is redone guarded by the witness: each job in urgency order gives
       back its witness slots and takes the cheapest placement on what is free -- its own
       witness slots are always there, so no job loses its room -- and improvement passes
       re-place each job on what all others leave (never dearer).
    A plan not flagged is thus always within its window and, together with the others,
    within the capacity (``greenml.planning.capacity.verify`` checks it in the tests).
    """
    n = len(jobs)
    out: list[JobPlan | None] = [None] * n
    base_planner = _Planner(zones, step_hours, None)
    unplaceable = [i for i, j in enumerate(jobs)
                   if j.gpus > capacity_gpus and j.remaining > 0 and not j.pinned]
    for i in unplaceable:
        out[i] = JobPlan(jobs[i].name, (), 0.0, 0.0, UNPLACEABLE, unplaceable=True)
    skip = set(unplaceable)
    doomed = [i for i in urgency_order(jobs) if i not in skip and _time_infeasible(jobs[i])]
    skip.update(doomed)
    order = [i for i in urgency_order(jobs) if i not in skip]

    def fresh(zs: Mapping[str, _Zone] = zones) -> _Planner:
        return _Planner(zs, step_hours, free.copy())

    horizon = free.size
    asap = _Zone.of(np.arange(1.0, horizon + 1.0))

    def place_late(p: _Planner, late: Sequence[int], reason: str) -> _Placed:
        """Late but harming no one: the earliest room within the capacity (past the deadline);
        () when there is none within the horizon yet."""
        first = _Planner({z: asap for z in zones}, step_hours, p.free)
        out: _Placed = {}
        for i in late:
            got = first.fit(replace(jobs[i], latest_end=horizon, max_intensity=None))
            if got is not None:
                runs = got[0]
            else:    # running work is never stopped (even over the capacity); else no room yet
                runs = base_planner.forced(jobs[i])[0] if jobs[i].pinned else ()
            p.take(jobs[i], runs)
            out[i] = (runs, reason)
        return out

    # 1. the greedy, late jobs first (from now, within the capacity): when every other
    #    deadline holds, that is the plan
    from greenml.planning import capacity

    # the demand bound proves when no schedule keeps every deadline: then the greedy cannot
    # be the plan, and the repair starts at once (10,000 jobs: one pass less)
    proven = capacity.demand_bound([jobs[i] for i in order], float(free.max(initial=0.0)),
                                   reserved_gpus=float(free.max(initial=0.0)) - free) is not None
    planner = fresh()
    running = [i for i in order if jobs[i].pinned]     # running work first: it is never stopped
    placed, failed = _greedy_pass(planner, jobs, running)
    late_plans = place_late(planner, doomed, DEADLINE_FORCED)
    if proven:
        failed = [i for i in order if i not in placed]
    else:
        started = set(running)
        more, rest_failed = _greedy_pass(planner, jobs, [i for i in order if i not in started])
        placed.update(more)
        failed += rest_failed
    if failed:
        # 2. repair: a witness for as many deadlines as possible; late jobs get what it leaves
        witness, failed = _witness(jobs, order, (placed, failed), zones, fresh, incumbent, asap, proven)
        planner = fresh()
        for i, (runs, _) in witness.items():
            planner.take(jobs[i], runs)
        late_plans = place_late(planner, [i for i in urgency_order(jobs) if i in set(doomed) | set(failed)],
                                DEADLINE_AT_RISK)
        # 3. the carbon placement again, guarded by the witness
        placed = {}
        for i in order:
            if i not in witness:
                continue
            planner.take(jobs[i], witness[i][0], -1.0)
            got = planner.fit(jobs[i]) or witness[i]
            planner.take(jobs[i], got[0])
            placed[i] = got
        for _ in range(IMPROVE_PASSES if len(order) <= IMPROVE_ALL_UP_TO else 1):
            if not _improve(planner, jobs, placed):
                break
    for i, (runs, reason) in late_plans.items():
        p = base_planner.price(jobs[i], runs, reason, at_risk=True)
        out[i] = p if runs else replace(p, run_now_grams=0.0)     # no plan: no savings to claim
    for i, (runs, reason) in placed.items():
        out[i] = planner.price(jobs[i], runs, reason)
    return [p for p in out if p is not None]


def _witness(jobs: Sequence[JobSpec], order: list[int], greedy: tuple[_Placed, list[int]],
             zones: Mapping[str, _Zone], fresh: Callable[..., _Planner],
             incumbent: Mapping[str, Sequence[tuple[int, int]]] | None, asap: _Zone,
             proven: bool) -> tuple[_Placed, list[int]]:
    """A schedule meeting as many deadlines as possible within the capacity (ideally all).

    Tried in turn, the first that places every job wins, else the one that breaks the
    fewest promises (jobs with an incumbent plan left out), then leaves the fewest jobs
    (then GPU-slots) out, earlier ones on ties: the incumbent (the last
    committed plan, still valid) with the other jobs placed greedily -- it keeps the
    promises already made, so a newcomer that does not fit is the one at risk; the greedy
    with its failed jobs first; as late, then as early as possible in deadline order; as
    late as possible in urgency order; last the exact MILP on small instances. Each
    heuristic is one greedy pass on a shared table. When the demand bound proves that
    no schedule keeps every deadline, only the incumbent and the first of these run."""
    horizon = next(iter(zones.values())).f.size
    alap = _Zone.of(np.arange(float(horizon), 0.0, -1.0))
    in_order = set(order)
    edf = [i for i in _edf_order(jobs) if i in in_order]
    valid = {i: _valid_incumbent(jobs[i], (incumbent or {}).get(jobs[i].name), horizon) for i in order}
    promised = {i for i, runs in valid.items() if runs is not None}

    def kept() -> tuple[_Placed, list[int]] | None:
        if not promised:
            return None
        p = fresh()
        placed: _Placed = {}
        for i in order:
            runs = valid[i]
            if runs is None and jobs[i].pinned:
                runs = p.fit(jobs[i])[0] if p.fit(jobs[i]) else None
            if runs is not None:
                p.take(jobs[i], runs)
                placed[i] = (runs, PLANNED)
        if p.free is not None and (p.free < -1e-9).any():
            return None        # the capacity shrank under it: not a witness
        more, failed = _greedy_pass(p, jobs, [i for i in order if i not in placed])
        return {**placed, **more}, failed

    first = set(greedy[1])
    running = [i for i in order if jobs[i].pinned]     # placed first in every order: never stopped
    def exact() -> tuple[_Placed, list[int]] | None:
        """The MILP (greenml.planning.capacity.optimum) when the instance is small enough and
        scipy is there: exact, so when it finds no schedule, none exists."""
        from greenml.planning import capacity

        p = fresh()
        if p.free is None:
            return None
        sub = [jobs[i] for i in order]
        cap = float(p.free.max(initial=0.0))
        opt = capacity.optimum(sub, {z: zz.f for z, zz in zones.items()}, step_hours=p.step_hours,
                               capacity_gpus=cap, reserved_gpus=cap - p.free,
                               time_limit_s=EXACT_TIME_LIMIT_S, max_variables=EXACT_MAX_VARIABLES)
        if not opt.runs:
            return None
        placed: _Placed = {}
        for i in order:
            runs = opt.runs.get(jobs[i].name, ())
            if sum(e - s for s, e in runs) != max(0, int(jobs[i].remaining)):
                return None
            p.take(jobs[i], runs)
            placed[i] = (runs, PLANNED)
        return (placed, []) if not (p.free < -1e-6).any() else None

    tries: list[Callable[[], tuple[_Placed, list[int]] | None]] = [
        kept,
        lambda: _greedy_pass(fresh(), jobs, running + [i for i in greedy[1] if i not in running]
                             + [i for i in order if i not in first and i not in running]),
        lambda: _greedy_pass(fresh({z: alap for z in zones}), jobs, edf),
        lambda: _greedy_pass(fresh({z: asap for z in zones}), jobs, edf),
        lambda: _greedy_pass(fresh({z: alap for z in zones}), jobs, order),
        exact,
    ]
    if proven:
        # the demand bound proves that no schedule keeps every deadline: no complete witness
        # to look for; keep the promises (incumbent), else the witness that measured best at
        # leaving few jobs out on overloaded instances (latest placement in deadline order)
        tries = [kept, tries[2]]

    def rank(c: tuple[_Placed, list[int]]) -> tuple[int, int, int]:
        return (sum(i in promised for i in c[1]), len(c[1]), _gpu_slots(jobs, c[1]))

    best = greedy
    for t in tries:
        got = t()
        if got is None:
            continue
        if not got[1]:
            return got
        if rank(got) < rank(best):
            best = got
    return best


def _gpu_slots(jobs: Sequence[JobSpec], idx: Sequence[int]) -> int:
    return sum(jobs[i].gpus * jobs[i].remaining for i in idx)


def _valid_incumbent(job: JobSpec, runs: Sequence[tuple[int, int]] | None, horizon: int) -> _Runs | None:
    """The job's previous plan (slots relative to now) when it is still a valid plan for it:
    inside [earliest, latest_end), the running prefix first, one run if non-interruptible,
    runs of >= min_run after the prefix; extra slots at the end are dropped (the job ran
    more than planned)."""
    if runs is None:
        return None
    k = max(0, int(job.remaining))
    e = max(0, int(job.earliest))
    rs = _merge([(max(int(s), e), int(t)) for s, t in runs])
    out: list[tuple[int, int]] = []
    left = k
    for s, t in rs:
        if left <= 0:
            break
        out.append((s, min(t, s + left)))
        left -= out[-1][1] - s
    if left or k == 0:
        return None
    if out[0][0] < e or out[-1][1] > min(int(job.latest_end), horizon):
        return None
    pinned = min(k, max(0, int(job.pinned)))
    if pinned and (out[0][0] != e or out[0][1] < e + pinned):
        return None
    if not job.interruptible and len(out) != 1:
        return None
    m = max(1, int(job.min_run))
    tail = [(max(s, e + pinned), t) for s, t in out if t > e + pinned]
    if job.interruptible and any(t - s < m for s, t in tail[1 if pinned else 0:]) and k - pinned >= 2 * m:
        return None
    return tuple(out)


def _improve(planner: _Planner, jobs: Sequence[JobSpec], placed: _Placed) -> bool:
    """Re-place each job (the largest emitters first) on what all the others leave: its own
    slots are always free to it, so no job loses its room and none gets dearer. True when
    some placement changed."""
    changed = False
    for i in sorted(placed, key=lambda i: (-jobs[i].power_kw * jobs[i].remaining, jobs[i].name)):
        runs, reason = placed[i]
        if reason == PINNED or jobs[i].gpus <= 0:
            continue
        planner.take(jobs[i], runs, -1.0)
        got = planner.fit(jobs[i]) or (runs, reason)
        planner.take(jobs[i], got[0])
        changed = changed or got[0] != runs
        placed[i] = got
    return changed


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


def capacity_binds(jobs: Sequence[JobSpec], capacity_gpus: float,
                   reserved_gpus: np.ndarray | float | None = None) -> bool:
    """False when the capacity cannot bind: every job's GPUs together (plus the most
    reserved at once) fit in every slot, so no placement can take room from another and
    each job's own optimum is the joint one — planned as without a capacity (same plans,
    none at risk or unplaceable; the capacity path costs a repair check over all jobs)."""
    reserved = 0.0 if reserved_gpus is None else float(np.max(reserved_gpus, initial=0.0))
    return sum(j.gpus for j in jobs) + reserved > capacity_gpus


def plan(jobs: Sequence[JobSpec], forecasts: Mapping[str, np.ndarray] | np.ndarray, *,
         step_hours: float, capacity_gpus: float | None = None,
         reserved_gpus: np.ndarray | None = None,
         incumbent: Mapping[str, Sequence[tuple[int, int]]] | None = None) -> list[JobPlan]:
    """Plan all jobs together. Returns one JobPlan per job, in the input order.

    ``forecasts``: gCO2e/kWh per slot from now, per zone (or one array for all jobs);
    shorter forecasts are extended with their last value up to the furthest deadline.
    ``capacity_gpus``: GPUs available per slot (None: unlimited); ``reserved_gpus``:
    GPUs already taken per slot by work the planner does not manage; ``incumbent``: the
    last committed plan (runs per job name, slots relative to now), a witness the repair
    tries first so that promises made stand (see ``_plan_capacity``).
    With a capacity, each plan says whether its deadline is at risk or the job is
    unplaceable (``JobPlan.at_risk`` / ``.unplaceable``).
    Raises PlanningInputError (a ValueError) for unusable forecasts or an unknown zone.
    """
    if not jobs:
        return []
    if capacity_gpus is not None and not capacity_binds(jobs, capacity_gpus, reserved_gpus):
        capacity_gpus = None
    horizon = max(1, max(max(j.latest_end, max(0, j.earliest) + j.remaining) for j in jobs))
    if capacity_gpus is not None:
        # room for the late plans of jobs at risk (past every deadline all capacity is free)
        work = [max(0, j.remaining) for j in jobs]
        horizon += min(sum(work), horizon + max(work))
    zones = _zones(forecasts, horizon)
    free = None
    if capacity_gpus is not None:
        free = np.full(horizon, float(capacity_gpus))
        if reserved_gpus is not None:
            r = np.asarray(reserved_gpus, dtype=np.float64)[:horizon]
            free[: r.size] -= r
        return _plan_capacity(jobs, zones, step_hours, free, float(capacity_gpus), incumbent)
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
