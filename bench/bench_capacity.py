"""Benchmark: planning under a GPU capacity (issue 14) -- speed, deadlines, emissions vs the MILP.

1. Speed: greenml.planning.shifting.plan for 10,000 waiting jobs x 2,016 five-minute slots
   (7 days) with a capacity limit -- bench_planner.py's job mix (Philly durations, 1-8
   GPUs, half interruptible) -- at three capacities: generous (1/4 of the GPUs asked for,
   bench_planner's), tight (1/12) and overloaded (1/40: the demand bound proves that no
   schedule keeps every deadline, so the repair runs and flags jobs at risk). Median of
   a few runs; jobs at risk; whether the plan verifies (capacity never exceeded).
2. Quality: small instances (20-40 jobs, 72 one-hour slots of Electricity Maps DE 2021-24
   intensity, 1-8 GPUs, 1-12 h, slack 2-24 h, half interruptible, a 24- or 16-GPU
   cluster), the planner against the exact optimum (planning.capacity.optimum, HiGHS):
   emissions ratio, jobs flagged at risk although a schedule exists, and how often the
   greedy alone (before the repair) left a job without room; instances where no schedule
   keeps every deadline are counted apart, with the fewest deadlines missed at best
   (planning.capacity.fewest_misses), and left out of the ratios (no optimum to compare).
3. The issue's workload in the simulator: 200 jobs over 28 days, 24 GPUs, 1 h steps,
   perfect forecast, DE / GB / US-CAL-CISO / US-MIDA-PJM from March, April and May 2023:
   deadlines met by greenml and by the oracle (the MILP optimum), savings of each, and
   whether each late greenml job was flagged DeadlineAtRisk when it arrived; whether the
   job set is feasible, the oracle's basis (the MILP optimum, or the planner's greedy +
   repair where the MILP has no schedule) and greenml's savings as a fraction of the
   oracle's only where the oracle is an optimum.

Never asserts a time. Writes bench/results/capacity.json and capacity.md.
Run: python bench/bench_capacity.py [--quick] [--parts speed quality issue]
(parts not run are carried over from the existing capacity.json, and the file says which).
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import _common  # noqa: E402
from bench import bench_planner  # noqa: E402
from greenml.planning import capacity as cp  # noqa: E402
from greenml.planning import shifting as sh  # noqa: E402

ZONES = {"DE": "electricitymaps_DE_hourly_2021-2024.csv", "GB": "electricitymaps_GB_hourly_2021-2024.csv",
         "US-CAL-CISO": "electricitymaps_US-CAL-CISO_hourly_2021-2024.csv",
         "US-MIDA-PJM": "electricitymaps_US-MIDA-PJM_hourly_2021-2024.csv"}


def speed(n_jobs: int, days: int, divisors: Sequence[float], repeats: int) -> list[dict]:
    runtimes, _ = bench_planner.load_runtimes_s()
    forecast, _ = bench_planner.load_intensity(days)
    jobs = bench_planner.make_jobs(n_jobs, forecast.size, runtimes)
    asked = sum(j.gpus for j in jobs)
    rows = []
    for div in divisors:
        cap = asked / div
        times = []
        for _ in range(repeats):
            gc.collect()
            t0 = time.perf_counter()
            plans = sh.plan(jobs, forecast, step_hours=bench_planner.STEP_HOURS, capacity_gpus=cap)
            times.append(time.perf_counter() - t0)
        v = cp.verify(jobs, plans, cap)
        proof = cp.demand_bound(jobs, cap)
        row = {"jobs": n_jobs, "slots": int(forecast.size), "capacity_gpus": round(cap, 1),
               "capacity": f"1/{div:g} of GPUs asked", "median_s": statistics.median(times), "min_s": min(times),
               "repeats": repeats, "at_risk": sum(p.at_risk for p in plans),
               "over_capacity_slots": len(v.over), "proven_infeasible": proof is not None}
        rows.append(row)
        print(f"speed: {n_jobs} jobs x {forecast.size} slots, capacity {cap:,.0f} ({row['capacity']}): "
              f"median {row['median_s']:.2f} s, at risk {row['at_risk']}, over capacity {len(v.over)} slots, "
              f"proven infeasible {row['proven_infeasible']}")
    return rows


def _intensity(zone: str) -> np.ndarray | None:
    p = _common.data_file(f"carbon_intensity/{ZONES[zone]}")
    if p is None:
        return None
    with p.open(newline="") as fh:
        return np.array([float(r["ci_lca_gco2eq_per_kwh"]) for r in csv.DictReader(fh)])


def small_instance(rng: np.random.Generator, series: np.ndarray, slots: int = 72) -> tuple[list[sh.JobSpec], np.ndarray]:
    jobs = []
    for i in range(int(rng.integers(20, 41))):
        k, e, slack, g = int(rng.integers(1, 13)), int(rng.integers(0, slots - 36)), int(rng.integers(2, 25)), int(rng.integers(1, 9))
        jobs.append(sh.JobSpec(f"j{i}", k, min(slots, e + k + slack), e, g, 0.3 * g, bool(rng.random() < 0.5), 1))
    o = int(rng.integers(0, series.size - slots))
    return jobs, series[o:o + slots]


def quality(n: int, caps: Sequence[int], seed: int = 0, time_limit_s: float = 30.0) -> list[dict]:
    series = _intensity("DE")
    if series is None:
        rng0 = np.random.default_rng(1)
        series = 400 + 150 * np.sin(np.arange(24 * 365) * 2 * np.pi / 24) + rng0.normal(0, 20, 24 * 365)
    rows = []
    for cap in caps:
        rng = np.random.default_rng(seed + cap)
        got = dict(instances=0, feasible=0, infeasible=0, undecided=0, flagged_when_feasible=0,
                   greedy_left_a_job_out=0, repaired=0)
        fewest: list[int | None] = []      # per infeasible instance: deadlines missed at best (None: undecided)
        ratios, g_sum, o_sum, plan_s, milp_s = [], 0.0, 0.0, [], []
        for _ in range(n):
            jobs, f = small_instance(rng, series)
            got["instances"] += 1
            zones = sh._zones(f, 200)
            greedy = sh._Planner(zones, 1.0, np.full(200, float(cap)))
            _, failed = sh._greedy_pass(greedy, jobs, sh.urgency_order(jobs))
            t0 = time.perf_counter()
            plans = sh.plan(jobs, f, step_hours=1.0, capacity_gpus=cap)
            plan_s.append(time.perf_counter() - t0)
            opt = cp.optimum(jobs, f, step_hours=1.0, capacity_gpus=cap, time_limit_s=time_limit_s)
            milp_s.append(opt.seconds)
            if opt.status != "optimal":
                got["infeasible" if opt.status == "infeasible" else "undecided"] += 1
                if opt.status == "infeasible":
                    fewest.append(cp.fewest_misses(jobs, capacity_gpus=cap, time_limit_s=time_limit_s).fewest)
                continue
            got["feasible"] += 1
            got["greedy_left_a_job_out"] += bool(failed)
            if any(p.at_risk for p in plans) or not cp.verify(jobs, plans, cap).ok:
                got["flagged_when_feasible"] += 1
                continue
            got["repaired"] += bool(failed)
            g = sum(p.grams for p in plans)
            ratios.append(g / opt.grams)
            g_sum, o_sum = g_sum + g, o_sum + opt.grams
        r = np.array(ratios) if ratios else np.array([np.nan])
        row = {"capacity_gpus": cap, **got, "fewest_misses_when_infeasible": fewest, "emissions_ratio_total": g_sum / o_sum if o_sum else float("nan"),
               "ratio_mean": float(r.mean()), "ratio_p95": float(np.percentile(r, 95)), "ratio_max": float(r.max()),
               "plan_s_mean": statistics.fmean(plan_s), "plan_s_max": max(plan_s),
               "milp_s_mean": statistics.fmean(milp_s)}
        rows.append(row)
        print(f"quality, {cap} GPUs: {got}; emissions / optimum {row['emissions_ratio_total']:.4f} "
              f"(per instance mean {row['ratio_mean']:.4f}, p95 {row['ratio_p95']:.4f}, max {row['ratio_max']:.4f}); "
              f"plan {row['plan_s_mean'] * 1e3:.0f} ms mean, MILP {row['milp_s_mean']:.1f} s mean")
    return rows


def issue_jobs(seed: int, start: datetime) -> list:
    """The issue's workload: 200 jobs over 28 days, 1-8 GPUs, 1-12 h, slack 2-24 h, half interruptible."""
    from greenml.sim.jobs import SimJob

    rng = np.random.default_rng(seed)
    out = []
    for i in range(200):
        sub = start + timedelta(hours=int(rng.integers(0, 27 * 24)))
        dur = timedelta(hours=int(rng.integers(1, 13)))
        slack = timedelta(hours=int(rng.integers(2, 25)))
        out.append(SimJob(f"j{i:03d}", sub, dur, sub + dur + slack, gpus=int(rng.integers(1, 9)),
                          interruptible=bool(rng.random() < 0.5)))
    return out


