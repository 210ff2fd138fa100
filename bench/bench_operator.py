"""Benchmark 4: the operator's footprint under load, and reliability figures.

**Footprint.** The real operator (``python -m greenml run``, a subprocess) against the
kmock API emulator (in this process) with N = 100 / 1,000 / 5,000 TrainingJobs created
at once. The objects exist before the operator starts (as after a restart; creating them one by
one would measure the emulator, whose per-request cost grows with its history). Measured:
time from the operator's start until every object has a plan in status,
the operator's CPU seconds (utime + stime from /proc) and peak RSS (VmHWM) over that
time, errors in its log, duplicate Jobs per TrainingJob, repeated Job POSTs (answered 409
and adopted) — and a spot-check: 20
random objects' plans against the same service path run offline (a fresh ``PlanBoard``
on the same forecast at the plan's ``computedAt``; capacity is unlimited so each plan
depends on its own job only): same windows, and planned grams within 1 % of offline.

Inputs: a synthetic day-shaped intensity file (400 ± 150 gCO2e/kWh over 24 h, 5-min
slots — the load, not the grid, is measured here); jobs of 1-8 h with 2-24 h slack,
half interruptible (seeded). Operator settings: step 5m, horizon 2d, tick 60 s.

InferenceBudgets: the issue asks for 500 alongside; there is no InferenceBudget
controller in the operator yet, so none are created (reported as such).

**Reliability.** A year of simulated replay (Electricity Maps DE 2023, when present)
under random provider outages and operator restarts — the scenario of
tests/unit/test_sim_reliability.py — with the faults injected by kind, jobs, deadlines
met and savings; plus the load runs' duplicate and error counts.

Run: python bench/bench_operator.py [--sizes 100,1000,5000] [--skip-year]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import _common  # noqa: E402

TJ = "greenml.io/v1alpha1/trainingjobs"
NS = "load"
SPOT_CHECKS = 20


# ------------------------------------------------------------------ process metrics
def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


# ------------------------------------------------------------------ inputs
def intensity_csv(path: Path, start: datetime) -> Path:
    lines = ["datetime_utc,gco2_per_kwh"]
    for i in range(3 * 288):
        t = start + timedelta(minutes=5 * i)
        v = 400.0 + 150.0 * math.sin(2 * math.pi * (i % 288) / 288.0)
        lines.append(f"{t.strftime('%Y-%m-%dT%H:%M:%SZ')},{v:.1f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def body(i: int, rng: random.Random, now: datetime) -> dict[str, Any]:
    duration_h = rng.choice([1, 2, 3, 4, 6, 8])
    slack_h = rng.choice([2, 4, 8, 12, 24])
    return {
        "apiVersion": "greenml.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": f"tj-{i:05d}", "namespace": NS, "uid": f"uid-{i}", "generation": 1,
                     "resourceVersion": "1", "creationTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
        "spec": {
            "schedule": {"estimatedDuration": f"{duration_h}h", "maxDelay": f"{slack_h}h",
                         "interruptible": rng.random() < 0.5},
            "template": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "train", "image": "trainer:1",
                 "resources": {"limits": {"nvidia.com/gpu": rng.choice([1, 2, 4, 8])}}}]}}}},
        },
    }


def operator_env(kubeconfig: Path, intensity: Path) -> dict[str, str]:
    from tests.integration.harness import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENML_")}
    env.update({
        "KUBECONFIG": str(kubeconfig), "GREENML_PROVIDER": "file", "GREENML_INTENSITY_FILE": str(intensity),
        "GREENML_DEFAULT_ZONE": "DE", "GREENML_STEP": "5m", "GREENML_HORIZON": "2d",
        "GREENML_SAFETY_MARGIN": "15m", "GREENML_REPLAN_INTERVAL": "15m", "GREENML_TICK_INTERVAL": "60",
        "GREENML_HEALTH_PORT": str(free_port()), "GREENML_METRICS_PORT": str(free_port()),
        "GREENML_LOG_FORMAT": "json", "GREENML_LOG_LEVEL": "WARNING",
    })
    return env


# ------------------------------------------------------------------ one load run
async def _list(session: aiohttp.ClientSession, url: str) -> list[dict]:
    async with session.get(url) as r:
        return (await r.json()).get("items", [])


def count_job_posts(requests: list, posts: dict[str, int]) -> None:
    for r in requests:
        if str(r.method).lower().endswith("post") and r.url.path.endswith("/jobs") and isinstance(r.data, dict):
            name = (r.data.get("metadata") or {}).get("name", "?")
            posts[name] = posts.get(name, 0) + 1


async def trim_history(k: Any, posts: dict[str, int], keep: int = 64) -> None:
    """kmock matches every request against its whole recorded history (quadratic in the
    number of requests): keep only the recent ones, counting Job POSTs before dropping."""
    while True:
        await asyncio.sleep(0.02)
        history = k._requests
        if len(history) > 2 * keep:
            old = history[:-keep]
            count_job_posts(old, posts)
            del history[:len(old)]


async def load_run(n: int, seed: int = 0, timeout_s: float = 1200.0) -> dict[str, Any]:
    import kmock
    from kmock._internal import apps

    from tests.integration.harness import declare_resources, stop_process, write_kubeconfig

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        now = datetime.now(timezone.utc)
        start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        intensity = intensity_csv(tmp / "ci.csv", start)
        async with kmock.KubernetesEmulator() as k, apps.Server(k):
            declare_resources(k)
            url = str(k.url).rstrip("/")
            kubeconfig = write_kubeconfig(tmp / "kubeconfig", url)
            env = operator_env(kubeconfig, intensity)
            # the objects exist before the operator starts (as after a restart): the emulator's
            # per-request cost grows with its history, so N POSTs would measure kmock, not us
            for i in range(n):
                b = body(i, rng, now)
                k.objects[TJ, NS, b["metadata"]["name"]] = b
            log_path = tmp / "operator.log"
            posts: dict[str, int] = {}
            trimmer = asyncio.create_task(trim_history(k, posts))
            t0 = time.monotonic()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "greenml", "run"], env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            try:
                tj_url = f"{url}/apis/greenml.io/v1alpha1/namespaces/{NS}/trainingjobs"
                async with aiohttp.ClientSession() as s:
                    planned, items = 0, []
                    while time.monotonic() - t0 < timeout_s and proc.poll() is None:
                        try:
                            items = await _list(s, tj_url)
                        except (aiohttp.ClientError, asyncio.TimeoutError):   # the emulator is swamped
                            await asyncio.sleep(2.0)
                            continue
                        planned = sum(1 for o in items if ((o.get("status") or {}).get("plan") or {}).get("computedAt"))
                        if planned >= n:
                            break
                        await asyncio.sleep(0.5)
                    all_planned_s = time.monotonic() - t0
                    cpu = proc_cpu_seconds(proc.pid) if proc.poll() is None else math.nan
                    rss = proc_peak_rss_mib(proc.pid) if proc.poll() is None else math.nan
                    jobs = await _list(s, f"{url}/apis/batch/v1/namespaces/{NS}/jobs")
            finally:
                stop_process(proc, timeout=20)
                trimmer.cancel()
            count_job_posts(k._requests, posts)
            logs = log_path.read_text(errors="replace")
        spot = spot_check(items, intensity, rng)
    phases: dict[str, int] = {}
    for o in items:
        ph = (o.get("status") or {}).get("phase", "none")
        phases[ph] = phases.get(ph, 0) + 1
    return {
        "trainingjobs": n, "planned": planned, "seconds_to_plan_all": round(all_planned_s, 2) if planned >= n else None,
        "operator_cpu_seconds": round(cpu, 2), "operator_peak_rss_mib": round(rss, 1),
        "jobs_created": len(jobs), "duplicate_jobs": duplicate_jobs(jobs),
        "job_posts_adopted_on_409": sum(c - 1 for c in posts.values() if c > 1),
        "handler_errors_in_log": logs.count("failed with an exception"),
        "operator_died": proc.returncode not in (None, 0, -15),
        "phases": phases, "spot_check": spot,
    }


def duplicate_jobs(jobs: list[dict]) -> int:
    """Jobs beyond the first per owning TrainingJob (by the owner label)."""
    owners: dict[str, int] = {}
    for j in jobs:
        owner = ((j.get("metadata") or {}).get("labels") or {}).get("greenml.io/trainingjob", "?")
        owners[owner] = owners.get(owner, 0) + 1
    return sum(c - 1 for c in owners.values() if c > 1)


def spot_check(items: list[dict], intensity: Path, rng: random.Random) -> dict[str, Any]:
    """Each sampled object's windows vs the same service path run offline at its computedAt."""
    from greenml.services.board import PlanBoard
    from greenml.services.trainingjob import Defaults, Progress, resolve
    from greenml.signals import FileSource
    from greenml.timeutil import parse_duration, parse_time

    defaults = Defaults(zone="DE", safety_margin=parse_duration("15m"), step=parse_duration("5m"))
    planned = [o for o in items if ((o.get("status") or {}).get("plan") or {}).get("computedAt")]
    sample = rng.sample(planned, min(SPOT_CHECKS, len(planned)))
    same, within, worst_gap = 0, 0, 0.0
    for o in sample:
        plan = o["status"]["plan"]
        at = parse_time(plan["computedAt"])
        board = PlanBoard(defaults, FileSource(str(intensity)), replan_interval=parse_duration("15m"),
                          horizon=parse_duration("2d"), capacity=None)
        req = resolve(o, defaults)
        board.observe(req, Progress(), running=False)
        offline, _ = board.plan_for(req.key, at)
        online = [(parse_time(w["start"]), parse_time(w["end"])) for w in plan["windows"]]
        mine = list(offline.windows) if offline else []
        same += len(online) == len(mine) and all(abs((a[0] - b[0]).total_seconds()) <= 2.0
                                                 and abs((a[1] - b[1]).total_seconds()) <= 2.0
                                                 for a, b in zip(online, mine))
        # arrivals in a replan storm are planned on the previous replan's grid (board.py), so
        # windows may differ by design; what must hold is the emissions they plan for
        gap = (plan["expectedGrams"] - offline.expected_grams) / max(offline.expected_grams, 1e-9)
        worst_gap = max(worst_gap, gap)
        within += gap <= 0.01
    return {"checked": len(sample), "same_windows": same, "grams_within_1pct": within,
            "worst_grams_gap_percent": round(100 * worst_gap, 3)}


