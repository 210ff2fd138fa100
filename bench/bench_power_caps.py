"""Benchmark: shifting alone, capping alone and both, on the shared workloads.

Carbon intensity: Electricity Maps hourly life-cycle intensity 2021-2024 for DE, GB,
US-CAL-CISO, US-MIDA-PJM (../shared/data/carbon_intensity; attribution "Electricity Maps").
Workloads: as bench/bench_shifting.py — durations from the Philly runtimes (Jeon et al.,
ATC'19), GPU counts from the Alibaba GPU pods of 2023 (Weng et al., ATC'23), arrivals uniform
over a two-week window (one per year, random start day, seeded), deadline = submit +
duration + {2, 8, 24} h, half interruptible. Caps: carbon-aware over each GPU model's whole
curve (planning.power: Zeus NSDI'23 medians; ``generic`` for models outside the sweep, here
H100). Forecasts: perfect, and 10 % Gaussian noise. No GPU capacity limit. shifting and both
are the operator's replay (greenml.sim.shifting.simulate, policy greenml: the plan board
replans every 30-minute step on the forecast issued then; a carbon-aware job runs through the
TrainingJob controller's service calls, at the published cap's speed and draw); capping is
planned at submit (a counterfactual: start now, one cap); shifting / both planned once at
submit are kept beside them. Accounted on the actual series (greenml.sim.power).

    python bench/bench_power_caps.py          # writes bench/results/power_caps.{json,md}
    python bench/bench_power_caps.py --quick
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import data_file, write_result  # noqa: E402
from bench.bench_shifting import WINDOW, ZONES, _zone_series, make_jobs  # noqa: E402

from greenml.sim import forecasts  # noqa: E402
from greenml.sim.power import AT_SUBMIT, STRATEGIES, CapSimConfig, simulate_caps  # noqa: E402

YEARS = (2021, 2022, 2023, 2024)
MODELS = ("A40", "V100", "RTX6000", "H100")
FORECASTS = ("perfect", "noise10")


def planner_speed(n_jobs: int, capacity: float | None, seed: int = 0) -> dict:
    """The board's planning cost with caps: shifting.plan alone vs plan_with_caps for n
    carbon-aware jobs (A100, 150-400 W) over a 7-day, 5-minute forecast (2,016 slots)."""
    from greenml.planning import power, shifting

    rng = np.random.default_rng(seed)
    t = 2016
    f = 300 + 150 * np.sin(np.arange(t) * 2 * np.pi / 288) + rng.normal(0, 20, t)
    levels = power.CapPolicy("carbonAware", 150, 400, 400, power.curve_for("A100")).levels()
    jobs = []
    for i in range(n_jobs):
        k = int(rng.integers(6, 288))
        jobs.append(shifting.JobSpec(f"j{i}", k, min(t, k + int(rng.integers(12, 1500))), gpus=int(rng.integers(1, 9)),
                                     power_kw=1.0, interruptible=bool(i % 2), min_run=1 if i % 4 == 1 else 6))
    t0 = time.perf_counter()
    shifting.plan(jobs, f, step_hours=5 / 60, capacity_gpus=capacity)
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    power.plan_with_caps(jobs, f, step_hours=5 / 60, capacity_gpus=capacity, levels={j.name: levels for j in jobs})
    return {"jobs": n_jobs, "capacity_gpus": capacity, "plain_seconds": round(plain, 3),
            "with_caps_seconds": round(time.perf_counter() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=150, help="jobs per window")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if data_file("carbon_intensity/electricitymaps_DE_hourly_2021-2024.csv") is None:
        print("skipped: ../shared/data not found")
        return 0
    zones, years, n = (ZONES[:1], YEARS[:1], 20) if args.quick else (ZONES, YEARS, args.jobs)
    rng = np.random.default_rng(args.seed)
    rows = []
    t0 = time.perf_counter()
    for zone in zones:
        actual = _zone_series(zone)
        for year in years:
            day = int(rng.integers(0, 365 - 30))
            start = datetime(year, 1, 1, tzinfo=timezone.utc) + timedelta(days=day)
            jobs = make_jobs(start, WINDOW, n, int(rng.integers(0, 2**31)))
            for fc in FORECASTS:
                forecaster = forecasts.perfect(actual) if fc == "perfect" else forecasts.noisy(actual, 0.10, year)
                for model in MODELS:
                    s = simulate_caps(jobs, actual, forecaster, CapSimConfig(gpu_model=model, forecast_label=fc)).summary()
                    rows.append({"zone": zone, "year": year, "start": start.date().isoformat(), "forecast": fc,
                                 "gpu_model": model, **{k: v for k, v in s["strategies"].items()}})
    wall = time.perf_counter() - t0
    speed = [planner_speed(n_jobs, cap) for n_jobs in ((100,) if args.quick else (100, 1000)) for cap in (None, 400)]

    def agg(sel, strategy, key):
        g = sum(r[strategy]["grams"] for r in sel)
        base = sum(r["run-now"]["grams"] for r in sel)
        if key == "savings":
            return 100 * (base - g) / base
        if key == "energy":
            e, eb = sum(r[strategy]["kwh"] for r in sel), sum(r["run-now"]["kwh"] for r in sel)
            return 100 * (e - eb) / eb
        if key == "met":
            return sum(r[strategy]["deadlines_met"] for r in sel)
        if key == "stretch":
            return float(np.mean([r[strategy]["mean_stretch"] for r in sel]))
        raise KeyError(key)

    table = []
    for fc in FORECASTS:
        for model in MODELS:
            for zone in zones:
                sel = [r for r in rows if r["forecast"] == fc and r["gpu_model"] == model and r["zone"] == zone]
                table.append({"forecast": fc, "gpu_model": model, "zone": zone, "jobs": n * len(sel),
                              **{f"{s}_savings_percent": round(agg(sel, s, "savings"), 2) for s in STRATEGIES[1:]},
                              **{f"{s}_energy_change_percent": round(agg(sel, s, "energy"), 2) for s in STRATEGIES[1:]},
                              **{f"{s}_deadlines_met": agg(sel, s, "met") for s in STRATEGIES[1:]},
                              **{f"{s}_savings_percent": round(agg(sel, s, "savings"), 2) for s in AT_SUBMIT},
                              "both_mean_stretch": round(agg(sel, "both", "stretch"), 3)})
    md = ["# Power caps: shifting alone, capping alone, both", "",
          f"{n} jobs per two-week window, one window per year ({', '.join(map(str, years))}) per zone; "
          "carbon-aware caps over each GPU's whole Zeus curve (H100: the generic curve); no capacity limit; "
          "savings vs running at submit uncapped, on the actual series. shifting and both: the operator's replay "
          "(plan board + decide() every 30-minute step on the forecast issued then; capped jobs through the "
          "TrainingJob controller's service calls: capped_view, PlanBoard.cap_for, capped_segment, capped_usage); "
          "capping: start at submit with one cap (planned at submit). "
          f"Measured by bench/bench_power_caps.py in {wall:.0f} s.", "",
          "| forecast | GPU curve | zone | shifting | capping | both | energy (both) | run time × (both) | deadlines met (both) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        md.append(f"| {t['forecast']} | {t['gpu_model']} | {t['zone']} | {t['shifting_savings_percent']:.1f} % | "
                  f"{t['capping_savings_percent']:.1f} % | {t['both_savings_percent']:.1f} % | "
                  f"{t['both_energy_change_percent']:+.1f} % | {t['both_mean_stretch']:.3f} | "
                  f"{t['both_deadlines_met']}/{t['jobs']} |")
    md += ["", "Replayed vs planned once at submit (each job followed as planned at submit: no replan, no "
           "forecast update; the capped plans, at submit and the board's, sized on the work itself, not on whole "
           "slots):", "",
           "| forecast | GPU curve | zone | shifting (replay) | shifting (at submit) | both (replay) | both (at submit) |",
           "|---|---|---|---|---|---|---|"]
    md += [f"| {t['forecast']} | {t['gpu_model']} | {t['zone']} | {t['shifting_savings_percent']:.1f} % | "
           f"{t['shifting-at-submit_savings_percent']:.1f} % | {t['both_savings_percent']:.1f} % | "
           f"{t['both-at-submit_savings_percent']:.1f} % |" for t in table]
    md += ["", "Planner cost (the board's replan; 7-day 5-minute forecast, every job carbon-aware, A100 150-400 W):", "",
           "| jobs | GPU capacity | shifting.plan | with caps (plan_with_caps) |", "|---|---|---|---|"]
    md += [f"| {x['jobs']} | {x['capacity_gpus'] or 'none'} | {x['plain_seconds']:.2f} s | {x['with_caps_seconds']:.2f} s |"
           for x in speed]
    write_result("power_caps", {"planner_speed": speed, "jobs_per_window": n, "years": list(years), "zones": list(zones), "models": list(MODELS),
                                "forecasts": list(FORECASTS), "wall_seconds": round(wall, 1), "table": table, "rows": rows},
                 "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