def issue_workload(months: Sequence[int], zones: Sequence[str]) -> list[dict]:
    from greenml.signals.file import load_intensity_csv
    from greenml.sim import forecasts
    from greenml.sim.shifting import ORACLE_OPTIMAL, SimPolicy, simulate
    import greenml.services.board as board

    rows = []
    for zone in zones:
        p = _common.data_file(f"carbon_intensity/{ZONES[zone]}")
        if p is None:
            continue
        actual = load_intensity_csv(p)
        for month in months:
            jobs = issue_jobs(month, datetime(2023, month, 1, tzinfo=timezone.utc))
            flagged_at_arrival: set[str] = set()
            seen: set[str] = set()
            real_plan = board.shifting.plan

            def spy(specs, *a, **k):
                plans = real_plan(specs, *a, **k)
                for s, pl in zip(specs, plans):
                    if s.name not in seen and pl.at_risk:
                        flagged_at_arrival.add(s.name.split("/")[-1])
                    seen.add(s.name)
                return plans

            board.shifting.plan = spy
            try:
                g = simulate(jobs, actual, forecasts.perfect(actual),
                             SimPolicy(name="greenml", step=timedelta(hours=1), capacity_gpus=24))
            finally:
                board.shifting.plan = real_plan
            o = simulate(jobs, actual, forecasts.perfect(actual),
                         SimPolicy(name="oracle", step=timedelta(hours=1), capacity_gpus=24))
            late = [j.name for j in g.jobs if not j.deadline_met]
            gs, os_ = g.summary(), o.summary()
            optimal = os_["oracle_basis"] in ORACLE_OPTIMAL
            row = {"zone": zone, "month": f"2023-{month:02d}", "greenml_deadlines_met": gs["deadlines_met"],
                   "greenml_late": late, "late_flagged_at_arrival": sorted(set(late) & flagged_at_arrival),
                   "greenml_savings_percent": gs["savings_percent"], "greenml_feasibility": gs["feasibility"],
                   "oracle_deadlines_met": os_["deadlines_met"], "oracle_savings_percent": os_["savings_percent"],
                   "oracle_notes": o.notes, "greenml_wall_s": round(g.wall_seconds, 2),
                   "feasibility": os_["feasibility"], "fewest_misses": os_["fewest_misses"],
                   "oracle_basis": os_["oracle_basis"], "oracle_fallback_reason": os_["oracle_fallback_reason"],
                   # only against an optimum: against the greedy fallback a fraction says nothing
                   "greenml_fraction_of_oracle": round(gs["savings_percent"] / os_["savings_percent"], 3)
                   if optimal and os_["savings_percent"] > 0 else None}
            rows.append(row)
            print(f"issue workload {zone} 2023-{month:02d}: greenml met {gs['deadlines_met']}/200 "
                  f"(late {late}, flagged at arrival {row['late_flagged_at_arrival']}), saved {gs['savings_percent']:.2f} %; "
                  f"oracle ({os_['oracle_basis']}) met {os_['deadlines_met']}/200, saved {os_['savings_percent']:.2f} %; "
                  f"feasible: {os_['feasibility']}, fewest misses {os_['fewest_misses']}")
    return rows


