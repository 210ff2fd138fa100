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
- ``fewest_misses``: when no schedule keeps every deadline, how many deadlines must be
  missed at best (the same MILP, each job optional; exact, or bounds at the time limit).

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
    if (missing := _no_scipy()) is not None:
        return Optimum("unavailable", {}, float("nan"), float("nan"), 0, 0.0, missing)
    horizon = horizon_of(jobs)
    n = _count_variables(jobs, capacity_gpus, horizon)
    if n > max_variables:
        return Optimum("too_large", {}, float("nan"), float("nan"), n, time.perf_counter() - t0,
                       f"{n} variables > {max_variables}")
    m = _Model.build(jobs, forecasts, horizon, step_hours=step_hours, capacity_gpus=capacity_gpus,
                     reserved_gpus=reserved_gpus, optional=False)
    if m.impossible:
        return Optimum("infeasible", {}, float("nan"), float("nan"), len(m.c), time.perf_counter() - t0,
                       f"job {m.impossible[0]!r} cannot meet its deadline even alone")
    n = len(m.c)
    if m.overfull:
        return Optimum("infeasible", {}, float("nan"), float("nan"), n, time.perf_counter() - t0,
                       "running work alone exceeds the capacity")
    if n == 0:
        return Optimum("optimal", {k: tuple(v) for k, v in m.fixed.items()}, m.grams_fixed, m.grams_fixed, 0,
                       time.perf_counter() - t0)
    res = m.solve(time_limit_s)
    secs = time.perf_counter() - t0
    if res.status == 2:
        return Optimum("infeasible", {}, float("nan"), float("nan"), n, secs, "no schedule meets every deadline")
    dual = getattr(res, "mip_dual_bound", None)
    if res.x is None:
        return Optimum("time_limit", {}, float("nan"), (float(dual) if dual is not None else float("nan")) + m.grams_fixed,
                       n, secs, str(res.message))
    runs = m.runs(res.x)
    grams = float(res.fun) + m.grams_fixed
    bound = float(dual) + m.grams_fixed if dual is not None and np.isfinite(dual) else grams
    status = "optimal" if res.status == 0 else "time_limit"
    return Optimum(status, runs, grams, min(bound, grams), n, secs, str(res.message))


@dataclass(frozen=True)
class Misses:
    """``fewest_misses``'s answer: at best, how many placeable jobs miss their deadline.

    ``status``: optimal (``fewest`` is exact: ``low == fewest == high``) | time_limit
    (``low`` <= the answer <= ``high``: the solver's bound and its best schedule) |
    too_large | unavailable (``low`` from the demand bound only, ``high`` None) | infeasible
    (running work alone exceeds the capacity).
    ``met``: the jobs that keep their deadline in the best schedule found (by name)."""

    status: str
    low: int
    high: int | None
    met: tuple[str, ...]
    variables: int
    seconds: float
    message: str = ""

    @property
    def fewest(self) -> int | None:
        """The exact least number of misses, or None when not decided."""
        return self.low if self.high is not None and self.low == self.high else None


