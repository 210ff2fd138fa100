"""Benchmark 1: shifting quality against the anchors and the perfect-foresight optimum.

Carbon intensity: Electricity Maps hourly life-cycle intensity 2021–2024 for DE, GB,
US-CAL-CISO, US-MIDA-PJM (../shared/data/carbon_intensity; attribution "Electricity Maps"),
plus NESO GB (CC BY 4.0) with its real multi-horizon forecast snapshots of 2023-03-14…18.
Held-out series (never used to pick the forecaster's defaults), builtin vs perfect only:
Let's Wait Awhile DE / GB / FR 2020 (Wiesner et al., Middleware '21; ENTSO-E derived),
NESO GB actuals 2023 (CC BY 4.0), WattTime CAISO_NORTH MOER June 2023 (5 min, marginal;
via dos-group/vessim).

Workloads: durations drawn from the Philly runtimes (Jeon et al., ATC'19, via
alibaba/clusterdata; jobs under 10 min dropped, capped at 48 h), GPU counts from the
Alibaba GPU pods of 2023 (Weng et al., ATC'23; pods with ≥ 1 GPU); arrivals uniform
over the window; deadline = submit + duration + {2 h, 8 h, 24 h}; half interruptible;
300 W per GPU. Sampled: ``--windows`` two-week windows per zone, one per year,
starting on a random day (seeded) — not every hour of 2021–2024.

Policies: run-now (baseline), threshold, best-window, lwa, greenml (ours: PlanBoard +
decide, online) and oracle (perfect foresight). Forecasts: perfect, 5 % and 10 %
Gaussian noise, greenml's own forecaster (builtin), NESO snapshots (GB) as issued and
``blended`` (NESO's snapshot corrected by the latest actual and mixed with builtin:
``signals.forecaster.blend_with_provider``). With and without a GPU capacity (60 % of the
peak that running everything at once would need).
Reported: savings vs run-now, and ours as a fraction of the oracle's savings, pooled over
the windows where the oracle is an optimum (no capacity: always; with one: where the exact
MILP solved; where no schedule keeps every deadline the oracle is the planner's greedy +
repair, no reference: such windows are counted, left out of the fraction, and each says
whether its job set is feasible and how many deadlines no schedule can keep); per zone,
side by side (no capacity, greenml): the fraction of the oracle kept with each imperfect
forecast and that forecast's quality over the same windows (MAE at 12 / 24 / 48 h, and
Spearman's rank correlation with the actual over the next 24 h, at origins every 6 h of
the arrivals), against issue 14's goals (>= 0.8 of perfect in the four zones, >= 0.5 anywhere).

    python bench/bench_shifting.py           # default sample (a few minutes on 2 cores)
    python bench/bench_shifting.py --quick   # tiny smoke run
"""
from __future__ import annotations

import argparse
import csv
import functools
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import data_file, write_result  # noqa: E402
from bench.bench_forecaster import spearman  # noqa: E402

from greenml.signals.base import IntensitySeries, SignalError  # noqa: E402
from greenml.signals.file import load_intensity_csv  # noqa: E402
from greenml.sim import forecasts  # noqa: E402
from greenml.sim.jobs import SimJob  # noqa: E402
from greenml.sim.shifting import ORACLE_OPTIMAL, SimPolicy, simulate  # noqa: E402

ZONES = ("DE", "GB", "US-CAL-CISO", "US-MIDA-PJM")
YEARS = (2021, 2022, 2023, 2024)
POLICIES = ("run-now", "threshold", "best-window", "lwa", "greenml")
FORECASTS = ("perfect", "noise5", "noise10", "builtin")
STEP = timedelta(minutes=30)
WINDOW = timedelta(days=14)
HISTORY = timedelta(days=14)          # before the window: what the builtin forecaster learns from
SLACKS_H = (2, 8, 24)
NESO_START = datetime(2023, 3, 14, 4, 30, tzinfo=timezone.utc)
NESO_ARRIVALS = timedelta(days=3)
NESO_FC = "carbon_intensity/neso_gb_national_fw48h_forecast_snapshots_2023-03.csv"
NESO_ACTUAL = "carbon_intensity/neso_gb_national_halfhourly_2023_forecast_actual.csv"
NESO_FORECASTS = ("neso", "blended", "builtin", "perfect")
# held-out series: (file, column or None); windows drawn inside each series
HELD_OUT = {
    "LWA-DE-2020": ("carbon_intensity/lets_wait_awhile_DE_2020.csv", None),
    "LWA-GB-2020": ("carbon_intensity/lets_wait_awhile_GB_2020.csv", None),
    "LWA-FR-2020": ("carbon_intensity/lets_wait_awhile_FR_2020.csv", None),
    "NESO-GB-2023": (NESO_ACTUAL, "actual_gco2_per_kwh"),
    "WT-CAISO_NORTH-2023-06": ("carbon_intensity/watttime_CAISO_NORTH_moer_5min_2023-06_actual.csv", None),
}
GOAL_ZONES, GOAL_RATIO, FLOOR_RATIO = ZONES, 0.8, 0.5      # issue 14, goal 3
QUALITY_LEADS_H = (12, 24, 48)
QUALITY_EVERY = timedelta(hours=6)