def markdown(payload: dict) -> str:
    m = payload["machine"] if "machine" in payload else _common.machine()
    md = ["# Planning under a GPU capacity (issue 14)", "",
          f"Machine: {m['cpus']} CPUs, Python {m['python']}, {m['platform']}. Never asserted: figures only.", "",
          "## Speed: 10,000 waiting jobs x 2,016 slots (5 min, 7 days)", "",
          "| capacity | GPUs | median s | min s | at risk | over-capacity slots | proven infeasible |",
          "|---|---:|---:|---:|---:|---:|---|"]
    md += [f"| {r['capacity']} | {r['capacity_gpus']:,.0f} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['at_risk']} "
           f"| {r['over_capacity_slots']} | {r['proven_infeasible']} |" for r in payload["speed"]]
    md += ["", "## Emissions vs the exact optimum (MILP, HiGHS) on small instances", "",
           "| GPUs | instances | feasible | infeasible (deadlines missed at best, each) | undecided (MILP time limit) "
           "| greedy alone left a job out | flagged although feasible | "
           "emissions / optimum (total) | per-instance mean | p95 | max | plan ms (mean) | MILP s (mean) |",
           "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['capacity_gpus']} | {r['instances']} | {r['feasible']} | {_infeasible_cell(r)} | {r['undecided']} "
           f"| {r['greedy_left_a_job_out']} "
           f"| {r['flagged_when_feasible']} | {r['emissions_ratio_total']:.4f} | {r['ratio_mean']:.4f} "
           f"| {r['ratio_p95']:.4f} | {r['ratio_max']:.4f} | {1e3 * r['plan_s_mean']:.0f} | {r['milp_s_mean']:.1f} |"
           for r in payload["quality"]]
    md += ["", "Emissions ratios over the feasible instances only: where no schedule keeps every deadline "
           "there is no optimum to compare with. Infeasible: the deadlines missed at best per instance "
           "(planning.capacity.fewest_misses; ?: not decided within the time limit). Undecided: the MILP "
           "neither found a schedule nor proved there is none within its time limit (depends on the machine's load)."]
    if payload.get("issue"):
        md += ["", "## The issue's workload (200 jobs, 28 days, 24 GPUs, 1 h steps, perfect forecast)", "",
               "| zone | month | feasible | greenml met | late | late flagged at arrival | greenml saved % | oracle "
               "| oracle met | oracle saved % | greenml / oracle savings |",
               "|---|---|---|---:|---|---|---:|---|---:|---:|---:|"]
        md += [f"| {r['zone']} | {r['month']} | {_feasible_cell(r)} | {r['greenml_deadlines_met']}/200 "
               f"| {', '.join(r['greenml_late']) or '—'} "
               f"| {', '.join(r['late_flagged_at_arrival']) or '—'} | {r['greenml_savings_percent']:.2f} "
               f"| {_basis_cell(r)} | {r['oracle_deadlines_met']}/200 | {r['oracle_savings_percent']:.2f} "
               f"| {_fraction_cell(r)} |" for r in payload["issue"]]
        md += ["", "feasible: does a schedule keep all 200 deadlines under the 24 GPUs (exact MILP on the slot "
               "grid); no: how many deadlines no schedule can keep. The oracle is the MILP optimum where one "
               "exists (milp-optimal); milp-time-limit: the MILP's best schedule when the time limit struck (its gap "
               "to the solver's bound in capacity.json, oracle_notes); greedy-fallback: the planner's greedy + repair. "
               "Neither is an optimum, so no fraction is given there."]
    if payload.get("carried_over"):
        md += ["", f"Carried over from the previous run (not rerun): {', '.join(payload['carried_over'])}."]
    return "\n".join(md) + "\n"