def fewest_misses(jobs: Sequence[JobSpec], *, capacity_gpus: float, reserved_gpus: np.ndarray | None = None,
                  time_limit_s: float = 60.0, max_variables: int = 200_000) -> Misses:
    """The least number of placeable jobs that must miss their deadline within the capacity.

    The same model as ``optimum`` with each job optional (a binary: all of its work inside
    its window, or none of it) and the number left out minimised: a job left out can run
    after every deadline, where it takes no one's GPUs, so this is the fewest misses of
    any schedule (exact MILP). 0 when ``optimum`` is feasible. Jobs that cannot meet their
    deadline even alone count as misses; unplaceable jobs are left out (reported on their
    own). Without an exact answer ``low`` is at least 1 when the demand bound is violated."""
    import time

    t0 = time.perf_counter()
    proven = 1 if demand_bound(jobs, capacity_gpus, reserved_gpus) is not None else 0
    if (missing := _no_scipy()) is not None:
        return Misses("unavailable", proven, None, (), 0, 0.0, missing)
    horizon = horizon_of(jobs)
    n = _count_variables(jobs, capacity_gpus, horizon) + len(jobs)
    if n > max_variables:
        return Misses("too_large", proven, None, (), n, time.perf_counter() - t0, f"{n} variables > {max_variables}")
    m = _Model.build(jobs, np.zeros(horizon), horizon, step_hours=1.0, capacity_gpus=capacity_gpus,
                     reserved_gpus=reserved_gpus, optional=True)
    forced = len(m.impossible)
    if m.overfull:
        return Misses("infeasible", proven, None, (), len(m.c), time.perf_counter() - t0,
                      "running work alone exceeds the capacity")
    if not m.optional:
        return Misses("optimal", forced, forced, tuple(m.fixed), len(m.c), time.perf_counter() - t0)
    res = m.solve(time_limit_s)
    secs = time.perf_counter() - t0
    dual = getattr(res, "mip_dual_bound", None)
    # the objective is -(jobs kept); integral, so the bound rounds up to whole misses
    low = len(m.optional) + forced + int(np.ceil(float(dual) - 1e-6)) if dual is not None and np.isfinite(dual) else 0
    low = max(low, proven, forced)
    if res.x is None:
        return Misses("time_limit", low, None, (), len(m.c), secs, str(res.message))
    kept = [name for name, z in m.optional.items() if res.x[z] > 0.5]
    high = len(m.optional) + forced - len(kept)
    status = "optimal" if res.status == 0 else "time_limit"
    if status == "optimal":
        low = high
    met = tuple(sorted(set(kept) | set(m.fixed)))
    return Misses(status, min(low, high), high, met, len(m.c), secs, str(res.message))


def _no_scipy() -> str | None:
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        return "scipy is not installed (pip install 'greenml-operator[exact]')"
    return None