# ------------------------------------------------------------------ a year under faults
def year_under_faults() -> dict[str, Any] | None:
    path = _common.data_file("carbon_intensity/electricitymaps_DE_hourly_2021-2024.csv")
    if path is None:
        return None
    from greenml.signals.file import load_intensity_csv
    from greenml.sim import forecasts
    from greenml.sim import shifting as simshift
    from tests.unit.test_sim_reliability import YEAR, FaultPlan, RestartingController, faulty_forecaster, year_of_jobs

    actual = load_intensity_csv(path, column="ci_lca_gco2eq_per_kwh", source="electricitymaps DE")
    actual = actual.window(YEAR - timedelta(days=1), YEAR + timedelta(days=367))
    out = []
    for seed in (1, 2, 3):
        jobs = year_of_jobs(seed)
        faults = FaultPlan.random(YEAR, YEAR + timedelta(days=365), seed)
        policy = simshift.SimPolicy(name="greenml", step=timedelta(hours=1), horizon=timedelta(days=3))
        original = simshift._controller
        simshift._controller = lambda pol, states, act, fc, t0: RestartingController(pol, fc, act, faults)
        try:
            r = simshift.simulate(jobs, actual, faulty_forecaster(forecasts.noisy(actual, 0.1, seed=7), faults), policy)
        finally:
            simshift._controller = original
        s = r.summary()
        out.append({"seed": seed, "jobs": s["jobs"], "completed": s["completed"], "deadlines_met": s["deadlines_met"],
                    "savings_percent": s["savings_percent"],
                    "faults": {"provider_outages": len(faults.outages),
                               "outage_hours": int(sum((b - a).total_seconds() for a, b in faults.outages) // 3600),
                               "forecasts_refused": faults.refused, "operator_restarts": faults.restarted}})
    return {"data": "Electricity Maps DE hourly 2023 (life-cycle)", "forecast": "actual +-10% noise",
            "step": "1h", "runs": out}


# ------------------------------------------------------------------ main
def markdown(loads: list[dict], year: dict | None) -> str:
    rows = ["| TrainingJobs | planned | s to plan all | operator CPU s | peak RSS MiB | Jobs | duplicate Jobs | "
            "POSTs adopted on 409 | handler errors | spot-check: grams within 1 % of offline |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in loads:
        rows.append(f"| {r['trainingjobs']} | {r['planned']} | {r['seconds_to_plan_all']} | {r['operator_cpu_seconds']} | "
                    f"{r['operator_peak_rss_mib']} | {r['jobs_created']} | {r['duplicate_jobs']} | {r['job_posts_adopted_on_409']} | "
                    f"{r['handler_errors_in_log']} | {r['spot_check']['grams_within_1pct']}/{r['spot_check']['checked']} "
                    f"(worst +{r['spot_check']['worst_grams_gap_percent']} %) |")
    text = "# Operator footprint (benchmark 4)\n\n" + "\n".join(rows) + "\n\nInferenceBudgets: not part of this benchmark yet (the 500-budget load is an open item of the reliability issue).\n"
    if year:
        text += "\n## A year under faults (simulated)\n\n| seed | jobs | deadlines met | savings % | outages | outage h | restarts |\n|---:|---:|---:|---:|---:|---:|---:|\n"
        for r in year["runs"]:
            f = r["faults"]
            text += (f"| {r['seed']} | {r['jobs']} | {r['deadlines_met']} | {r['savings_percent']} | "
                     f"{f['provider_outages']} | {f['outage_hours']} | {f['operator_restarts']} |\n")
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000,5000")
    ap.add_argument("--skip-year", action="store_true")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for every plan per size")
    args = ap.parse_args(argv)
    loads = []
    for n in [int(x) for x in args.sizes.split(",") if x]:
        r = asyncio.run(load_run(n, timeout_s=args.timeout))
        print(json.dumps(r))
        loads.append(r)
    year = None if args.skip_year else year_under_faults()
    if year:
        for r in year["runs"]:
            print(json.dumps(r))
    payload = {"loads": loads, "inference_budgets": "not run: no InferenceBudget controller in the operator yet",
               "settings": {"step": "5m", "horizon": "2d", "tick_interval_s": 60, "capacity": "unlimited"}}
    _common.write_result("operator_footprint", payload, markdown(loads, None))
    rel = {"year_under_faults": year,
           "load_runs": [{k: r[k] for k in ("trainingjobs", "planned", "duplicate_jobs", "job_posts_adopted_on_409", "handler_errors_in_log",
                                            "operator_died")} for r in loads],
           "fault_suite": "tests/integration/test_faults.py (SIGKILL x3 points, deleted Job, 5xx/410/drop/stall, "
                          "provider 500/malformed/unknown zone) — pass/fail in CI"}
    _common.write_result("reliability", rel, markdown(loads, year))
    return 0


if __name__ == "__main__":
    sys.exit(main())
