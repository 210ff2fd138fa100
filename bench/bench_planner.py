"""Benchmark 3: speed of the time-shifting planner (greenml.planning.shifting.plan).

Plans N waiting jobs over a forecast of H days at 5-minute slots, with and without
a GPU capacity limit, and reports the median wall time over a few repeats, the peak
Python memory (tracemalloc, a separate run) and how the cost grows with N and H.

Inputs (real data when present, documented fallbacks otherwise):
- job durations: Philly task runtimes (Jeon et al., ATC'19; via alibaba/clusterdata
  cluster-trace-gpu-v2020/analysis/philly_runtime.csv, CC BY 4.0), rounded up to whole
  5-minute slots and capped at 3 days. Fallback: lognormal with the trace's median
  (1,186 s) and p90 (12,860 s), i.e. mu = ln 1186, sigma = ln(12860/1186) / 1.2816.
- intensity: Electricity Maps DE hourly life-cycle intensity ("Electricity Maps",
  via HewlettPackard/green-dcc), the first N days of 2023, held constant within each
  hour -- what IntensitySeries.resample (time-weighted mean) gives the operator.
  Fallback: a daily sine 400 +- 150 gCO2e/kWh.
- job mix (our assumption, stated): 50 % non-interruptible, 40 % interruptible with
  the operator's default minRunDuration (30 min = 6 slots), 10 % interruptible with
  min_run = 1 slot; 1-8 GPUs; deadline = duration + uniform(0, 48 h) slack, capped
  at the horizon; capacity = 1/4 of the GPUs the jobs ask for in total, so that
  the capacity path is really exercised.

Run: python bench/bench_planner.py [--quick]
"""
from __future__ import annotations

import argparse
import csv
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import _common  # noqa: E402
from greenml.planning.shifting import JobSpec, plan  # noqa: E402

STEP_HOURS = 5 / 60
SLOTS_PER_DAY = 288
PHILLY = "cluster_traces/philly_2017_job_runtimes_via_alibaba_v2020_analysis.csv"
DE = "carbon_intensity/electricitymaps_DE_hourly_2021-2024.csv"
MAX_DURATION_SLOTS = 3 * SLOTS_PER_DAY
SLACK_SLOTS = 2 * SLOTS_PER_DAY
DEFAULT_MIN_RUN = 6


def load_runtimes_s() -> tuple[np.ndarray, str]:
    """Philly task runtimes in seconds, or the documented lognormal fallback."""
    p = _common.data_file(PHILLY)
    if p is not None:
        with p.open(newline="") as fh:
            vals = np.array([float(r["runtime"]) for r in csv.DictReader(fh)])
        return vals, f"philly ({p.name}, {vals.size} tasks)"
    rng = np.random.default_rng(0)
    sigma = np.log(12860 / 1186) / 1.2816
    return rng.lognormal(np.log(1186), sigma, 83154), "lognormal fallback (Philly median/p90)"


def load_intensity(days: int) -> tuple[np.ndarray, str]:
    """`days` of 5-minute slots of gCO2e/kWh: DE 2023 hourly held per hour, or a sine."""
    n = days * SLOTS_PER_DAY
    p = _common.data_file(DE)
    if p is not None:
        with p.open(newline="") as fh:
            rows = [float(r["ci_lca_gco2eq_per_kwh"]) for r in csv.DictReader(fh)
                    if r["datetime_utc"] >= "2023-01-01"]
        hourly = np.array(rows[: days * 24 + 1])
        return np.repeat(hourly, 12)[:n], f"electricitymaps DE 2023-01-01 +{days} d, hourly held per 5 min"
    t = np.arange(n) * STEP_HOURS
    return 400 + 150 * np.sin(2 * np.pi * t / 24), "synthetic daily sine (fallback)"


