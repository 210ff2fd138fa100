"""GPU power caps: run time and draw as a function of the cap, and the joint choice of
windows and cap per window. Pure: no kopf, Kubernetes or network; ``now`` is a parameter.

The curve
---------
A ``CapCurve`` gives, for a cap expressed as a fraction of the GPU's maximum power limit,
the *time factor* (run time relative to running uncapped, ≥ 1) and the *power factor*
(average draw relative to the uncapped draw). The default curves are the medians of the
Zeus power-limit sweeps (You, Chung, Chowdhury, NSDI '23; ml-energy/zeus, Apache-2.0;
218 training configurations on A40, V100, P100 and Quadro RTX 6000), derived by
``bench/derive_power_curves.py`` (which writes bench/results/power_curves.json); GPUs
not in the sweep get the ``generic`` curve (the mean of the three recent GPUs' curves,
P100 left out as a generation older, as in greenml.signals.gpus). Only those derived
figures are here, no data rows. A job may give its own curve (``spec.power.cap.curve``).

Planning
--------
Work is counted in *full-speed slots*: a slot run at a cap whose time factor is ``t``
does ``1 / t`` slots of work and draws ``power factor × watts`` while it runs. A job with
``levels`` (the caps it may run at, from ``levels_for``) is placed by ``place_capped``:

- *uniform*: for every level, the cheapest placement of ``ceil(work × t)`` slots by the
  shifting planner's own exact placement (non-interruptible window, cheapest slots,
  min-run DP), under the same capacity / maxIntensity constraints. This is exact among
  plans that keep one cap for the whole job.
- *mixed* (interruptible jobs with minRunDuration of one slot): a cap per slot. This is a
  multiple-choice knapsack (pick a level, or "off", per slot so that the work done reaches
  the work left, at least carbon); the greedy over the lower convex hull of (speed, draw)
  solves its LP relaxation exactly, and the one fractional increment is rounded up to a
  whole one. So its cost is at most the optimum plus one slot's increment at the dirtiest
  slot: ``cost ≤ OPT + max_t f_t · Δp_max · step``  (``mixed_bound``; tests check it
  against brute force, and that it is usually exact).

The better of the two is taken; ties go to the uniform plan, then the earliest start.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Mapping, Sequence

import numpy as np

#: a level's speed below this counts as not running
_EPS = 1e-9

#: the pod annotation the operator publishes (W per GPU) and the node agent applies
CAP_ANNOTATION = "greenml.io/power-cap-watts"
#: the pod annotation the node agent reports what it did in (JSON)
APPLIED_ANNOTATION = "greenml.io/power-cap-applied"


@dataclass(frozen=True)
class CurvePoint:
    fraction: float        # cap / maximum power limit, in (0, 1]
    time_factor: float     # run time / uncapped run time (>= 1)
    power_factor: float    # average draw / uncapped average draw (<= 1 for a real cap)


@dataclass(frozen=True)
class CapCurve:
    """Time and draw against the cap (as a fraction of the maximum power limit)."""

    name: str
    points: tuple[CurvePoint, ...]
    source: str = ""

    def __post_init__(self) -> None:
        pts = tuple(sorted(self.points, key=lambda p: p.fraction))
        if not pts:
            raise ValueError(f"curve {self.name}: no points")
        for p in pts:
            if not (0 < p.fraction <= 1 and p.time_factor >= 1 - 1e-9 and p.power_factor > 0):
                raise ValueError(f"curve {self.name}: bad point {p}")
        object.__setattr__(self, "points", pts)

    def at(self, fraction: float) -> tuple[float, float]:
        """(time factor, power factor) at a cap fraction, linear between points; above the
        last point the last point's, below the first point the first point's."""
        xs = [p.fraction for p in self.points]
        tf = float(np.interp(fraction, xs, [p.time_factor for p in self.points]))
        pf = float(np.interp(fraction, xs, [p.power_factor for p in self.points]))
        if fraction >= 1.0:
            return 1.0, 1.0
        return max(1.0, tf), min(1.0, pf)


def _curve(name: str, rows: Sequence[tuple[float, float, float]]) -> CapCurve:
    return CapCurve(name, tuple(CurvePoint(*r) for r in rows), "Zeus NSDI'23 power-limit sweep, medians")


# (cap / max limit, median time factor, median power factor) per GPU of the sweep, written by
# bench/derive_power_curves.py from ../shared/data/gpu_power/zeus_nsdi23_power_limit_sweep.csv
CURVES: dict[str, CapCurve] = {
    "A40": _curve("A40", ((0.3333, 2.824, 0.538), (0.4167, 1.965, 0.622), (0.5, 1.332, 0.674), (0.5833, 1.076, 0.776),
                          (0.6667, 1.046, 0.847), (0.75, 1.016, 0.919), (0.8333, 1.011, 0.961),
                          (0.9167, 1.005, 0.981), (1.0, 1.0, 1.0))),
    "V100": _curve("V100", ((0.4, 1.38, 0.508), (0.5, 1.173, 0.591), (0.6, 1.112, 0.682), (0.7, 1.063, 0.781),
                            (0.8, 1.037, 0.867), (0.9, 1.013, 0.945), (1.0, 1.0, 1.0))),
    "P100": _curve("P100", ((0.5, 1.06, 0.815), (0.6, 1.036, 0.934), (0.7, 1.017, 0.969), (0.8, 1.005, 0.995),
                            (0.9, 1.001, 1.002), (1.0, 1.0, 1.0))),
    "RTX6000": _curve("RTX6000", ((0.3846, 1.824, 0.481), (0.4808, 1.219, 0.597), (0.5769, 1.1, 0.68),
                                  (0.6731, 1.051, 0.762), (0.7692, 1.03, 0.848), (0.8654, 1.018, 0.922),
                                  (0.9615, 1.007, 0.978), (1.0, 1.0, 1.0))),
    "generic": _curve("generic", ((0.4, 1.748, 0.538), (0.5, 1.233, 0.626), (0.6, 1.09, 0.724), (0.7, 1.047, 0.814),
                                  (0.8, 1.025, 0.894), (0.9, 1.011, 0.955), (1.0, 1.0, 1.0))),
}


def curve_for(gpu_model: str | None) -> CapCurve:
    """The sweep's curve for a GPU model (by the GPU table's names), else ``generic``."""
    if gpu_model:
        from greenml.signals.gpus import lookup   # a pure table, no I/O

        spec = lookup(gpu_model)
        if spec is not None and spec.model in CURVES:
            return CURVES[spec.model]
    return CURVES["generic"]


# ---------------------------------------------------------------- policies

@dataclass(frozen=True)
class CapLevel:
    """One cap a job may run at. ``watts``: the cap per GPU (None: uncapped)."""

    watts: float | None
    speed: float           # work per wall slot = 1 / time factor
    power: float           # draw relative to the uncapped draw

    @property
    def time_factor(self) -> float:
        return 1.0 / self.speed


@dataclass(frozen=True)
class CapPolicy:
    """A job's resolved ``spec.power.cap``: static (one cap) or carbon-aware (a range).

    The job's duration and draw are taken *at maxWatts* (resolve() scales the uncapped
    estimate by ``baseline()``), so the planner's unit of work is a slot at maxWatts and
    ``levels()`` are relative to it: running at maxWatts is the plain shifting plan."""

    mode: str                          # "static" | "carbonAware"
    min_watts: float
    max_watts: float                   # static: min == max
    reference_watts: float             # the GPU's maximum power limit the curve's fractions refer to
    curve: CapCurve

    def absolute(self, watts: float | None) -> CapLevel:
        """The level of a cap relative to running uncapped."""
        if watts is None or watts >= self.reference_watts:
            return CapLevel(None, 1.0, 1.0)
        tf, pf = self.curve.at(watts / self.reference_watts)
        return CapLevel(round(float(watts), 1), 1.0 / tf, pf)

    @property
    def top_watts(self) -> float | None:
        """The cap at maxWatts (None: maxWatts is at or above the GPU's limit, i.e. no cap)."""
        return self.absolute(self.max_watts).watts

    def baseline(self) -> tuple[float, float]:
        """(time factor, power factor) of running at maxWatts instead of uncapped."""
        top = self.absolute(self.max_watts)
        return top.time_factor, top.power

    def level(self, watts: float | None) -> CapLevel:
        """A cap's level relative to maxWatts (the planner's unit)."""
        top, lv = self.absolute(self.max_watts), self.absolute(watts)
        return CapLevel(lv.watts, min(1.0, lv.speed / top.speed), min(1.0, lv.power / top.power))

    def levels(self, count: int = 6) -> tuple[CapLevel, ...]:
        """The caps the planner may choose, slowest first (relative to maxWatts): the curve's
        own points inside [minWatts, maxWatts] plus both ends (at most ``count``, evenly
        thinned), kept only where they lie on the lower convex hull of draw against speed —
        a level above it is never worth choosing in the LP and only slows the search."""
        if self.mode == "static":
            return (self.level(self.max_watts),)
        # rounded as published (0.1 W), so that level(cap) of a published cap is exactly the planned level
        ws = {round(self.min_watts, 1), round(self.max_watts, 1)}
        ws.update(round(p.fraction * self.reference_watts, 1) for p in self.curve.points
                  if self.min_watts <= round(p.fraction * self.reference_watts, 1) <= self.max_watts)
        ordered = sorted(ws)
        if len(ordered) > count:
            idx = np.unique(np.round(np.linspace(0, len(ordered) - 1, count)).astype(int))
            ordered = [ordered[i] for i in idx]
        levels = {}
        for w in ordered:
            lv = self.level(w)
            levels[lv.watts] = lv
        return hull(tuple(sorted(levels.values(), key=lambda lv: (lv.speed, lv.power))))


def hull(levels: Sequence[CapLevel]) -> tuple[CapLevel, ...]:
    """The levels on the lower convex hull of (speed, power) through the origin ("off"),
    slowest first: marginal draw per unit of speed strictly increases along it."""
    pts: list[CapLevel] = []
    for lv in sorted(levels, key=lambda lv: (lv.speed, lv.power)):
        if pts and lv.speed <= pts[-1].speed + _EPS:
            continue                       # same speed, more draw: dominated
        while pts:
            a = pts[-2] if len(pts) >= 2 else CapLevel(0.0, 0.0, 0.0)
            b = pts[-1]
            # drop b when it lies on or above the segment a → lv
            if (b.power - a.power) * (lv.speed - a.speed) >= (lv.power - a.power) * (b.speed - a.speed) - 1e-12:
                pts.pop()
            else:
                break
        pts.append(lv)
    return tuple(pts)


# ---------------------------------------------------------------- placement

@dataclass(frozen=True)
class CappedRuns:
    """Runs ([start, end) slots) with the level of each, and the plan's relative cost."""

    runs: tuple[tuple[int, int], ...]
    levels: tuple[CapLevel, ...]
    cost: float                          # Σ intensity × power factor over run slots

    @property
    def work(self) -> float:
        return sum((e - s) * lv.speed for (s, e), lv in zip(self.runs, self.levels))


def slots_for(work: float, level: CapLevel) -> int:
    """Wall slots to do ``work`` full-speed slots at ``level``."""
    return int(math.ceil(work / level.speed - 1e-9))


def segments(levels_per_slot: Mapping[int, CapLevel]) -> tuple[tuple[tuple[int, int], ...], tuple[CapLevel, ...]]:
    """Per-slot levels → maximal runs of the same level."""
    runs: list[list[int]] = []
    lvs: list[CapLevel] = []
    for t in sorted(levels_per_slot):
        lv = levels_per_slot[t]
        if runs and runs[-1][1] == t and lvs[-1] == lv:
            runs[-1][1] = t + 1
        else:
            runs.append([t, t + 1])
            lvs.append(lv)
    return tuple((s, e) for s, e in runs), tuple(lvs)


def mixed(f: np.ndarray, allowed: np.ndarray | None, lo: int, work: float,
          levels: Sequence[CapLevel], forced: np.ndarray | None = None) -> CappedRuns | None:
    """A cap per slot over ``f`` (the intensities of [lo, lo + len(f))): the greedy over the
    hull's increments, then the last increment rounded up (see the module docstring).
    ``allowed``: slots that may run (None: all). ``forced``: slots that must run (a running
    job's minRunDuration remainder), at any level: their first increment is taken first and
    never given back — the LP with those lower bounds is solved by the same greedy on the
    rest, so the bound holds. None when even full speed everywhere allowed does not reach
    ``work``."""
    hl = hull(levels)
    must = np.zeros(f.size, dtype=bool) if forced is None else forced.astype(bool)
    if not hl or (work <= _EPS and not must.any()):
        return CappedRuns((), (), 0.0) if work <= _EPS else None
    n = f.size
    ok = (np.ones(n, dtype=bool) if allowed is None else allowed.astype(bool)) | must
    if float(np.count_nonzero(ok)) * hl[-1].speed < work - 1e-9:
        return None
    ds = np.array([hl[0].speed] + [hl[i].speed - hl[i - 1].speed for i in range(1, len(hl))])
    dp = np.array([hl[0].power] + [hl[i].power - hl[i - 1].power for i in range(1, len(hl))])
    marg = dp / ds                                      # increasing along the hull
    slots = np.flatnonzero(ok)
    floor = must[slots].astype(np.int64)                # increments a slot must keep (forced: its first)
    # every (slot, increment): cost per unit of work; within a slot increments come in hull order
    per_work = (f[slots][:, None] * marg[None, :]).ravel()
    inc = np.tile(np.arange(len(hl)), slots.size)
    slot_of = np.repeat(slots, len(hl))
    idx_of = np.repeat(np.arange(slots.size), len(hl))  # position in `slots` of each (slot, increment)
    order = np.lexsort((inc, slot_of, per_work))        # cheapest per work; ties: earlier slot
    order = order[inc[order] >= floor[idx_of[order]]]   # the forced increments are taken already
    work_left = work - float(floor.sum()) * ds[0]
    gained = np.cumsum(ds[inc[order]])
    cut = int(np.searchsorted(gained, work_left - 1e-9)) if work_left > 1e-9 else 0   # where the work is reached
    taken = floor + np.bincount(idx_of[order[:cut]], minlength=slots.size).astype(np.int64)   # increments per slot
    pos = {int(t): i for i, t in enumerate(slots)}
    deficit = work_left - (float(gained[cut - 1]) if cut > 0 else 0.0)
    # round the fractional increment up: the cheapest single next increment of any slot covering
    # the deficit (the greedy's own next one always qualifies when it covers it); earliest on ties
    nxt = np.minimum(taken, len(hl) - 1)
    fits = (taken < len(hl)) & (ds[nxt] >= deficit - 1e-9)
    best = int(np.argmin(np.where(fits, f[slots] * dp[nxt], np.inf))) if fits.any() else None
    if best is None and deficit > 1e-9:
        # no single increment covers it: keep following the greedy order (rare with coarse hulls)
        for j in order[cut:]:
            i = pos[int(slot_of[j])]
            if taken[i] == inc[j]:
                taken[i] += 1
                deficit -= float(ds[inc[j]])
                if deficit <= 1e-9:
                    break
    elif deficit > 1e-9:
        taken[best] += 1
    _trim(taken, f[slots], ds, dp, work, floor)
    per_slot = {lo + int(t): hl[int(taken[i]) - 1] for i, t in enumerate(slots) if taken[i] > 0}
    runs, lvs = segments(per_slot)
    cost = float(sum(f[t - lo] * lv.power for t, lv in per_slot.items()))
    return CappedRuns(runs, lvs, cost)


def _trim(taken: np.ndarray, f: np.ndarray, ds: np.ndarray, dp: np.ndarray, work: float,
          floor: np.ndarray | None = None) -> None:
    """Rounding up overshoots the work; give back what is not needed: repeatedly drop the
    increment (the top one of some slot) that saves most while the work stays reached, and
    try moving the rounded-up increment to a cheaper slot whose next one covers the rest.
    Never below ``floor`` (a forced slot keeps its first increment). Only ever lowers the
    cost, so the bound of ``mixed`` still holds."""
    cum_s = np.concatenate(([0.0], np.cumsum(ds)))
    floor = np.zeros_like(taken) if floor is None else floor
    while True:
        done = float(cum_s[taken].sum())
        slack = done - work
        tops = np.flatnonzero((taken > floor))
        if tops.size == 0 or slack <= 1e-9:
            return
        k = taken[tops] - 1
        can = ds[k] <= slack + 1e-9
        if not can.any():
            # swap: drop one top increment (t) and add the next increment of another slot (u);
            # the 16 dearest tops are tried (a bounded local improvement, not a search)
            best, gain = None, 1e-9
            top_cost = f[tops] * dp[taken[tops] - 1]
            for i in tops[np.argsort(-top_cost, kind="stable")[:16]]:
                drop_s, drop_c = ds[taken[i] - 1], f[i] * dp[taken[i] - 1]
                room = taken < len(ds)
                room[i] = False
                if not room.any():
                    continue
                add_s = np.where(room, ds[np.minimum(taken, len(ds) - 1)], 0.0)
                add_c = np.where(room, f * dp[np.minimum(taken, len(ds) - 1)], np.inf)
                ok = add_s - drop_s >= -slack - 1e-9
                if ok.any():
                    u = int(np.argmin(np.where(ok, add_c, np.inf)))
                    if drop_c - add_c[u] > gain:
                        best, gain = (i, u), drop_c - add_c[u]
            if best is None:
                return
            taken[best[0]] -= 1
            taken[best[1]] += 1
            continue
        saved = np.where(can, f[tops] * dp[k], -np.inf)
        taken[tops[int(np.argmax(saved))]] -= 1


def mixed_bound(f: np.ndarray, levels: Sequence[CapLevel]) -> float:
    """How far ``mixed`` may lie above the optimum (in the cost's units): one increment at the
    dirtiest slot."""
    hl = hull(levels)
    if not hl:
        return 0.0
    dp = [hl[0].power] + [hl[i].power - hl[i - 1].power for i in range(1, len(hl))]
    return float(np.max(f)) * max(dp) if f.size else 0.0


def _uniform(z, job, bad: np.ndarray | None, lo: int, hi: int, work: float, lv: CapLevel,
             table=None) -> CappedRuns | None:
    """The shifting planner's own exact placement of the slots ``work`` takes at one level."""
    from dataclasses import replace

    from greenml.planning import shifting

    n = slots_for(work, lv)
    if n <= 0 or lo + n > hi:
        return None
    runs = shifting.place(z, replace(job, remaining=n), bad, lo, hi, n, table)
    if runs is None:
        return None
    return CappedRuns(runs, (lv,) * len(runs), z.cost(runs) * lv.power)


def place_capped(f: np.ndarray, job, levels: Sequence[CapLevel], free: np.ndarray | None = None,
                 zone=None) -> CappedRuns | None:
    """Windows and a cap per window for one ``shifting.JobSpec`` on the forecast ``f`` (one
    value per slot from slot 0, covering its deadline), jointly: the cheapest of the uniform
    plans (one per level) and, for interruptible jobs with min_run 1, the mixed plan. Work is
    in slots at the fastest level. ``free``: GPUs free per slot (None: unlimited); slots
    above the job's maxIntensity are avoided. None when no capped plan fits (the caller keeps
    its plain plan). A running non-interruptible job (``pinned``) stays one run from
    ``earliest``: the slowest level that still ends by the deadline, at least carbon. A
    running interruptible job's minRunDuration remainder (``pinned`` slots from ``earliest``)
    runs at the level chosen jointly with the rest: for every level of the remainder and of
    the rest, the shifting planner's placement of what is left (slower there: more left),
    and the mixed plan with the remainder's slots forced on.
    ``zone``: the shifting planner's table of ``f`` (``shifting._Zone.of(f)``), to share
    between jobs."""
    from dataclasses import replace

    from greenml.planning import shifting

    hl = hull(levels)
    k = max(0, int(job.remaining))
    if job.work is not None and k > 0:
        k = min(float(k), max(_EPS, float(job.work)))      # the exact work: the last slot may be part of one
    e = max(0, int(job.earliest))
    hi = min(int(job.latest_end), f.size)
    if not hl or k == 0:
        return None
    z = zone if zone is not None else shifting._Zone.of(np.asarray(f, dtype=np.float64))
    pinned = min(math.ceil(k - 1e-9), max(0, int(job.pinned)))
    if pinned and not job.interruptible:
        best = None
        for lv in hl:
            n = slots_for(k, lv)
            if e + n <= hi:
                cand = CappedRuns(((e, e + n),), (lv,), z.cost(((e, e + n),)) * lv.power)
                if best is None or cand.cost < best.cost - 1e-9:
                    best = cand
        return best
    top = hl[-1]
    lo, rest = e + pinned, k - pinned
    full = hot = None
    if free is not None and job.gpus > 0:
        full = free[lo:hi] < job.gpus
        full = full if full.any() else None
    thr = float(job.max_intensity) if job.max_intensity is not None else None
    if thr is not None:
        hot = z.hot(thr)[lo:hi]
        if not hot.any():
            thr = hot = None
    bad = hot if full is None else (full if hot is None else full | hot)
    # the min-run DP table is shared between levels and jobs (cached on the zone) unless the
    # free capacity makes the forbidden slots this job's own
    table = None if full is not None else (lambda m: z.min_run_table(lo, m, thr))
    if not pinned:
        cands = [c for c in (_uniform(z, job, bad, lo, hi, rest, lv, table) for lv in reversed(hl)) if c is not None]
        if job.interruptible and max(1, int(job.min_run)) == 1 and hi > lo:
            m = mixed(z.f[lo:hi], None if bad is None else ~bad, lo, rest, hl)
            if m is not None:
                cands.append(m)
        if not cands:
            return None
        return min(cands, key=lambda c: (c.cost, c.runs[0][0] if c.runs else 0))   # min keeps the first on ties
    # a running interruptible job: its minRunDuration remainder [e, lo) runs whatever the cap,
    # at the cap chosen with the rest — a slower remainder leaves more work for after it
    placed: dict[int, tuple | None] = {}

    def rest_runs(n: int):
        if n not in placed:
            placed[n] = (() if n <= 0 else
                         (shifting.place(z, replace(job, remaining=n, pinned=0, earliest=lo), bad, lo, hi, n, table)
                          if lo + n <= hi else None))
        return placed[n]

    cands = []
    pre_cost = z.cost(((e, lo),))
    for lp in reversed(hl):
        left = max(0.0, k - pinned * lp.speed)
        for lr in reversed(hl):
            runs = rest_runs(slots_for(left, lr) if left > _EPS else 0)
            if runs is None:
                continue
            per_slot = {t: lp for t in range(e, lo)}
            per_slot.update({t: lr for s_, e_ in runs for t in range(s_, e_)})
            rs, lvs = segments(per_slot)
            cands.append(CappedRuns(rs, lvs, pre_cost * lp.power + (z.cost(runs) * lr.power if runs else 0.0)))
    if job.interruptible and max(1, int(job.min_run)) == 1 and hi > e:
        allowed = np.ones(hi - e, dtype=bool)
        if bad is not None:
            allowed[lo - e:] = ~bad
        forced = np.zeros(hi - e, dtype=bool)
        forced[:lo - e] = True
        m = mixed(z.f[e:hi], allowed, e, k, hl, forced)
        if m is not None:
            cands.append(m)
    if not cands:
        return None
    return min(cands, key=lambda c: (c.cost, c.runs[0][0] if c.runs else 0))


def plan_with_caps(jobs: Sequence, forecasts, *, step_hours: float, capacity_gpus: float | None = None,
                   levels: Mapping[str, Sequence[CapLevel]] | None = None, **plan_options) -> list[tuple[object, tuple[float | None, ...]]]:
    """``shifting.plan`` followed by ``refine``: (JobPlan, caps) per job, in the input order."""
    from greenml.planning import shifting

    plans = shifting.plan(jobs, forecasts, step_hours=step_hours, capacity_gpus=capacity_gpus, **plan_options)
    refined, caps = refine(jobs, plans, forecasts, step_hours=step_hours, capacity_gpus=capacity_gpus, levels=levels)
    return list(zip(refined, caps))


def refine(jobs: Sequence, plans: Sequence, forecasts, *, step_hours: float, capacity_gpus: float | None = None,
           levels: Mapping[str, Sequence[CapLevel]] | None = None) -> tuple[list, list[tuple[float | None, ...]]]:
    """The jobs with cap levels (by ``JobSpec.name``) re-placed with windows and caps chosen
    jointly (``place_capped``) on the capacity the other plans leave, one after another in
    the input order; a job keeps its plain plan when no capped plan emits less (so capping
    never raises a job's expected grams), and forced / done / at-risk plans are kept. Returns
    the plans and, per plan, the caps aligned with its runs (W per GPU, None: no cap; () for a
    plain plan). The narrow entry the plan board calls after ``shifting.plan``."""
    from dataclasses import replace

    from greenml.planning import shifting

    plans = list(plans)
    levels = levels or {}
    caps: list[tuple[float | None, ...]] = [() for _ in plans]
    if not any(levels.get(j.name) for j in jobs):
        return plans, caps
    horizon = max(1, max(max(j.latest_end, max(0, j.earliest) + j.remaining) for j in jobs))
    if not isinstance(forecasts, Mapping):
        forecasts = {shifting.DEFAULT_ZONE: forecasts}
    arrays = {name: shifting._extend(np.asarray(f, dtype=np.float64), horizon) for name, f in forecasts.items()}
    tables = {name: shifting._Zone.of(a) for name, a in arrays.items()}
    used = shifting.usage(plans, jobs, horizon) if capacity_gpus is not None else None
    for i, (job, p) in enumerate(zip(jobs, plans)):
        lv = levels.get(job.name)
        zname = job.zone if job.zone in arrays else (next(iter(arrays)) if len(arrays) == 1 else None)
        f = arrays.get(zname) if zname is not None else None
        if (not lv or f is None or not p.runs or p.reason in (shifting.DEADLINE_FORCED, shifting.DONE)
                or getattr(p, "at_risk", False) or getattr(p, "unplaceable", False)):
            continue
        free = None
        if used is not None:
            free = float(capacity_gpus) - (used - shifting.usage([p], [job], horizon))
        capped = place_capped(f, job, lv, free, tables[zname])
        grams = None if capped is None else capped.cost * job.power_kw * step_hours
        if capped is None or grams >= p.grams * (1 - 1e-9):
            continue
        new = replace(p, runs=capped.runs, grams=grams)
        if used is not None:
            used = used - shifting.usage([p], [job], horizon) + shifting.usage([new], [job], horizon)
        plans[i], caps[i] = new, tuple(x.watts for x in capped.levels)
    return plans, caps


# ---------------------------------------------------------------- decisions on a plan

def level_at(windows: Sequence[tuple[datetime, datetime]], caps: Sequence[float | None],
             now: datetime) -> float | None:
    """The cap (W per GPU) the plan sets at ``now``; None: uncapped or not in a window."""
    for (s, e), c in zip(windows, caps):
        if s <= now < e:
            return c
    return None


def cap_to_publish(policy: CapPolicy | None, windows: Sequence[tuple[datetime, datetime]] | None,
                   caps: Sequence[float | None], now: datetime, *, forced: bool) -> float | None:
    """The cap (W per GPU) the operator publishes on the job's pods now (None: no cap).

    - no cap policy: none;
    - static: always that cap (the plan already runs the slower job);
    - carbon-aware: the planned window's cap (``window_caps``: maxWatts for a plan that sets
      none); outside the windows, and when the deadline forces the run (or there is no
      plan: no forecast), maxWatts (none when that is the GPU's limit) — the pace the job's
      duration was planned at, so a forced run is never slower than planned.
    """
    if policy is None:
        return None
    if policy.mode == "static":
        return policy.max_watts
    if forced or not windows:
        return policy.top_watts
    for (s, e), cap in zip(windows, window_caps(policy, windows, caps)):
        if s <= now < e:
            return cap
    return policy.top_watts


def window_caps(policy: CapPolicy | None, windows: Sequence[tuple[datetime, datetime]],
                caps: Sequence[float | None]) -> tuple[float | None, ...]:
    """The cap (W per GPU, None: uncapped) each planned window runs at — what
    ``cap_to_publish`` publishes inside it, and status shows as ``capWatts``: the plan's own
    caps; a static cap; maxWatts for a carbon-aware job whose plan sets none (the plain plan,
    kept when no capped plan emits less, is the job run at maxWatts)."""
    if policy is None:
        return (None,) * len(windows)
    if policy.mode == "static":
        return (policy.max_watts,) * len(windows)
    if caps and len(caps) == len(windows):
        return tuple(caps)
    return (policy.top_watts,) * len(windows)


def work_seconds(wall: timedelta, cap_watts: float | None, policy: CapPolicy | None) -> float:
    """Run time at maxWatts equivalent to ``wall`` run at ``cap_watts`` (None: uncapped): what
    a carbon-aware job's progress must count (a capped hour does less than an hour of work)."""
    if policy is None or policy.mode == "static":
        return wall.total_seconds()    # a static cap's slowdown is already in the job's duration
    return wall.total_seconds() * policy.level(cap_watts).speed
