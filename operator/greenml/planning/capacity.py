"""Deadlines under a GPU capacity: checks, a proof of infeasibility, and the exact optimum.

Pure: no kopf, kubernetes or network; slots are indices from ``now`` (slot 0), as in
``greenml.planning.shifting``, whose ``plan()`` does the planning (greedy, then a repair
guarded by a witness schedule when the greedy leaves a job without room). This module
answers the questions around it:

- ``verify``: does a set of plans keep every promise -- each job's runs inside
  [earliest, latest_end) with all its work, and GPUs in use never above the capacity?
  A plan set that passes is a *witness*: the jobs are feasible together.
- ``demand_bound``: a necessary condition (Horn's interval test, in GPU-slots): for every
  window [a, b), the work of the jobs that must run entirely inside it fits the free
  GPU-slots. A violation *proves* that no schedule meets every deadline.
- ``optimum``: the exact capacity-constrained optimum as a mixed-integer programme
  (HiGHS through ``scipy.optimize.milp``; scipy is the optional extra ``exact``), for
  instances small enough; with a time limit it returns the best schedule found and a
  lower bound on the optimum.

With GPUs of several sizes per job the feasibility question is NP-hard (one-slot jobs
with wide windows are bin packing), so no fast check is exact in general: ``plan()`` is
sound (a plan it does not flag is a verified witness) and the MILP decides small
instances exactly; tests cross-check the two.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from greenml.planning.shifting import DEFAULT_ZONE, JobPlan, JobSpec, _extend, _merge

_EPS = 1e-9


def free_gpus(capacity_gpus: float, horizon: int, reserved_gpus: np.ndarray | None = None) -> np.ndarray:
    """GPUs free per slot: the capacity less what work outside the plan reserves."""
    free = np.full(horizon, float(capacity_gpus))
    if reserved_gpus is not None:
        r = np.asarray(reserved_gpus, dtype=np.float64)[:horizon]
        free[: r.size] -= r
    return free


def horizon_of(jobs: Sequence[JobSpec], plans: Sequence[JobPlan] = ()) -> int:
    ends = [max(j.latest_end, max(0, j.earliest) + j.remaining) for j in jobs]
    ends += [p.runs[-1][1] for p in plans if p.runs]
    return max([1] + ends)


@dataclass(frozen=True)
class Verdict:
    """What ``verify`` found."""

    late: tuple[str, ...]          # jobs whose runs miss their window or their work (unplaceable ones excluded)
    over: tuple[int, ...]          # slots where planned GPUs exceed the free capacity
    unplaceable: tuple[str, ...]   # more GPUs than the capacity

    @property
    def ok(self) -> bool:
        """Every placeable job meets its deadline within the capacity."""
        return not self.late and not self.over


def verify(jobs: Sequence[JobSpec], plans: Sequence[JobPlan], capacity_gpus: float,
           reserved_gpus: np.ndarray | None = None) -> Verdict:
    """Check plans (in the jobs' order) against the deadlines and the capacity."""
    horizon = horizon_of(jobs, plans)
    delta = np.zeros(horizon + 1)
    late, unplaceable = [], []
    for j, p in zip(jobs, plans):
        if j.remaining > 0 and j.gpus > capacity_gpus and not j.pinned:
            unplaceable.append(j.name)
            continue
        slots = sum(e - s for s, e in p.runs)
        if slots != max(0, j.remaining) or (p.runs and (p.runs[0][0] < max(0, j.earliest) or p.runs[-1][1] > j.latest_end)):
            late.append(j.name)
        for s, e in p.runs:
            delta[s] += j.gpus
            delta[e] -= j.gpus
    used = np.cumsum(delta)[:horizon]
    over = np.flatnonzero(used > free_gpus(capacity_gpus, horizon, reserved_gpus) + _EPS)
    return Verdict(tuple(late), tuple(int(t) for t in over), tuple(unplaceable))


@dataclass(frozen=True)
class DemandViolation:
    start: int         # window [start, end) in slots
    end: int
    demand: float      # GPU-slots of the jobs that must run entirely inside it
    supply: float      # free GPU-slots in it


def demand_bound(jobs: Sequence[JobSpec], capacity_gpus: float,
                 reserved_gpus: np.ndarray | None = None) -> DemandViolation | None:
    """The worst window whose compulsory work exceeds its free GPU-slots, or None.

    A job's whole work (gpus × remaining slots) must lie in [earliest, latest_end); for
    every pair (a, b) of a release and a deadline, the jobs with a <= earliest and
    latest_end <= b must fit the free GPU-slots of [a, b). Vectorised over the distinct
    releases × deadlines (a 2-D cumulative sum). Unplaceable jobs and jobs that cannot
    meet their deadline even alone are left out (they are reported on their own)."""
    js = [j for j in jobs if j.remaining > 0 and j.gpus > 0 and not (j.gpus > capacity_gpus and not j.pinned)
          and max(0, j.earliest) + j.remaining <= j.latest_end]
    if not js:
        return None
    e = np.array([max(0, j.earliest) for j in js])
    d = np.array([j.latest_end for j in js])
    w = np.array([float(j.gpus * j.remaining) for j in js])
    horizon = int(d.max())
    cum = np.concatenate(([0.0], np.cumsum(np.maximum(free_gpus(capacity_gpus, horizon, reserved_gpus), 0.0))))
    ue, ie = np.unique(e, return_inverse=True)
    ud, id_ = np.unique(d, return_inverse=True)
    h = np.zeros((ue.size, ud.size))
    np.add.at(h, (ie, id_), w)
    demand = np.cumsum(np.cumsum(h[::-1], axis=0)[::-1], axis=1)   # jobs with e >= ue[a] and d <= ud[b]
    supply = cum[ud][None, :] - cum[ue][:, None]
    excess = np.where(ud[None, :] > ue[:, None], demand - supply, -np.inf)
    a, b = np.unravel_index(int(np.argmax(excess)), excess.shape)
    if excess[a, b] <= _EPS:
        return None
    return DemandViolation(int(ue[a]), int(ud[b]), float(demand[a, b]), float(supply[a, b]))


# ---------------------------------------------------------------- the exact optimum

@dataclass(frozen=True)
class Optimum:
    """The MILP's answer. ``status``: optimal | infeasible (no schedule meets every
    deadline within the capacity: exact) | time_limit (``runs`` is the best schedule found,
    ``bound`` a lower bound on the optimum) | too_large | unavailable (no scipy)."""

    status: str
    runs: Mapping[str, tuple[tuple[int, int], ...]]   # by job name (unplaceable jobs: none)
    grams: float          # of ``runs`` (nan without a schedule)
    bound: float          # lower bound on the optimum's grams (== grams when optimal)
    variables: int
    seconds: float
    message: str = ""

    @property
    def gap(self) -> float:
        """Relative distance between the schedule and the bound (0 when optimal)."""
        if not np.isfinite(self.grams) or self.grams <= 0:
            return 0.0 if self.status == "optimal" else float("nan")
        return max(0.0, (self.grams - self.bound) / self.grams)


def optimum(jobs: Sequence[JobSpec], forecasts: Mapping[str, np.ndarray] | np.ndarray, *, step_hours: float,
            capacity_gpus: float, reserved_gpus: np.ndarray | None = None, time_limit_s: float = 60.0,
            max_variables: int = 200_000) -> Optimum:
    """The least-grams schedule that meets every deadline within the capacity (exact MILP).

    Interruptible jobs choose any slots (runs of >= min_run; fewer than 2 × min_run
    slots: one run, as the planner does); non-interruptible jobs choose a start; running
    work (``pinned``) is fixed. ``max_intensity`` is not modelled (a soft preference in
    the planner). Jobs with more GPUs than the capacity are left out (unplaceable)."""
    import time

    t0 = time.perf_counter()
    try:
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_array
    except ImportError:
        return Optimum("unavailable", {}, float("nan"), float("nan"), 0, 0.0,
                       "scipy is not installed (pip install 'greenml-operator[exact]')")
    horizon = horizon_of(jobs)
    if not isinstance(forecasts, Mapping):
        forecasts = {DEFAULT_ZONE: forecasts}
    cost = {z: _extend(np.asarray(f, dtype=np.float64), horizon) for z, f in forecasts.items()}
    free = free_gpus(capacity_gpus, horizon, reserved_gpus)

    def zone_cost(j: JobSpec) -> np.ndarray:
        return cost.get(j.zone, next(iter(cost.values())) if len(cost) == 1 else None)

    n = _count_variables(jobs, capacity_gpus, horizon)
    if n > max_variables:
        return Optimum("too_large", {}, float("nan"), float("nan"), n, time.perf_counter() - t0,
                       f"{n} variables > {max_variables}")
    c: list[float] = []
    rows: list[int] = []          # capacity rows: slot t -> row t
    cols: list[int] = []
    vals: list[float] = []
    eq_rows: list[tuple[list[int], list[float], float]] = []   # sum = rhs
    ge_rows: list[tuple[list[int], list[float]]] = []          # sum >= 0
    decode: list[tuple[str, int, str, int, int]] = []          # (job, var, kind, slot/start, length)
    fixed: dict[str, list[tuple[int, int]]] = {}
    grams_fixed = 0.0
    for j in jobs:
        k = max(0, int(j.remaining))
        if k == 0 or (j.gpus > capacity_gpus and not j.pinned):
            continue
        f = zone_cost(j)
        kw = j.power_kw * step_hours
        e = max(0, int(j.earliest))
        pinned = min(k, max(0, int(j.pinned)))
        if pinned and not j.interruptible:
            pinned = k
        if pinned:
            fixed[j.name] = [(e, e + pinned)]
            free[e:e + pinned] -= j.gpus
            grams_fixed += float(f[e:e + pinned].sum()) * kw
        lo, rest, hi = e + pinned, k - pinned, min(int(j.latest_end), horizon)
        if rest == 0:
            continue
        if lo + rest > hi:
            return Optimum("infeasible", {}, float("nan"), float("nan"), len(c), time.perf_counter() - t0,
                           f"job {j.name!r} cannot meet its deadline even alone")
        m = max(1, int(j.min_run))
        window = not j.interruptible or (m > 1 and rest < 2 * m)
        if window:
            starts = np.arange(lo, hi - rest + 1)
            cum = np.concatenate(([0.0], np.cumsum(f[:hi])))
            wcost = (cum[starts + rest] - cum[starts]) * kw
            ids = list(range(len(c), len(c) + starts.size))
            c.extend(wcost.tolist())
            eq_rows.append((ids, [1.0] * len(ids), 1.0))
            for v, s in zip(ids, starts):
                decode.append((j.name, v, "window", int(s), rest))
                for t in range(s, s + rest):
                    rows.append(t)
                    cols.append(v)
                    vals.append(float(j.gpus))
            continue
        slots = np.arange(lo, hi)
        x = list(range(len(c), len(c) + slots.size))
        c.extend((f[lo:hi] * kw).tolist())
        eq_rows.append((x, [1.0] * len(x), float(rest)))
        for v, t in zip(x, slots):
            decode.append((j.name, v, "slot", int(t), 1))
            rows.append(int(t))
            cols.append(v)
            vals.append(float(j.gpus))
        if m > 1:
            # y_t >= x_t - x_{t-1} (a run starts at t), and a run that starts lasts m slots:
            # x_{t+u} >= y_t for u < m; no start within m of the end
            for idx, t in enumerate(slots):
                y = len(c)
                c.append(0.0)
                prev = x[idx - 1] if idx > 0 else None
                if prev is None:
                    # slot lo: after the running prefix a run continues it (no new start)
                    if pinned:
                        continue
                    ge_rows.append(([y, x[idx]], [1.0, -1.0]))
                else:
                    ge_rows.append(([y, x[idx], prev], [1.0, -1.0, 1.0]))
                for u in range(1, m):
                    if idx + u < len(x):
                        ge_rows.append(([x[idx + u], y], [1.0, -1.0]))
                    else:
                        ge_rows.append(([y], [-1.0]))   # y == 0
    n = len(c)
    if (free < -_EPS).any():
        return Optimum("infeasible", {}, float("nan"), float("nan"), n, time.perf_counter() - t0,
                       "running work alone exceeds the capacity")
    if n == 0:
        return Optimum("optimal", {k: tuple(v) for k, v in fixed.items()}, grams_fixed, grams_fixed, 0,
                       time.perf_counter() - t0)
    cons = [LinearConstraint(coo_array((vals, (rows, cols)), shape=(horizon, n)).tocsr(), -np.inf, free)]
    er, ec, ev, rhs = [], [], [], []
    for r, (ids, coef, b) in enumerate(eq_rows):
        er += [r] * len(ids)
        ec += ids
        ev += coef
        rhs.append(b)
    cons.append(LinearConstraint(coo_array((ev, (er, ec)), shape=(len(eq_rows), n)).tocsr(), rhs, rhs))
    if ge_rows:
        gr, gc, gv = [], [], []
        for r, (ids, coef) in enumerate(ge_rows):
            gr += [r] * len(ids)
            gc += ids
            gv += coef
        cons.append(LinearConstraint(coo_array((gv, (gr, gc)), shape=(len(ge_rows), n)).tocsr(), 0.0, np.inf))
    res = milp(np.array(c), integrality=np.ones(n), bounds=Bounds(0, 1), constraints=cons,
               options={"time_limit": float(time_limit_s), "mip_rel_gap": 1e-9})
    secs = time.perf_counter() - t0
    if res.status == 2:
        return Optimum("infeasible", {}, float("nan"), float("nan"), n, secs, "no schedule meets every deadline")
    dual = getattr(res, "mip_dual_bound", None)
    if res.x is None:
        return Optimum("time_limit", {}, float("nan"), (float(dual) if dual is not None else float("nan")) + grams_fixed,
                       n, secs, str(res.message))
    chosen: dict[str, list[tuple[int, int]]] = {k: list(v) for k, v in fixed.items()}
    xv = res.x
    for name, v, kind, s, length in decode:
        if xv[v] > 0.5:
            chosen.setdefault(name, []).append((s, s + length))
    runs = {k: _merge(v) for k, v in chosen.items()}
    grams = float(res.fun) + grams_fixed
    bound = float(dual) + grams_fixed if dual is not None and np.isfinite(dual) else grams
    status = "optimal" if res.status == 0 else "time_limit"
    return Optimum(status, runs, grams, min(bound, grams), n, secs, str(res.message))


def _count_variables(jobs: Sequence[JobSpec], capacity_gpus: float, horizon: int) -> int:
    """The MILP's size before building it (so a large instance costs nothing)."""
    n = 0
    for j in jobs:
        k = max(0, int(j.remaining))
        if k == 0 or (j.gpus > capacity_gpus and not j.pinned) or (j.pinned and not j.interruptible):
            continue
        e = max(0, int(j.earliest))
        lo = e + min(k, max(0, int(j.pinned)))
        rest, hi = k - (lo - e), min(int(j.latest_end), horizon)
        m = max(1, int(j.min_run))
        if not j.interruptible or (m > 1 and rest < 2 * m):
            n += max(0, hi - rest - lo + 1)
        else:
            n += max(0, hi - lo) * (2 if m > 1 else 1)
    return n