@dataclass
class _Model:
    """The MILP shared by ``optimum`` (least grams, every job kept) and ``fewest_misses``
    (each job optional: ``optional`` maps a job to its binary; least jobs left out)."""

    horizon: int
    free: np.ndarray
    c: list[float]
    cap: tuple[list[int], list[int], list[float]]                  # capacity rows: slot t -> row t
    eq_rows: list[tuple[list[int], list[float], float]]            # sum = rhs
    ge_rows: list[tuple[list[int], list[float]]]                   # sum >= 0
    decode: list[tuple[str, int, str, int, int]]                   # (job, var, kind, slot/start, length)
    fixed: dict[str, list[tuple[int, int]]]
    grams_fixed: float
    optional: dict[str, int]
    impossible: list[str]                                          # cannot meet the deadline even alone

    @property
    def overfull(self) -> bool:
        return bool((self.free < -_EPS).any())

    @classmethod
    def build(cls, jobs: Sequence[JobSpec], forecasts: Mapping[str, np.ndarray] | np.ndarray, horizon: int, *,
              step_hours: float, capacity_gpus: float, reserved_gpus: np.ndarray | None, optional: bool) -> "_Model":
        if not isinstance(forecasts, Mapping):
            forecasts = {DEFAULT_ZONE: forecasts}
        cost = {z: _extend(np.asarray(f, dtype=np.float64), horizon) for z, f in forecasts.items()}
        m = cls(horizon, free_gpus(capacity_gpus, horizon, reserved_gpus), [], ([], [], []), [], [], [], {}, 0.0,
                {}, [])
        for j in jobs:
            k = max(0, int(j.remaining))
            if k == 0 or (j.gpus > capacity_gpus and not j.pinned):
                continue
            m._add(j, k, cost.get(j.zone, next(iter(cost.values())) if len(cost) == 1 else None),
                   j.power_kw * step_hours, optional)
            if m.impossible and not optional:
                break
        return m

    def _add(self, j: JobSpec, k: int, f: np.ndarray, kw: float, optional: bool) -> None:
        c, (rows, cols, vals) = self.c, self.cap
        e = max(0, int(j.earliest))
        pinned = min(k, max(0, int(j.pinned)))
        if pinned and not j.interruptible:
            pinned = k
        if pinned:
            self.fixed[j.name] = [(e, e + pinned)]
            self.free[e:e + pinned] -= j.gpus
            self.grams_fixed += float(f[e:e + pinned].sum()) * kw
        lo, rest, hi = e + pinned, k - pinned, min(int(j.latest_end), self.horizon)
        if rest == 0:
            return
        if lo + rest > hi:
            self.impossible.append(j.name)
            return
        z = None
        if optional:
            z = self.optional[j.name] = len(c)
            c.append(-1.0)
        m = max(1, int(j.min_run))
        window = not j.interruptible or (m > 1 and rest < 2 * m)
        if window:
            starts = np.arange(lo, hi - rest + 1)
            cum = np.concatenate(([0.0], np.cumsum(f[:hi])))
            wcost = (cum[starts + rest] - cum[starts]) * kw
            ids = list(range(len(c), len(c) + starts.size))
            c.extend(wcost.tolist() if z is None else [0.0] * len(ids))
            self._exactly(ids, 1.0, z)
            for v, s in zip(ids, starts):
                self.decode.append((j.name, v, "window", int(s), rest))
                for t in range(s, s + rest):
                    rows.append(t)
                    cols.append(v)
                    vals.append(float(j.gpus))
            return
        slots = np.arange(lo, hi)
        x = list(range(len(c), len(c) + slots.size))
        c.extend((f[lo:hi] * kw).tolist() if z is None else [0.0] * len(x))
        self._exactly(x, float(rest), z)
        for v, t in zip(x, slots):
            self.decode.append((j.name, v, "slot", int(t), 1))
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
                    self.ge_rows.append(([y, x[idx]], [1.0, -1.0]))
                else:
                    self.ge_rows.append(([y, x[idx], prev], [1.0, -1.0, 1.0]))
                for u in range(1, m):
                    if idx + u < len(x):
                        self.ge_rows.append(([x[idx + u], y], [1.0, -1.0]))
                    else:
                        self.ge_rows.append(([y], [-1.0]))   # y == 0

    def _exactly(self, ids: list[int], amount: float, z: int | None) -> None:
        """sum(ids) == amount, or == amount × z when the job is optional."""
        if z is None:
            self.eq_rows.append((ids, [1.0] * len(ids), amount))
        else:
            self.eq_rows.append((ids + [z], [1.0] * len(ids) + [-amount], 0.0))

    def solve(self, time_limit_s: float):
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_array

        n = len(self.c)
        rows, cols, vals = self.cap
        cons = [LinearConstraint(coo_array((vals, (rows, cols)), shape=(self.horizon, n)).tocsr(), -np.inf, self.free)]
        for spec, lo_hi in ((self.eq_rows, None), (self.ge_rows, (0.0, np.inf))):
            if not spec:
                continue
            r_, c_, v_, rhs = [], [], [], []
            for r, row in enumerate(spec):
                ids, coef = row[0], row[1]
                r_ += [r] * len(ids)
                c_ += ids
                v_ += coef
                if lo_hi is None:
                    rhs.append(row[2])
            a = coo_array((v_, (r_, c_)), shape=(len(spec), n)).tocsr()
            cons.append(LinearConstraint(a, rhs, rhs) if lo_hi is None else LinearConstraint(a, *lo_hi))
        return milp(np.array(self.c), integrality=np.ones(n), bounds=Bounds(0, 1), constraints=cons,
                    options={"time_limit": float(time_limit_s), "mip_rel_gap": 1e-9})

    def runs(self, xv: np.ndarray) -> dict[str, tuple[tuple[int, int], ...]]:
        chosen: dict[str, list[tuple[int, int]]] = {k: list(v) for k, v in self.fixed.items()}
        for name, v, kind, s, length in self.decode:
            if xv[v] > 0.5:
                chosen.setdefault(name, []).append((s, s + length))
        return {k: _merge(v) for k, v in chosen.items()}


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