def _infeasible_cell(r: dict) -> str:
    each = r.get("fewest_misses_when_infeasible")
    if each is None:          # a result written before the count existed
        return str(r["infeasible"])
    return f"{r['infeasible']} ({', '.join('?' if f is None else str(f) for f in each) or '—'})"


def _feasible_cell(r: dict) -> str:
    f = r.get("feasibility", "—")
    if f != "infeasible":
        return {"feasible": "yes"}.get(f, f)
    return f"no ({'?' if r['fewest_misses'] is None else r['fewest_misses']} cannot be met)"


def _basis_cell(r: dict) -> str:
    b = r.get("oracle_basis") or "—"
    return f"{b} ({r['oracle_fallback_reason']})" if r.get("oracle_fallback_reason") else b


def _fraction_cell(r: dict) -> str:
    f = r.get("greenml_fraction_of_oracle")
    if f is not None:
        return f"{f:.3f}"
    return "— (oracle not an optimum)" if r.get("oracle_basis") == "greedy-fallback" else "—"


PARTS = ("speed", "quality", "issue")


def run(quick: bool = False, parts: Sequence[str] = PARTS) -> dict:
    """Measure and write capacity.json/.md under _common.RESULTS (GREENML_BENCH_OUT or --out);
    parts not in ``parts`` are carried over from the capacity.json already there."""
    if quick:
        todo = {"speed": lambda: speed(300, 1, (4, 40), 1), "quality": lambda: quality(4, (24,), time_limit_s=10.0),
                "issue": lambda: issue_workload((3,), ("DE",))}
    else:
        todo = {"speed": lambda: speed(10_000, 7, (4, 12, 40), 3), "quality": lambda: quality(40, (24, 16)),
                "issue": lambda: issue_workload((3, 4, 5), tuple(ZONES))}
    old = _common.RESULTS / "capacity.json"
    previous = json.loads(old.read_text()) if old.is_file() and set(parts) != set(PARTS) else {}
    payload = {name: todo[name]() if name in parts else previous.get(name, []) for name in PARTS}
    payload["carried_over"] = [f"{name} ({previous.get('machine', {}).get('platform', 'unknown machine')})"
                               for name in PARTS if name not in parts and previous.get(name)]
    _common.write_result("capacity", payload, markdown({**payload, "machine": _common.machine()}))
    return payload


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="output dir (default bench/results)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="which parts to run (the others are carried over from the existing capacity.json)")
    a = ap.parse_args(argv)
    if a.out is not None:
        _common.RESULTS = a.out
    run(a.quick, a.parts)


if __name__ == "__main__":
    main()