@dataclass(frozen=True)
class Case:
    zone: str
    window_start: str       # ISO; the arrivals window
    forecast: str           # perfect | noise5 | noise10 | builtin | neso
    policy: str
    capacity: bool
    n_jobs: int
    seed: int


@functools.lru_cache(maxsize=None)
def _runtimes() -> np.ndarray:
    with open(data_file("cluster_traces/philly_2017_job_runtimes_via_alibaba_v2020_analysis.csv"), newline="") as fh:
        r = np.array([float(row["runtime"]) for row in csv.DictReader(fh)])
    return np.minimum(r[r >= 600], 48 * 3600)


@functools.lru_cache(maxsize=None)
def _gpu_counts() -> np.ndarray:
    with open(data_file("cluster_traces/alibaba_gpu_v2023_openb_pods.csv"), newline="") as fh:
        g = np.array([int(row["num_gpu"]) for row in csv.DictReader(fh)])
    return g[g >= 1]


@functools.lru_cache(maxsize=None)
def _zone_series(zone: str) -> IntensitySeries:
    if zone == "GB-NESO":
        return load_intensity_csv(data_file(NESO_ACTUAL), column="actual_gco2_per_kwh", source="NESO actual")
    if zone in HELD_OUT:
        rel, column = HELD_OUT[zone]
        return load_intensity_csv(data_file(rel), column=column, source=zone)
    return load_intensity_csv(data_file(f"carbon_intensity/electricitymaps_{zone}_hourly_2021-2024.csv"),
                              column="ci_lca_gco2eq_per_kwh", source=f"electricitymaps {zone}")


def make_jobs(start: datetime, arrivals: timedelta, n: int, seed: int) -> list[SimJob]:
    rng = np.random.default_rng(seed)
    run, gpus = _runtimes(), _gpu_counts()
    slots = int(arrivals / STEP)
    jobs = []
    for i in range(n):
        submit = start + STEP * int(rng.integers(0, slots))
        duration = timedelta(seconds=round(float(rng.choice(run)) / 60) * 60)
        slack = timedelta(hours=int(rng.choice(SLACKS_H)))
        jobs.append(SimJob(f"j{i:04d}", submit, duration, submit + duration + slack, gpus=int(rng.choice(gpus)),
                           watts_per_gpu=300.0, interruptible=bool(rng.integers(0, 2))))
    return jobs


