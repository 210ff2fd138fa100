"""Benchmark 2: Let's Wait Awhile reproduction, on its own data.

Wiesner et al., "Let's Wait Awhile: How Temporal Workload Shifting Can Reduce Carbon
Emissions in the Cloud", Middleware '21 (doi:10.1145/3464298.3493399), scenario II (ML
training). Data: lets_wait_awhile_{DE,GB,FR}_2020.csv (../shared/data), 30-minute means.

Workload (as in the paper): 3,387 jobs; durations uniform over 4 h … 89.5 h in 30-min
steps; arrivals on 2020 workdays at 09:00–16:30 (30-min steps); constant power. Deadline
from the original finish f = submit + duration: f on a Saturday → Monday 09:00; f on a
Sunday or after 17:00 → 09:00 the next day; f before 09:00 → 09:00 that day; otherwise f.
Forecast = actual + N(0, 0.05·mean(actual)), one draw per seed; emissions on the actual
series, relative to running immediately.

Policies: ``lwa`` with the original code's quirks (the published table), ``lwa``
deadline-strict, ours (``greenml``: PlanBoard + decide, online, deadline-strict) and the
perfect-foresight ``oracle``; optionally with a GPU capacity (``--capacity``).

    python bench/bench_lwa.py            # 3 zones × 2 modes × seeds (default 3; --seeds 10 for the paper's 10)
    python bench/bench_lwa.py --quick    # a tiny run (smoke test)
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import data_file, write_result  # noqa: E402

from greenml.signals.base import IntensitySeries  # noqa: E402
from greenml.sim import forecasts  # noqa: E402
from greenml.sim.jobs import SimJob  # noqa: E402
from greenml.sim.shifting import SimPolicy, simulate  # noqa: E402

STEP = timedelta(minutes=30)
YEAR = datetime(2020, 1, 1, tzinfo=timezone.utc)
N_JOBS = 3387
PUBLISHED = {"DE": (5.91, 7.93), "GB": (6.56, 9.03), "FR": (4.77, 5.92)}   # % (non-interruptible, interruptible)
ZONES = ("DE", "GB", "FR")


def load_30min(path: Path) -> IntensitySeries:
    """30-minute means of the LWA file (its DE file is 15-min, GB switches to 15-min in Nov 2020)."""
    bins: dict[int, list[float]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            t = datetime.fromisoformat(row["datetime"]).replace(tzinfo=timezone.utc)
            k = int((t - YEAR).total_seconds() // STEP.total_seconds())
            if k >= 0:
                bins.setdefault(k, []).append(float(row["ci_gco2eq_per_kwh"]))
    n = max(bins) + 1
    vals = np.array([np.mean(bins[k]) if k in bins else np.nan for k in range(n)])
    if np.isnan(vals).any():
        ok = ~np.isnan(vals)
        vals = np.interp(np.arange(n), np.flatnonzero(ok), vals[ok])
    return IntensitySeries(YEAR, STEP, vals, source=path.name)


def lwa_deadline(finish: datetime) -> datetime:
    nine = finish.replace(hour=9, minute=0, second=0, microsecond=0)
    wd = finish.weekday()
    if wd == 5:
        return nine + timedelta(days=2)
    if wd == 6 or finish > finish.replace(hour=17, minute=0, second=0, microsecond=0):
        return nine + timedelta(days=1)
    if finish < nine:
        return nine
    return finish


def lwa_workload(n_jobs: int, interruptible: bool, seed: int = 0, days: int = 366) -> list[SimJob]:
    rng = np.random.default_rng(seed)
    workdays = [YEAR + timedelta(days=d) for d in range(days) if (YEAR + timedelta(days=d)).weekday() < 5]
    jobs = []
    for i in range(n_jobs):
        day = workdays[int(rng.integers(len(workdays)))]
        submit = day + timedelta(hours=9) + STEP * int(rng.integers(0, 16))        # 09:00 … 16:30
        duration = timedelta(hours=4) + STEP * int(rng.integers(0, 172))           # 4 h … 89.5 h
        jobs.append(SimJob(f"job{i:04d}", submit, duration, lwa_deadline(submit + duration),
                           gpus=1, watts_per_gpu=1000.0, interruptible=interruptible))
    return jobs


@dataclass(frozen=True)
class Case:
    zone: str
    interruptible: bool
    policy: str
    quirks: bool
    seed: int | None          # None: perfect forecast
    n_jobs: int
    capacity: int | None = None
    days: int = 366           # arrivals on the workdays of the first `days` days of 2020

    @property
    def label(self) -> str:
        q = "+quirks" if self.quirks else ""
        return f"{self.policy}{q}"


def run_case(case: Case) -> dict:
    path = data_file(f"carbon_intensity/lets_wait_awhile_{case.zone}_2020.csv")
    actual = load_30min(path)
    jobs = lwa_workload(case.n_jobs, case.interruptible, days=case.days)
    fc = forecasts.perfect(actual) if case.seed is None else forecasts.noisy(actual, 0.05, case.seed)
    policy = SimPolicy(name=case.policy, step=STEP, lwa_quirks=case.quirks, capacity_gpus=case.capacity,
                       min_run=STEP, forecast_label="perfect" if case.seed is None else f"noise 0.05 seed {case.seed}")
    t0 = time.perf_counter()
    s = simulate(jobs, actual, fc, policy).summary()
    return {**case.__dict__, "savings_percent": s["savings_percent"], "deadlines_met": s["deadlines_met"],
            "jobs": s["jobs"], "wall_seconds": round(time.perf_counter() - t0, 2)}


def cases(args: argparse.Namespace) -> list[Case]:
    out = []
    seeds = list(range(args.seeds))
    for zone in args.zones:
        for intr in (False, True):
            for seed in seeds:
                out.append(Case(zone, intr, "lwa", True, seed, args.jobs, days=args.days))
                out.append(Case(zone, intr, "lwa", False, seed, args.jobs, days=args.days))
                out.append(Case(zone, intr, "greenml", False, seed, args.jobs, days=args.days))
                if args.capacity:
                    out.append(Case(zone, intr, "greenml", False, seed, args.jobs, args.capacity, args.days))
                    out.append(Case(zone, intr, "lwa", False, seed, args.jobs, args.capacity, args.days))
            out.append(Case(zone, intr, "oracle", False, None, args.jobs, days=args.days))
            out.append(Case(zone, intr, "greenml", False, None, args.jobs, days=args.days))
    return out


def summarise(rows: list[dict]) -> tuple[list[dict], str]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["zone"], r["interruptible"], r["policy"], r["quirks"], r["seed"] is None, r["capacity"])
        groups.setdefault(key, []).append(r)
    table = []
    for (zone, intr, policy, quirks, perfect, cap), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        sav = np.array([r["savings_percent"] for r in rs])
        table.append({"zone": zone, "mode": "interruptible" if intr else "non-interruptible",
                      "policy": policy + ("+quirks" if quirks else ""), "forecast": "perfect" if perfect else "5% noise",
                      "capacity": cap, "runs": len(rs), "savings_mean_percent": round(float(sav.mean()), 2),
                      "savings_std": round(float(sav.std()), 2),
                      "deadlines_met_min": min(r["deadlines_met"] for r in rs), "jobs": rs[0]["jobs"],
                      "published_percent": PUBLISHED[zone][int(intr)]})
    md = ["| zone | mode | policy | forecast | capacity | savings % (mean ± sd) | published % | deadlines met (min) |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {t['zone']} | {t['mode']} | {t['policy']} | {t['forecast']} | {t['capacity'] or '—'} | "
           f"{t['savings_mean_percent']:.2f} ± {t['savings_std']:.2f} ({t['runs']} runs) | {t['published_percent']:.2f} | "
           f"{t['deadlines_met_min']}/{t['jobs']} |" for t in table]
    return table, "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny run: GB only, 40 jobs arriving in January, 1 seed")
    p.add_argument("--seeds", type=int, default=3, help="forecast-noise seeds (the paper uses 10)")
    p.add_argument("--jobs", type=int, default=N_JOBS)
    p.add_argument("--zones", nargs="+", default=list(ZONES), choices=ZONES)
    p.add_argument("--capacity", type=int, default=None, help="also run with this many GPUs (1 per job)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--days", type=int, default=366, help="arrivals only in the first DAYS days of 2020")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.jobs, args.zones, args.days = 1, 40, ["GB"], 21
    missing = [z for z in args.zones if data_file(f"carbon_intensity/lets_wait_awhile_{z}_2020.csv") is None]
    if missing:
        print(f"skipped: Let's Wait Awhile data not found for {missing} under ../shared/data")
        return 0
    todo = cases(args)
    print(f"{len(todo)} simulations ({args.jobs} jobs each, {args.seeds} noise seed(s), zones {args.zones}) "
          f"on {args.workers} worker(s)", flush=True)
    t0 = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for r in pool.map(run_case, todo):
            rows.append(r)
            print(f"  {r['zone']} {'int' if r['interruptible'] else 'non'} {Case(**{k: r[k] for k in Case.__dataclass_fields__}).label:14s} "
                  f"seed={r['seed']} cap={r['capacity']}: {r['savings_percent']:6.2f}%  deadlines {r['deadlines_met']}/{r['jobs']}  "
                  f"({r['wall_seconds']} s)", flush=True)
    table, md = summarise(rows)
    print(md)
    name = "lwa_quick" if args.quick else "lwa"
    write_result(name, {"args": vars(args), "wall_seconds": round(time.perf_counter() - t0, 1),
                        "sampling": f"{args.seeds} of the paper's 10 noise seeds" if args.seeds < 10 else "10 seeds",
                        "table": table, "runs": rows}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