def make_jobs(n: int, horizon: int, runtimes_s: np.ndarray, seed: int = 0) -> list[JobSpec]:
    """n waiting jobs with real durations and the mix described in the module docstring."""
    rng = np.random.default_rng(seed)
    dur = np.ceil(rng.choice(runtimes_s, n) / 300.0).astype(int)
    dur = np.clip(dur, 1, min(MAX_DURATION_SLOTS, horizon))
    slack = rng.integers(0, SLACK_SLOTS + 1, n)
    latest = np.minimum(dur + slack, horizon)
    kind = rng.random(n)
    gpus = rng.choice([1, 1, 2, 4, 8], n)
    jobs = []
    for i in range(n):
        interruptible = bool(kind[i] >= 0.5)
        jobs.append(JobSpec(
            name=f"job-{i:05d}", remaining=int(dur[i]), latest_end=int(latest[i]),
            gpus=int(gpus[i]), power_kw=0.3 * int(gpus[i]), interruptible=interruptible,
            min_run=1 if kind[i] >= 0.9 else DEFAULT_MIN_RUN))
    return jobs


def capacity_for(jobs: Sequence[JobSpec]) -> float:
    return max(8.0, sum(j.gpus for j in jobs) / 4.0)


def time_plan(jobs: Sequence[JobSpec], forecast: np.ndarray, capacity: float | None,
              repeats: int) -> dict:
    """Median/min wall time of plan() over `repeats` runs, then peak memory in one more."""
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        plans = plan(jobs, forecast, step_hours=STEP_HOURS, capacity_gpus=capacity)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    plan(jobs, forecast, step_hours=STEP_HOURS, capacity_gpus=capacity)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    reasons: dict[str, int] = {}
    for p in plans:
        reasons[p.reason] = reasons.get(p.reason, 0) + 1
    saved = sum(p.run_now_grams - p.grams for p in plans)
    total = sum(p.run_now_grams for p in plans)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats,
            "peak_mib": peak / 2**20, "reasons": reasons,
            "savings_pct": 100.0 * saved / total if total else 0.0}


def run(job_counts: Sequence[int] = (1000, 2000, 5000, 10000), horizons_days: Sequence[int] = (1, 3, 7),
        main_days: int = 7, repeats: int = 3, out_dir: Path | None = None) -> dict:
    """Run the benchmark and write planner_speed.json/.md (into out_dir if given)."""
    runtimes, runtime_src = load_runtimes_s()
    rows = []

    def one(n: int, days: int) -> None:
        forecast, _ = load_intensity(days)
        jobs = make_jobs(n, forecast.size, runtimes)
        for cap_label, cap in (("none", None), ("limited", capacity_for(jobs))):
            r = time_plan(jobs, forecast, cap, repeats)
            row = {"jobs": n, "days": days, "slots": int(forecast.size), "capacity": cap_label,
                   "capacity_gpus": cap, **r}
            rows.append(row)
            print(f"jobs={n:>6} days={days} capacity={cap_label:<7} median={r['median_s'] * 1e3:8.1f} ms"
                  f"  peak={r['peak_mib']:6.1f} MiB  saved={r['savings_pct']:5.1f} %  reasons={r['reasons']}")

    for n in job_counts:
        one(n, main_days)
    for d in horizons_days:
        if d != main_days:
            one(max(job_counts), d)
    _, ci_src = load_intensity(main_days)
    payload = {"step_minutes": 5, "runtimes": runtime_src, "intensity": ci_src,
               "mix": "50% non-interruptible, 40% interruptible min_run=6, 10% min_run=1",
               "rows": rows}
    md = ["# Planner speed (greenml.planning.shifting.plan)", "",
          f"Durations: {runtime_src}. Intensity: {ci_src}. Median of {repeats} runs.", "",
          "| jobs | days | slots | capacity | median ms | min ms | peak MiB | saved % |",
          "|---:|---:|---:|---|---:|---:|---:|---:|"]
    md += [f"| {r['jobs']} | {r['days']} | {r['slots']} | {r['capacity']} | {r['median_s'] * 1e3:.1f} "
           f"| {r['min_s'] * 1e3:.1f} | {r['peak_mib']:.1f} | {r['savings_pct']:.1f} |" for r in rows]
    saved_dir = _common.RESULTS
    _common.RESULTS = Path(out_dir) if out_dir is not None else saved_dir
    try:
        _common.write_result("planner_speed", payload, "\n".join(md) + "\n")
    finally:
        _common.RESULTS = saved_dir
    return payload


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="output dir (default bench/results)")
    a = ap.parse_args(argv)
    if a.quick:
        run((100, 200), (1,), 1, repeats=1, out_dir=a.out)
    else:
        run(repeats=a.repeats, out_dir=a.out)


if __name__ == "__main__":
    main()