def capacity_for(jobs: list[SimJob]) -> int:
    """60 % of the peak GPUs that running every job at submit would use."""
    events = sorted([(j.submit, j.gpus) for j in jobs] + [(j.submit + j.duration, -j.gpus) for j in jobs],
                    key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    return max(max(j.gpus for j in jobs), math.ceil(0.6 * peak))


def forecast_quality(fc, actual: IntensitySeries, start: datetime, arrivals: timedelta) -> dict:
    """The forecast's errors over the arrivals window: |forecast - actual| at each lead of
    QUALITY_LEADS_H (the slot starting lead - 1 step after the origin), Spearman over the next
    24 h, at origins every QUALITY_EVERY. Sums and counts, so windows can be pooled."""
    step = actual.step
    n = int(max(QUALITY_LEADS_H) * 3600 // step.total_seconds())
    per_24 = int(24 * 3600 // step.total_seconds())
    out = {"abs_err": {h: [0.0, 0] for h in QUALITY_LEADS_H}, "spearman_24h": [0.0, 0]}
    t = start
    while t < start + arrivals:
        i = actual.index_of(t)
        if i + n > len(actual):
            break
        try:
            pred = fc("zone", t, step * n).resample(t, step, n)
        except SignalError:
            pred = None
        if pred is not None and np.all(np.isfinite(pred)):
            act = actual.values[i:i + n]
            for h in QUALITY_LEADS_H:
                k = int(h * 3600 // step.total_seconds()) - 1
                out["abs_err"][h][0] += abs(float(pred[k] - act[k]))
                out["abs_err"][h][1] += 1
            r = spearman(pred[:per_24], act[:per_24])
            if np.isfinite(r):
                out["spearman_24h"][0] += r
                out["spearman_24h"][1] += 1
        t += QUALITY_EVERY
    return out


def run_case(case: Case) -> dict:
    full = _zone_series(case.zone)
    start = datetime.fromisoformat(case.window_start)
    arrivals = NESO_ARRIVALS if case.zone == "GB-NESO" else WINDOW - timedelta(days=3)
    jobs = make_jobs(start, arrivals, case.n_jobs, case.seed)
    actual = full.window(start - HISTORY, start + arrivals + timedelta(days=5))
    fc = {"perfect": lambda: forecasts.perfect(actual),
          "noise5": lambda: forecasts.noisy(actual, 0.05, case.seed),
          "noise10": lambda: forecasts.noisy(actual, 0.10, case.seed),
          "builtin": lambda: forecasts.builtin(actual),
          "neso": lambda: forecasts.snapshots(read_forecasts_neso()),
          "blended": lambda: forecasts.blended(read_forecasts_neso(), actual)}[case.forecast]()
    cap = capacity_for(jobs) if case.capacity else None
    t0 = time.perf_counter()
    r = simulate(jobs, actual, fc, SimPolicy(name=case.policy, step=STEP, capacity_gpus=cap, forecast_label=case.forecast))
    s = r.summary()
    row = {**asdict(case), "capacity_gpus": cap, "grams": s["grams"], "run_now_grams": s["run_now_grams"],
           "deadlines_met": s["deadlines_met"], "jobs": s["jobs"], "wall_seconds": round(time.perf_counter() - t0, 2),
           **{k: s[k] for k in ("unplaceable", "feasibility", "fewest_misses", "oracle_basis", "oracle_fallback_reason")}}
    if case.policy == "greenml" and not case.capacity and case.forecast != "perfect":
        row["quality"] = forecast_quality(fc, actual, start, arrivals)
    return row


@functools.lru_cache(maxsize=None)
def read_forecasts_neso():
    """NESO fw48h snapshots in the FORECASTS.csv shape (issued, target, value), read in memory."""
    from greenml.sim.jobs import ForecastSnapshots
    by: dict[datetime, dict[datetime, float]] = {}
    with open(data_file(NESO_FC), newline="") as fh:
        for row in csv.DictReader(fh):
            issued = datetime.fromisoformat(row["snapshot_utc"].replace("Z", "+00:00"))
            target = datetime.fromisoformat(row["window_from_utc"].replace("Z", "+00:00"))
            by.setdefault(issued, {})[target] = float(row["forecast_gco2_per_kwh"])
    issues = tuple(sorted(by))
    return ForecastSnapshots(issues, tuple(tuple(sorted(by[i])) for i in issues),
                             tuple(np.array([by[i][t] for t in sorted(by[i])]) for i in issues))


def cases(args: argparse.Namespace) -> list[Case]:
    rng = np.random.default_rng(args.seed)
    out = []
    for zone in args.zones:
        for year in args.years[: args.windows]:
            day = int(rng.integers(0, 365 - 20))
            ws = (datetime(year, 1, 1, tzinfo=timezone.utc) + timedelta(days=day + 15)).isoformat()
            seed = int(rng.integers(0, 2 ** 31))
            for cap in args.capacity:
                out.append(Case(zone, ws, "perfect", "oracle", cap, args.jobs, seed))
                out += [Case(zone, ws, f, p, cap, args.jobs, seed) for f in args.forecasts for p in args.policies]
    if "GB" in args.zones and not args.no_neso and data_file(NESO_FC) and data_file(NESO_ACTUAL):
        for cap in args.capacity:
            out.append(Case("GB-NESO", NESO_START.isoformat(), "perfect", "oracle", cap, args.jobs, args.seed))
            out += [Case("GB-NESO", NESO_START.isoformat(), f, p, cap, args.jobs, args.seed)
                    for f in NESO_FORECASTS for p in args.policies]
    if not args.no_held_out:
        out += held_out_cases(args)
    return out


def held_out_cases(args: argparse.Namespace) -> list[Case]:
    """Windows inside each held-out series (as many as fit, up to --windows; the arrivals
    window and its 5-day tail after HISTORY), oracle + greenml on perfect and builtin, no capacity."""
    rng = np.random.default_rng(args.seed + 1)
    out = []
    span = WINDOW + timedelta(days=2)          # arrivals (11 d) + the 5-day tail
    for zone, (rel, _col) in HELD_OUT.items():
        if data_file(rel) is None:
            continue
        s = _zone_series(zone)
        first = s.start + HISTORY
        room_days = int((s.end - span - first) / timedelta(days=1))
        if room_days < 0:
            continue
        starts = sorted({int(d) for d in rng.integers(0, room_days + 1, size=args.windows)}) if room_days else [0]
        for d in starts:
            ws = (first + timedelta(days=d)).isoformat()
            seed = int(rng.integers(0, 2 ** 31))
            out.append(Case(zone, ws, "perfect", "oracle", False, args.jobs, seed))
            out += [Case(zone, ws, f, "greenml", False, args.jobs, seed) for f in ("perfect", "builtin")]
    return out


def oracle_windows(rows: list[dict]) -> dict[tuple, dict]:
    """Per (zone, capacity, window): the oracle's row -- its basis, and the window's feasibility
    and fewest misses (the oracle misses a deadline whenever no schedule keeps them all, so
    its run is where the exact check ran)."""
    return {(r["zone"], r["capacity"], r["window_start"]): r for r in rows if r["policy"] == "oracle"}


def summarise(rows: list[dict]) -> tuple[list[dict], list[dict], str]:
    agg: dict[tuple, list[float]] = {}
    for r in rows:
        key = (r["zone"], r["capacity"], r["forecast"], r["policy"])
        a = agg.setdefault(key, [0.0, 0.0, 0, 0])
        a[0] += r["grams"]; a[1] += r["run_now_grams"]; a[2] += r["deadlines_met"]; a[3] += r["jobs"]
    # the oracle runs once per window (its forecast is the actual); every forecast is compared with it
    oracle = {(z, c): (1 - g / rn) for (z, c, f, p), (g, rn, *_) in agg.items() if p == "oracle"}
    by_window = oracle_windows(rows)
    reference = {k for k, o in by_window.items() if o["oracle_basis"] in ORACLE_OPTIMAL}
    vs_ref: dict[tuple, list[float]] = {}        # grams, run-now grams over the windows where the oracle is an optimum
    for r in rows:
        if (r["zone"], r["capacity"], r["window_start"]) in reference:
            a = vs_ref.setdefault((r["zone"], r["capacity"], r["forecast"], r["policy"]), [0.0, 0.0])
            a[0] += r["grams"]; a[1] += r["run_now_grams"]
    table = []
    for (zone, cap, fc, pol), (g, rn, met, n) in sorted(agg.items()):
        sav = 1 - g / rn if rn else 0.0
        wins = [o for (z, c, _), o in by_window.items() if (z, c) == (zone, cap)]
        fewest = [o["fewest_misses"] for o in wins]
        never = sum(o.get("unplaceable", 0) for o in wins)
        mine, ref = vs_ref.get((zone, cap, fc, pol)), vs_ref.get((zone, cap, "perfect", "oracle"))
        o_sav = 1 - ref[0] / ref[1] if ref and ref[1] else None
        frac = (1 - mine[0] / mine[1]) / o_sav if mine and mine[1] and o_sav else None
        table.append({"zone": zone, "capacity": cap, "forecast": fc, "policy": pol,
                      "savings_percent": round(100 * sav, 2),
                      "fraction_of_oracle": round(frac, 3) if frac is not None else None,
                      "deadlines_met": f"{met}/{n}",
                      "windows": len(wins), "oracle_optimal_windows": sum(o["oracle_basis"] in ORACLE_OPTIMAL for o in wins),
                      "infeasible_windows": sum(o["feasibility"] == "infeasible" for o in wins),
                      "deadlines_met_at_best": None if None in fewest else f"{n - sum(fewest) - never}/{n}"})
    md = ["| zone | capacity | forecast | policy | savings vs run-now | fraction of oracle (windows) | deadlines met "
          "| met at best |", "|---|---|---|---|---|---|---|---|"]
    md += [f"| {t['zone']} | {'60% of peak' if t['capacity'] else 'none'} | {t['forecast']} | {t['policy']} | "
           f"{t['savings_percent']:.2f}% | {fraction_cell(t)} | {t['deadlines_met']} | {t['deadlines_met_at_best'] or '—'} |"
           for t in table]
    md.append("\nfraction of oracle: savings over the windows where the oracle is an optimum (no capacity: the "
              "planner per job; with one: the exact MILP on the slot grid, HiGHS), over the oracle's savings on the "
              "same windows; (k/N): k of the zone's N windows. Where the job set is infeasible under the capacity the "
              "MILP, which keeps every deadline, has no schedule and the oracle is the planner's greedy + repair "
              "(greenml.sim.shifting.oracle_controller): no reference, so those windows are left out of the fraction. "
              "met at best: deadlines met by the best schedule for deadlines (planning.capacity.fewest_misses, exact "
              "on the slot grid). Savings vs run-now cover every window. The MILP is exact on the slot grid, where a "
              "job's last, partly used slot counts whole, while emissions are accounted over the time actually run: "
              "a policy can beat it by that rounding (a fraction slightly above 1 on windows where it is the optimum).")
    quality, qmd = forecast_table(rows, agg, oracle)
    return table, quality, "\n".join(qmd + [""] + md + [""] + window_table(by_window, rows)) + "\n"


def fraction_cell(t: dict) -> str:
    k, n = t["oracle_optimal_windows"], t["windows"]
    frac = "—" if t["fraction_of_oracle"] is None else f"{t['fraction_of_oracle']:.3f}"
    if k == n:
        return frac
    return f"{frac} ({k}/{n}; oracle greedy + repair in {n - k}: not an optimum)"


def window_table(by_window: dict[tuple, dict], rows: list[dict]) -> list[str]:
    """One line per window with a capacity: feasible?, deadlines no schedule can keep, the oracle's basis."""
    greenml = {(r["zone"], r["window_start"]): r for r in rows
               if r["capacity"] and r["policy"] == "greenml" and r["forecast"] == "perfect"}
    md = ["Windows with a capacity (60 % of the peak): is every deadline keepable?", "",
          "| zone | window | GPUs | jobs | feasible | deadlines no schedule can meet | oracle | oracle met "
          "| greenml (perfect) met |", "|---|---|---|---|---|---|---|---|---|"]
    for (zone, cap, ws), o in sorted(by_window.items()):
        if not cap:
            continue
        feasible = {"feasible": "yes", "infeasible": "no"}.get(o["feasibility"], o["feasibility"])
        basis = o["oracle_basis"] + (f" ({o['oracle_fallback_reason']})" if o["oracle_fallback_reason"] else "")
        g = greenml.get((zone, ws))
        md.append(f"| {zone} | {ws[:10]} | {o['capacity_gpus']} | {o['jobs']} | {feasible} | "
                  f"{'—' if o['fewest_misses'] is None else o['fewest_misses']} | {basis} | {o['deadlines_met']} | "
                  f"{g['deadlines_met'] if g else '—'} |")
    return md


def forecast_table(rows: list[dict], agg: dict, oracle: dict) -> tuple[list[dict], list[str]]:
    """Per zone and imperfect forecast (no capacity, greenml): fraction of the oracle kept, next
    to the forecast's MAE and rank correlation over the same windows, and the goal's verdict."""
    pooled: dict[tuple, dict] = {}
    windows: dict[str, set] = {}
    for r in rows:
        if "quality" not in r:
            continue
        q = pooled.setdefault((r["zone"], r["forecast"]), {"abs_err": {h: [0.0, 0] for h in QUALITY_LEADS_H},
                                                           "spearman_24h": [0.0, 0]})
        for h in QUALITY_LEADS_H:
            e = r["quality"]["abs_err"][h]
            q["abs_err"][h][0] += e[0]
            q["abs_err"][h][1] += e[1]
        q["spearman_24h"][0] += r["quality"]["spearman_24h"][0]
        q["spearman_24h"][1] += r["quality"]["spearman_24h"][1]
        windows.setdefault(r["zone"], set()).add(r["window_start"])
    out = []
    for (zone, fc), q in sorted(pooled.items()):
        g, rn, *_ = agg[(zone, False, fc, "greenml")]
        o = oracle.get((zone, False))
        frac = (1 - g / rn) / o if rn and o else None
        need = GOAL_RATIO if zone in GOAL_ZONES else FLOOR_RATIO
        out.append({"zone": zone, "forecast": fc, "windows": len(windows[zone]),
                    "oracle_savings_percent": round(100 * o, 2) if o is not None else None,
                    "fraction_of_oracle": round(frac, 3) if frac is not None else None,
                    **{f"mae_{h}h": round(e[0] / e[1], 1) if e[1] else None for h, e in q["abs_err"].items()},
                    "spearman_24h": round(q["spearman_24h"][0] / q["spearman_24h"][1], 3) if q["spearman_24h"][1] else None,
                    "goal": need, "goal_met": None if frac is None else bool(frac >= need),
                    "short_by": None if frac is None else round(max(0.0, need - frac), 3)})
    md = ["Forecast quality vs savings kept (no capacity, policy greenml; issue 14 goal 3: >= "
          f"{GOAL_RATIO} of the oracle in {', '.join(GOAL_ZONES)}, >= {FLOOR_RATIO} in every zone):", "",
          "| zone | windows | oracle saves | forecast | fraction of oracle | MAE 12 h | MAE 24 h | MAE 48 h | "
          "Spearman 24 h | goal |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t in out:
        verdict = "—" if t["goal_met"] is None else ("met" if t["goal_met"] else f"missed by {t['short_by']:.3f}")
        goal = f">= {t['goal']}: {verdict}" if t["forecast"] == "builtin" else "—"
        md.append(f"| {t['zone']} | {t['windows']} | {t['oracle_savings_percent']}% | {t['forecast']} | "
                  f"{t['fraction_of_oracle']} | {t['mae_12h']} | {t['mae_24h']} | {t['mae_48h']} | "
                  f"{t['spearman_24h']} | {goal} |")
    md.append("\nMAE in the series' own units (gCO2e/kWh; WattTime: marginal MOER), at origins every "
              f"{QUALITY_EVERY.total_seconds() / 3600:g} h of each window's arrivals; lead h = the slot starting "
              "h minus one slot after the origin.")
    return out, md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny run: DE, one window, 12 jobs")
    p.add_argument("--zones", nargs="+", default=list(ZONES), choices=ZONES)
    p.add_argument("--years", nargs="+", type=int, default=list(YEARS))
    p.add_argument("--windows", type=int, default=4, help="two-week windows per zone (one per year, up to 4)")
    p.add_argument("--jobs", type=int, default=120, help="jobs per window")
    p.add_argument("--policies", nargs="+", default=list(POLICIES))
    p.add_argument("--forecasts", nargs="+", default=list(FORECASTS), choices=FORECASTS)
    p.add_argument("--capacity", nargs="+", type=lambda s: s.lower() in ("1", "true", "yes"), default=[False, True],
                   help="run without (false) and/or with (true) the GPU capacity")
    p.add_argument("--no-neso", action="store_true")
    p.add_argument("--no-held-out", action="store_true", help="skip the held-out series (LWA 2020, NESO 2023, WattTime)")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    if args.quick:
        args.zones, args.windows, args.jobs = ["DE"], 1, 12
        args.forecasts, args.policies, args.capacity, args.no_neso = ["perfect", "noise5"], ["run-now", "lwa", "greenml"], [False, True], True
        args.no_held_out = True
    needed = ["cluster_traces/philly_2017_job_runtimes_via_alibaba_v2020_analysis.csv",
              "cluster_traces/alibaba_gpu_v2023_openb_pods.csv"] + \
             [f"carbon_intensity/electricitymaps_{z}_hourly_2021-2024.csv" for z in args.zones]
    missing = [n for n in needed if data_file(n) is None]
    if missing:
        print(f"skipped: shared data not found: {missing}")
        return 0
    todo = cases(args)
    print(f"{len(todo)} simulations: zones {args.zones}, {args.windows} two-week window(s) each, {args.jobs} jobs per "
          f"window, forecasts {args.forecasts}, capacity {args.capacity}, {args.workers} worker(s)", flush=True)
    t0 = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for i, r in enumerate(pool.map(run_case, todo, chunksize=4), start=1):
            rows.append(r)
            if i % 20 == 0 or i == len(todo):
                print(f"  {i}/{len(todo)} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    table, quality, md = summarise(rows)
    print(md)
    write_result("shifting_quick" if args.quick else "shifting",
                 {"args": vars(args), "wall_seconds": round(time.perf_counter() - t0, 1),
                  "sampling": f"{args.windows} two-week window(s) per zone, {args.jobs} jobs each", "table": table,
                  "forecast_quality": quality, "runs": rows}, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
