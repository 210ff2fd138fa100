"""Benchmark 4: the operator's footprint under load, and reliability figures.

**Footprint.** The real operator (``python -m greenml run``, a subprocess) against the
kmock API emulator (in this process) with N = 100 / 1,000 / 5,000 TrainingJobs created
at once. The objects exist before the operator starts (as after a restart). The emulator runs with
the harness's fast request matching (tests/integration/harness.py: kmock otherwise walks its
whole request history on every request and, not the operator, becomes the bottleneck —
measured at 1,000 TrainingJobs: 96 s to plan all with kmock at 100 % CPU vs 8 s after). Measured:
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

InferenceBudgets: with ``--budgets B`` (default 500) each load run also holds B
InferenceBudgets, each targeting its own Deployment (two variants, a day budget that
some of them overspend). Measured alongside: how many have a decision in status
(``activeVariant``), and a spot-check of 20 against the service path run offline at the
decision's time (same signals: the file forecast, load = current replicas).

**Reliability.** A year of simulated replay (Electricity Maps DE 2023, when present)
under random provider outages and operator restarts — the scenario of
tests/unit/test_sim_reliability.py — with the faults injected by kind, jobs, deadlines
met and savings; plus the load runs' duplicate and error counts.

**The real control plane** (``--real``, issue 13). The e2e control plane (e2e/cluster:
etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok fake GPU nodes), the CRDs
from crds/, N TrainingJobs and N/10 InferenceBudgets (each with its own Deployment, paused:
no pods) created before ``greenml run`` starts (default settings; provider ``file`` with a
curve that peaks at the start, so no job is due during the run; ``GPU_CAPACITY`` 1,000,000).
Measured: time until every TrainingJob has ``status.plan`` and every budget
``activeVariant`` (from a watch, not repeated LISTs); the operator's RSS then and its peak
(VmHWM); after a settle time, a quiet window: the operator's CPU (utime + stime from /proc),
API writes from kube-apiserver's ``apiserver_request_total`` before and after
(POST/PUT/PATCH/APPLY/DELETE by resource, status included), the operator's own reconcile and
error counters; the time to exit on SIGTERM; Jobs per owner (duplicates); 20 plans and the
budgets' first decisions against the service path run offline. ``--soak-minutes M`` samples
RSS every 30 s for M minutes after the quiet window (slope in MiB/h); ``--tracemalloc F``
runs the operator under tracemalloc (bench/_traced_operator.py) and reports the top 10
allocation sites at the end of the quiet window and their growth over it;
``--planning-only 20000`` measures a size to "all planned" only. Results:
``bench/results/operator_real.{json,md}``.

Run: python bench/bench_operator.py [--sizes 100,1000,5000] [--budgets 500] [--skip-year]
     python bench/bench_operator.py --real [--sizes 1000,5000] [--quiet-seconds 300]
         [--planning-only 20000] [--soak-minutes 60] [--tracemalloc 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import _common  # noqa: E402

TJ = "greenml.io/v1alpha1/trainingjobs"
IB = "greenml.io/v1alpha1/inferencebudgets"
DEPLOY = "apps/v1/deployments"
NS = "load"
SPOT_CHECKS = 20
TICK_S = 60


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


def deployment(i: int, rng: random.Random, now: datetime) -> dict[str, Any]:
    name = f"svc-{i:04d}"
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS, "uid": f"dep-uid-{i}", "generation": 1, "resourceVersion": "1",
                         "creationTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "spec": {"replicas": rng.choice([1, 2, 4]), "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                         {"name": "server", "image": "llm:13b"}]}}}}


def budget(i: int, rng: random.Random, now: datetime) -> dict[str, Any]:
    def variant(name: str, quality: float, watts: float, image: str) -> dict[str, Any]:
        return {"name": name, "quality": quality, "capacityRps": 10, "power": {"wattsPerReplica": watts},
                "patch": {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": image}]}}}}}
    return {"apiVersion": "greenml.io/v1alpha1", "kind": "InferenceBudget",
            "metadata": {"name": f"ib-{i:04d}", "namespace": NS, "uid": f"ib-uid-{i}", "generation": 1,
                         "resourceVersion": "1", "creationTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "spec": {"targetRef": {"name": f"svc-{i:04d}"}, "zone": "DE",
                     # 1 replica of the full model for a day at ~400 g/kWh is ~3.8 kg: some hold, some switch
                     "budget": {"carbonGrams": rng.choice([1000.0, 3000.0, 10000.0, 40000.0]), "period": "day"},
                     "policy": {"minReplicas": 1, "maxReplicas": 8},
                     "variants": [variant("full", 1.0, 400, "llm:13b"), variant("small", 0.8, 120, "llm:7b-int8")]}}


def operator_env(kubeconfig: Path, intensity: Path) -> dict[str, str]:
    from tests.integration.harness import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENML_")}
    env.update({
        "KUBECONFIG": str(kubeconfig), "GREENML_PROVIDER": "file", "GREENML_INTENSITY_FILE": str(intensity),
        "GREENML_DEFAULT_ZONE": "DE", "GREENML_STEP": "5m", "GREENML_HORIZON": "2d",
        "GREENML_SAFETY_MARGIN": "15m", "GREENML_REPLAN_INTERVAL": "15m", "GREENML_TICK_INTERVAL": str(TICK_S),
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


async def load_run(n: int, budgets: int = 0, seed: int = 0, timeout_s: float = 1200.0) -> dict[str, Any]:
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
            replicas0: dict[str, int] = {}
            for i in range(budgets):
                dep = deployment(i, rng, now)
                replicas0[f"ib-{i:04d}"] = dep["spec"]["replicas"]
                k.objects[DEPLOY, NS, f"svc-{i:04d}"] = dep
                k.objects[IB, NS, f"ib-{i:04d}"] = budget(i, rng, now)
            log_path = tmp / "operator.log"
            posts: dict[str, int] = {}
            trimmer = asyncio.create_task(trim_history(k, posts))
            t0 = time.monotonic()
            with open(log_path, "wb") as log:
                proc = subprocess.Popen([sys.executable, "-m", "greenml", "run"], env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            try:
                tj_url = f"{url}/apis/greenml.io/v1alpha1/namespaces/{NS}/trainingjobs"
                ib_url = f"{url}/apis/greenml.io/v1alpha1/namespaces/{NS}/inferencebudgets"
                async with aiohttp.ClientSession() as s:
                    planned, decided, items, ibs = 0, 0, [], []
                    all_planned_s = all_decided_s = None
                    while time.monotonic() - t0 < timeout_s and proc.poll() is None:
                        try:
                            items = await _list(s, tj_url)
                            ibs = await _list(s, ib_url) if budgets else []
                        except (aiohttp.ClientError, asyncio.TimeoutError):   # the emulator is swamped
                            await asyncio.sleep(2.0)
                            continue
                        planned = sum(1 for o in items if ((o.get("status") or {}).get("plan") or {}).get("computedAt"))
                        decided = sum(1 for o in ibs if (o.get("status") or {}).get("activeVariant"))
                        if planned >= n and all_planned_s is None:
                            all_planned_s = time.monotonic() - t0
                        if decided >= budgets and all_decided_s is None:
                            all_decided_s = time.monotonic() - t0
                        if all_planned_s is not None and all_decided_s is not None:
                            break
                        await asyncio.sleep(0.5)
                    cpu = proc_cpu_seconds(proc.pid) if proc.poll() is None else math.nan
                    rss = proc_peak_rss_mib(proc.pid) if proc.poll() is None else math.nan
                    jobs = await _list(s, f"{url}/apis/batch/v1/namespaces/{NS}/jobs")
                    # arrivals in a storm get a stop-gap plan on the last replan's grid (board.py:
                    # _fill_in, starting up to one slot late); each object's next tick re-plans it
                    # in full. Spot-check both the first plans and the plans one tick later.
                    first_items = items
                    steady = None
                    if planned >= n and proc.poll() is None:
                        # the same wait measures the steady state: every object ticks once in it
                        c0, w0 = proc_cpu_seconds(proc.pid), time.monotonic()
                        await asyncio.sleep(TICK_S + 15)
                        if proc.poll() is None:
                            steady = round(100.0 * (proc_cpu_seconds(proc.pid) - c0) / (time.monotonic() - w0), 1)
                        items = await _list(s, tj_url)
                    died = proc.poll() is not None
            finally:
                t_term = time.monotonic()
                stop_process(proc, timeout=60)
                exit_s = time.monotonic() - t_term
                trimmer.cancel()
            count_job_posts(k._requests, posts)
            logs = log_path.read_text(errors="replace")
        spot_first = spot_check(first_items, intensity, random.Random(seed))
        spot = spot_check(items, intensity, random.Random(seed))
        ib_spot = budget_spot_check(ibs, replicas0, intensity, rng) if budgets else None
    phases: dict[str, int] = {}
    for o in items:
        ph = (o.get("status") or {}).get("phase", "none")
        phases[ph] = phases.get(ph, 0) + 1
    return {
        "trainingjobs": n, "planned": planned,
        "seconds_to_plan_all": round(all_planned_s, 2) if all_planned_s is not None else None,
        "inference_budgets": budgets, "budgets_decided": decided,
        "seconds_to_decide_all_budgets": round(all_decided_s, 2) if all_decided_s is not None else None,
        "budget_spot_check": ib_spot,
        "operator_cpu_seconds": round(cpu, 2), "steady_state_cpu_percent": steady, "operator_peak_rss_mib": round(rss, 1),
        "jobs_created": len(jobs), "duplicate_jobs": duplicate_jobs(jobs),
        "job_posts_adopted_on_409": sum(c - 1 for c in posts.values() if c > 1),
        "handler_errors_in_log": logs.count("failed with an exception"),
        "operator_died": died, "exit_code_on_sigterm": proc.returncode, "seconds_to_exit_on_sigterm": round(exit_s, 1),
        "phases": phases, "spot_check": spot, "spot_check_first_plans": spot_first,
    }


def duplicate_jobs(jobs: list[dict]) -> int:
    """Jobs beyond the first per owning TrainingJob (by the owner label)."""
    owners: dict[str, int] = {}
    for j in jobs:
        owner = ((j.get("metadata") or {}).get("labels") or {}).get("greenml.io/trainingjob", "?")
        owners[owner] = owners.get(owner, 0) + 1
    return sum(c - 1 for c in owners.values() if c > 1)


def spot_check(items: list[dict], intensity: Path, rng: random.Random, horizon: str = "2d") -> dict[str, Any]:
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
                          horizon=parse_duration(horizon), capacity=None)
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


def budget_spot_check(ibs: list[dict], replicas0: dict[str, int], intensity: Path, rng: random.Random) -> dict[str, Any]:
    """Each sampled budget's last decision vs the service path run offline at its time.

    Offline: the same signals the controller reads (the file forecast to the period end;
    load = the Deployment's replicas at the first variant's capacity, as without a
    loadQuery) and an empty status — a budget's first decision. A budget whose later
    tick switched again is decided on accumulated spend, so only first decisions
    (the last decision is the switch) are compared.
    """
    from types import SimpleNamespace

    from greenml.controllers.inferencebudget import read_signals
    from greenml.services import inferencebudget as svc
    from greenml.signals import FileSource
    from greenml.timeutil import parse_duration, parse_time

    step = parse_duration("5m")
    ctx = SimpleNamespace(board=SimpleNamespace(source=FileSource(str(intensity))),
                          settings=SimpleNamespace(prometheus_url=None))
    decided = [o for o in ibs if (o.get("status") or {}).get("activeVariant")]
    sample = rng.sample(decided, min(SPOT_CHECKS, len(decided)))
    same, checked = 0, 0
    for o in sample:
        st = o["status"]
        last = st.get("lastDecision") or {}
        if last.get("action") != "switch" or last.get("time") != st.get("switchedAt"):
            continue                       # decided again since the switch: not a first decision
        at = parse_time(last["time"])
        spec, model = svc.parse_spec(o)
        dep = {"spec": {"replicas": replicas0[o["metadata"]["name"]]}}
        end = svc.core.new_state(model, at).period_end
        sig = read_signals(ctx, "DE", spec, model, dep, None, at, end, step)
        offline = svc.reconcile(spec, model, {}, at, sig, step).decision
        checked += 1
        same += offline.variant == st["activeVariant"]
    return {"checked": checked, "same_variant": same}


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


# ------------------------------------------------------------------ the real control plane
REAL_NS = "bench"
REAL_QUIET_S = 300.0      # one planning step (5 min): budgets' per-step writes show once
REAL_SETTLE_S = 30.0      # after all are planned/decided, before the quiet window starts
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE")
COUNTED = ("trainingjobs", "inferencebudgets", "jobs", "deployments", "events", "leases")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


def day_peaking_now(path: Path, now: datetime, days: int = 9) -> Path:
    """400 ± 150 gCO2e/kWh over 24 h with its peak at ``now``: every job's cheapest window
    lies hours ahead, so nothing starts during the benchmark and a quiet window is quiet."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    lines = ["datetime_utc,gco2_per_kwh"]
    for i in range(days * 288):
        t = start + timedelta(minutes=5 * i)
        v = 400.0 + 150.0 * math.cos(2 * math.pi * (t - now).total_seconds() / 86400.0)
        lines.append(f"{t.strftime('%Y-%m-%dT%H:%M:%SZ')},{v:.1f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _fresh(obj: dict[str, Any], ns: str) -> dict[str, Any]:
    """A body as a user would POST it: name and namespace only (the server sets the rest)."""
    meta = obj["metadata"]
    return {**obj, "metadata": {"name": meta["name"], "namespace": ns}}


def apiserver_requests(cp: Any) -> dict[tuple[str, str, str], float]:
    """kube-apiserver's apiserver_request_total summed by (verb, resource, subresource)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str, str], float] = {}
    for fam in text_string_to_metric_families(cp._get("/metrics").decode()):
        if not fam.name.startswith("apiserver_request"):
            continue
        for s in fam.samples:
            if s.name != "apiserver_request_total":
                continue
            key = (s.labels.get("verb", ""), s.labels.get("resource", ""), s.labels.get("subresource", ""))
            out[key] = out.get(key, 0.0) + s.value
    return out


def request_delta(before: dict, after: dict) -> dict[str, float]:
    """Requests between two scrapes by "VERB resource[/subresource]", for COUNTED resources."""
    out: dict[str, float] = {}
    for key in set(before) | set(after):
        verb, res, sub = key
        if res not in COUNTED:
            continue
        d = after.get(key, 0.0) - before.get(key, 0.0)
        if d:
            out[f"{verb} {res}{'/' + sub if sub else ''}"] = d
    return dict(sorted(out.items()))


def writes_of(delta: dict[str, float], resource: str) -> int:
    return int(sum(v for k, v in delta.items() if k.split()[0] in WRITE_VERBS and k.split()[1].split("/")[0] == resource))


def operator_metric(port: str, name: str) -> dict[str, float]:
    """One metric family of the operator's own /metrics, by its label string."""
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key[len(name):] or "-"] = float(value)
    return out


class Watcher:
    """One watch per kind (from the bench, not a LIST per poll: at 5,000 objects a LIST every
    second would load the API server more than the operator does): which objects are done."""

    def __init__(self, kube: Any, path: str, done: Any, names: set[str], rv: str) -> None:
        import threading

        from greenml.kube import Kube

        self.kube, self.path, self.done_of, self.rv = Kube(kube.cfg), path, done, rv   # its own connection pool
        self.pending = set(names)
        self.done_at: float | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _relist(self) -> None:
        """After a 410 (the resourceVersion is too old): a LIST gives the state and a new one."""
        listed = self.kube.request("GET", self.path, "list")
        for obj in listed.get("items") or []:
            if obj["metadata"]["name"] in self.pending and self.done_of(obj):
                self.pending.discard(obj["metadata"]["name"])
        if not self.pending and self.done_at is None:
            self.done_at = time.monotonic()
        self.rv = listed["metadata"]["resourceVersion"]

    def _run(self) -> None:
        relist = False
        while not self._stop.is_set():
            try:
                if relist:
                    self._relist()
                    relist = False
                with requests.get(self.kube.host + self.path, headers=self.kube._headers(), stream=True,
                                  verify=self.kube.verify, cert=self.kube.cert, timeout=(5, 120),
                                  params={"watch": "1", "resourceVersion": self.rv,
                                          "allowWatchBookmarks": "true", "timeoutSeconds": "100"}) as r:
                    for line in r.iter_lines():
                        if self._stop.is_set():
                            return
                        if not line:
                            continue
                        ev = json.loads(line)
                        obj = ev.get("object") or {}
                        rv = (obj.get("metadata") or {}).get("resourceVersion")
                        if ev.get("type") == "ERROR":      # 410 Gone
                            relist = True
                            break
                        if rv:
                            self.rv = rv
                        name = (obj.get("metadata") or {}).get("name")
                        if name in self.pending and self.done_of(obj):
                            self.pending.discard(name)
                            if not self.pending and self.done_at is None:
                                self.done_at = time.monotonic()
            except Exception:   # noqa: BLE001 — a dropped stream is resumed from the last resourceVersion
                time.sleep(1.0)

    def stop(self) -> None:
        self._stop.set()


def _create_all(kubeconfig: Path, bodies: list[tuple[str, dict[str, Any]]], workers: int = 8) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from greenml.kube import Conflict, Kube
    from greenml.kube.client import Transient, load_configuration

    cfg = load_configuration(str(kubeconfig))
    local = threading.local()

    def post(item: tuple[str, dict[str, Any]]) -> None:
        if not hasattr(local, "kube"):
            local.kube = Kube(cfg)
        path, b = item
        for attempt in range(5):
            try:
                local.kube.request("POST", path, f"create {b['metadata']['name']}", body=b)
                return
            except Conflict:          # a retried POST that had gone through
                return
            except Transient:
                if attempt == 4:
                    raise
                time.sleep(1.0 + attempt)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(post, bodies, chunksize=16))


def real_run(n: int, budgets: int, *, quiet_s: float = REAL_QUIET_S, settle_s: float = REAL_SETTLE_S,
             planning_only: bool = False, soak_minutes: float = 0.0, tracemalloc_frames: int = 0,
             timeout_s: float = 900.0, seed: int = 0) -> dict[str, Any]:
    """N TrainingJobs + B InferenceBudgets (each with its own paused Deployment: no pods) on
    the e2e control plane, created before `greenml run` starts (as after a restart)."""
    import shutil

    from e2e.cluster.controlplane import start
    from e2e.conftest import REPO, install_crds
    from greenml.kube import Kube
    from greenml.kube.client import load_configuration, path_for
    from tests.integration.harness import free_port

    import yaml

    rng = random.Random(seed)
    out: dict[str, Any] = {"trainingjobs": n, "inference_budgets": budgets, "planning_only": planning_only}
    tmp = Path(tempfile.mkdtemp(prefix="greenml-bench-real-"))
    cp = None
    proc = None
    try:
        t = time.monotonic()
        cp = start(tmp / "cluster")
        out["control_plane_start_s"] = round(time.monotonic() - t, 1)
        kube = Kube(load_configuration(str(cp.kubeconfig)))
        install_crds(kube, [yaml.safe_load(f.read_text()) for f in sorted((REPO / "crds").glob("*.yaml"))])
        kube.request("POST", "/api/v1/namespaces", "create namespace",
                     body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": REAL_NS}})
        now = datetime.now(timezone.utc)
        intensity = day_peaking_now(tmp / "ci.csv", now)
        bodies: list[tuple[str, dict[str, Any]]] = []
        for i in range(n):
            bodies.append((path_for("greenml.io/v1alpha1", "trainingjobs", REAL_NS), _fresh(body(i, rng, now), REAL_NS)))
        replicas0: dict[str, int] = {}
        for i in range(budgets):
            dep = _fresh(deployment(i, rng, now), REAL_NS)
            dep["spec"]["paused"] = True          # no ReplicaSet, no pods: the operator only reads and applies it
            replicas0[f"ib-{i:04d}"] = dep["spec"]["replicas"]
            bodies.append((path_for("apps/v1", "deployments", REAL_NS), dep))
            bodies.append((path_for("greenml.io/v1alpha1", "inferencebudgets", REAL_NS), _fresh(budget(i, rng, now), REAL_NS)))
        t = time.monotonic()
        _create_all(cp.kubeconfig, bodies)
        out["seconds_to_create_objects"] = round(time.monotonic() - t, 1)

        tj_path = path_for("greenml.io/v1alpha1", "trainingjobs", REAL_NS)
        ib_path = path_for("greenml.io/v1alpha1", "inferencebudgets", REAL_NS)
        rv_tj = kube.request("GET", tj_path, "list", params={"limit": "1"})["metadata"]["resourceVersion"]
        rv_ib = kube.request("GET", ib_path, "list", params={"limit": "1"})["metadata"]["resourceVersion"]
        tj_watch = Watcher(kube, tj_path, lambda o: bool(((o.get("status") or {}).get("plan") or {}).get("computedAt")),
                           {f"tj-{i:05d}" for i in range(n)}, rv_tj)
        ib_watch = Watcher(kube, ib_path, lambda o: bool((o.get("status") or {}).get("activeVariant")),
                           {f"ib-{i:04d}" for i in range(budgets)}, rv_ib)

        env = {k: v for k, v in os.environ.items() if not k.startswith("GREENML_")}
        metrics_port = str(free_port())
        env.update({"KUBECONFIG": str(cp.kubeconfig), "GREENML_PROVIDER": "file",
                    "GREENML_INTENSITY_FILE": str(intensity), "GREENML_DEFAULT_ZONE": "DE",
                    "GREENML_GPU_CAPACITY": "1000000", "GREENML_HEALTH_PORT": str(free_port()),
                    "GREENML_METRICS_PORT": metrics_port, "GREENML_LOG_FORMAT": "json",
                    "GREENML_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING")})
        cmd = [sys.executable, "-m", "greenml", "run"]
        snapdir = tmp / "tracemalloc"
        if tracemalloc_frames:
            snapdir.mkdir()
            env.update(BENCH_TRACEMALLOC_DIR=str(snapdir), BENCH_TRACEMALLOC_FRAMES=str(tracemalloc_frames))
            cmd = [sys.executable, str(Path(__file__).with_name("_traced_operator.py"))]
        log_path = tmp / "operator.log"
        reqs0 = apiserver_requests(cp)

        def control_plane_cpu() -> dict[str, float]:
            return {name: proc_cpu_seconds(p.pid) for name, p in cp.procs.items() if p.poll() is None}
        cp_cpu0 = control_plane_cpu()
        t0 = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=str(REPO))
        rss_series: list[tuple[float, float]] = []

        def sample() -> None:
            if proc.poll() is None:
                rss_series.append((round(time.monotonic() - t0, 1), round(proc_rss_mib(proc.pid), 1)))

        last_sample = 0.0
        while time.monotonic() - t0 < timeout_s and proc.poll() is None:
            if time.monotonic() - last_sample >= 2.0:
                sample()
                last_sample = time.monotonic()
            if tj_watch.done_at is not None and (ib_watch.done_at is not None or not budgets):
                break
            time.sleep(0.2)
        sample()
        done = {"planned": n - len(tj_watch.pending), "budgets_decided": budgets - len(ib_watch.pending)}
        out.update(done)
        out["seconds_to_plan_all"] = round(tj_watch.done_at - t0, 1) if tj_watch.done_at else None
        out["seconds_to_decide_all_budgets"] = round(ib_watch.done_at - t0, 1) if ib_watch.done_at else None
        out["rss_mib_when_all_planned"] = rss_series[-1][1] if rss_series else None
        out["cpu_seconds_until_all_planned"] = round(proc_cpu_seconds(proc.pid), 1) if proc.poll() is None else None
        # what the control plane (API server, etcd, controllers, kwok) burnt meanwhile, on the same cores
        cp_cpu1 = control_plane_cpu()
        out["control_plane_cpu_seconds_until_all_planned"] = {
            name: round(cp_cpu1[name] - cp_cpu0.get(name, 0.0), 1) for name in cp_cpu1}
        reqs_planned = apiserver_requests(cp)
        out["requests_until_all_planned"] = request_delta(reqs0, reqs_planned)
        tj_watch.stop()
        ib_watch.stop()

        if not planning_only and proc.poll() is None:
            end = time.monotonic() + settle_s
            while time.monotonic() < end and proc.poll() is None:
                sample()
                time.sleep(2.0)
            # the quiet window: nothing created, nothing due for TrainingJobs (their windows are hours away)
            if tracemalloc_frames:
                os.kill(proc.pid, signal.SIGUSR1)
            ops0 = {"reconciles": operator_metric(metrics_port, "greenml_reconcile_duration_seconds_count"),
                    "errors": operator_metric(metrics_port, "greenml_reconcile_errors_total")}
            reqs1, c1, w1 = apiserver_requests(cp), proc_cpu_seconds(proc.pid), time.monotonic()
            wall1 = datetime.now(timezone.utc)
            cpu_series: list[tuple[float, float]] = []
            c_prev, w_prev = c1, w1
            while time.monotonic() - w1 < quiet_s and proc.poll() is None:
                time.sleep(min(10.0, max(0.0, quiet_s - (time.monotonic() - w1))))
                if proc.poll() is not None:
                    break
                sample()
                c, w = proc_cpu_seconds(proc.pid), time.monotonic()
                cpu_series.append((round(w - w1, 0), round(100.0 * (c - c_prev) / (w - w_prev), 1)))
                c_prev, w_prev = c, w
            if proc.poll() is None:
                c2, w2, reqs2 = proc_cpu_seconds(proc.pid), time.monotonic(), apiserver_requests(cp)
                wall2 = datetime.now(timezone.utc)
                if tracemalloc_frames:
                    os.kill(proc.pid, signal.SIGUSR1)
                delta = request_delta(reqs1, reqs2)
                steps = int(wall2.timestamp() // 300) - int(wall1.timestamp() // 300)
                ops1 = {"reconciles": operator_metric(metrics_port, "greenml_reconcile_duration_seconds_count"),
                        "errors": operator_metric(metrics_port, "greenml_reconcile_errors_total")}
                out["quiet_window"] = {
                    "seconds": round(w2 - w1, 1), "planning_step_boundaries_crossed": steps,
                    "cpu_percent_of_a_core": round(100.0 * (c2 - c1) / (w2 - w1), 2),
                    "cpu_percent_per_10s": cpu_series,
                    "writes_trainingjobs": writes_of(delta, "trainingjobs"),
                    "writes_inferencebudgets": writes_of(delta, "inferencebudgets"),
                    "writes_jobs": writes_of(delta, "jobs"), "writes_deployments": writes_of(delta, "deployments"),
                    "writes_events": writes_of(delta, "events"), "writes_leases": writes_of(delta, "leases"),
                    "requests": delta,
                    "reconciles": {k: ops1["reconciles"].get(k, 0) - v for k, v in ops0["reconciles"].items()}
                    | {k: v for k, v in ops1["reconciles"].items() if k not in ops0["reconciles"]},
                    "reconcile_errors": {k: ops1["errors"].get(k, 0) - ops0["errors"].get(k, 0) for k in ops1["errors"]},
                    "rss_mib_at_start": rss_at(rss_series, w1 - t0), "rss_mib_at_end": rss_series[-1][1],
                }
            if soak_minutes and proc.poll() is None:
                soak: list[tuple[float, float]] = []
                s0, c0 = time.monotonic(), proc_cpu_seconds(proc.pid)
                while time.monotonic() - s0 < soak_minutes * 60 and proc.poll() is None:
                    soak.append((round((time.monotonic() - s0) / 60.0, 2), round(proc_rss_mib(proc.pid), 1)))
                    time.sleep(30.0)
                if proc.poll() is None:
                    soak.append((round((time.monotonic() - s0) / 60.0, 2), round(proc_rss_mib(proc.pid), 1)))
                    cpu = 100.0 * (proc_cpu_seconds(proc.pid) - c0) / (time.monotonic() - s0)
                    out["soak"] = {"minutes": soak_minutes, "rss_mib_every_30s": soak, "cpu_percent": round(cpu, 2),
                                   "rss_first_mib": soak[0][1], "rss_last_mib": soak[-1][1],
                                   "rss_max_mib": max(r for _, r in soak),
                                   "rss_slope_mib_per_hour": slope_per_hour(soak)}

        out["operator_died"] = proc.poll() is not None
        out["peak_rss_mib"] = round(proc_peak_rss_mib(proc.pid), 1) if proc.poll() is None else None
        out["cpu_seconds_total"] = round(proc_cpu_seconds(proc.pid), 1) if proc.poll() is None else None
        out["rss_mib_series"] = rss_series
        ops = operator_metric(metrics_port, "greenml_reconcile_errors_total")
        out["reconcile_errors_total"] = int(sum(ops.values()))
        t_term = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        out["seconds_to_exit_on_sigterm"] = round(time.monotonic() - t_term, 2)
        out["exit_code_on_sigterm"] = proc.returncode
        reqs_end = apiserver_requests(cp)
        out["requests_whole_run"] = request_delta(reqs0, reqs_end)
        out["status_writes_per_object_whole_run"] = round(
            (writes_of(out["requests_whole_run"], "trainingjobs") + writes_of(out["requests_whole_run"], "inferencebudgets"))
            / max(1, n + budgets), 2)

        from greenml.services.trainingjob import LABEL_MANAGED_BY, MANAGED_BY
        jobs = kube.request("GET", path_for("batch/v1", "jobs", REAL_NS), "list Jobs",
                            params={"labelSelector": f"{LABEL_MANAGED_BY}={MANAGED_BY}"}).get("items") or []
        out["jobs_created"] = len(jobs)
        out["duplicate_jobs"] = duplicate_jobs(jobs)
        out["jobs_running"] = sum(1 for j in jobs if not (j.get("spec") or {}).get("suspend"))
        items = kube.request("GET", tj_path, "list TrainingJobs").get("items") or []
        ibs = kube.request("GET", ib_path, "list InferenceBudgets").get("items") or [] if budgets else []
        out["finalizers_on_objects"] = sum(1 for o in items + ibs if (o.get("metadata") or {}).get("finalizers"))
        phases: dict[str, int] = {}
        for o in items:
            ph = (o.get("status") or {}).get("phase", "none")
            phases[ph] = phases.get(ph, 0) + 1
        out["phases"] = phases
        out["spot_check"] = spot_check(items, intensity, random.Random(seed), horizon="7d")
        out["budget_spot_check"] = budget_spot_check(ibs, replicas0, intensity, random.Random(seed)) if budgets else None
        logs = log_path.read_text(errors="replace")
        if os.environ.get("BENCH_KEEP_LOG"):            # the operator's log, for a closer look
            Path(os.environ["BENCH_KEEP_LOG"]).write_text(logs)
        out["log_warnings"] = logs.count('"levelname": "WARNING"') + logs.count('"level": "warning"')
        out["log_errors"] = logs.count('"levelname": "ERROR"') + logs.count('"level": "error"') + logs.count("Traceback")
        out["log_tail"] = logs[-2000:] if out["operator_died"] or out["log_errors"] else ""
        if tracemalloc_frames:
            out["tracemalloc"] = tracemalloc_report(snapdir)
        return out
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if cp is not None:
            cp.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def rss_at(series: list[tuple[float, float]], t: float) -> float | None:
    before = [r for s, r in series if s <= t]
    return before[-1] if before else None


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (minutes, MiB), in MiB per hour."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return round(60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var, 2) if var else None


def tracemalloc_report(snapdir: Path, top: int = 10) -> dict[str, Any]:
    import tracemalloc

    for _ in range(60):
        if len(list(snapdir.glob("snapshot-*.pickle"))) >= 2:
            break
        time.sleep(0.5)
    snaps = sorted(snapdir.glob("snapshot-*.pickle"))
    if len(snaps) < 2:
        return {"error": f"{len(snaps)} snapshot(s) written"}
    a, b = tracemalloc.Snapshot.load(str(snaps[0])), tracemalloc.Snapshot.load(str(snaps[1]))

    def where(stat) -> str:
        fr = stat.traceback[0]
        name = fr.filename.split("site-packages/")[-1].split("/operator/")[-1]
        return f"{name}:{fr.lineno}"

    total_b = sum(s.size for s in b.statistics("filename"))
    return {
        "traced_mib_at_start": round(sum(s.size for s in a.statistics("filename")) / 2**20, 1),
        "traced_mib_at_end": round(total_b / 2**20, 1),
        "top_at_end": [{"where": where(s), "mib": round(s.size / 2**20, 2), "blocks": s.count}
                       for s in b.statistics("lineno")[:top]],
        "top_growth": [{"where": where(s), "growth_kib": round(s.size_diff / 1024, 1), "now_mib": round(s.size / 2**20, 2)}
                       for s in b.compare_to(a, "lineno")[:top]],
    }


def real_markdown(runs: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    def q(r, key, default="—"):
        return (r.get("quiet_window") or {}).get(key, default)

    text = ("# The operator on a real control plane (issue 13)\n\n"
            f"Machine: {machine['cpus']} CPUs, Python {machine['python']}, {machine['platform']}, {machine['when']} — "
            "shared by the operator, etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and the benchmark.\n"
            "Default settings (step 5 min, horizon 7 d, replan 15 min, TICK_INTERVAL 600 s), provider `file`, "
            "`GPU_CAPACITY=1000000`; all objects exist before the operator starts; each budget's Deployment is paused "
            "(no pods). The intensity curve peaks at the start, so no job is due during the run. Quiet window: "
            "after all are planned and decided plus a settle time; writes from kube-apiserver's `apiserver_request_total` "
            "(POST/PUT/PATCH/APPLY/DELETE, status subresource included). Events are every client's (the Job controller "
            "posts `Suspended` for each suspended Job); the operator's reconcile counts are in the JSON.\n\n"
            "| TrainingJobs + budgets | all planned | all budgets decided | RSS when planned | peak RSS | "
            "quiet window | CPU (quiet) | TJ writes (quiet) | IB writes (quiet) | step boundaries | Events (quiet) | "
            "exit on SIGTERM | Jobs | duplicate Jobs | reconcile errors | plans = offline | budgets = offline |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for r in runs:
        sc, bc = r.get("spot_check") or {}, r.get("budget_spot_check") or {}
        text += (f"| {r['trainingjobs']:,} + {r['inference_budgets']:,} | {r.get('seconds_to_plan_all')} s | "
                 f"{r.get('seconds_to_decide_all_budgets')} s | {r.get('rss_mib_when_all_planned')} MiB | "
                 f"{r.get('peak_rss_mib')} MiB | {q(r, 'seconds')} s | {q(r, 'cpu_percent_of_a_core')} % | "
                 f"{q(r, 'writes_trainingjobs')} | {q(r, 'writes_inferencebudgets')} | "
                 f"{q(r, 'planning_step_boundaries_crossed')} | {q(r, 'writes_events')} | "
                 f"{r.get('seconds_to_exit_on_sigterm')} s | {r.get('jobs_created')} | {r.get('duplicate_jobs')} | "
                 f"{r.get('reconcile_errors_total')} | {sc.get('same_windows', '—')}/{sc.get('checked', '—')} | "
                 f"{bc.get('same_variant', '—')}/{bc.get('checked', '—')} |\n")
    text += ("\nStartup cost (from the operator's start until all planned and decided): API requests by verb and "
             "resource, status writes per object over the whole run:\n\n")
    for r in runs:
        w = r.get("requests_until_all_planned") or {}
        writes = {k: int(v) for k, v in w.items() if k.split()[0] in WRITE_VERBS}
        text += (f"- {r['trainingjobs']:,} + {r['inference_budgets']:,}: {writes}; "
                 f"{r.get('status_writes_per_object_whole_run')} writes per TJ/IB over the run; "
                 f"{r.get('cpu_seconds_until_all_planned')} CPU-s until all planned"
                 + (f" (the control plane meanwhile, same cores: {cpc} CPU-s)"
                    if (cpc := r.get("control_plane_cpu_seconds_until_all_planned")) else "") + "\n")
    for r in runs:
        if r.get("soak"):
            s = r["soak"]
            text += (f"\nSoak ({r['trainingjobs']:,} + {r['inference_budgets']:,}, {s['minutes']} min after the quiet "
                     f"window, RSS every 30 s): first {s['rss_first_mib']} MiB, last {s['rss_last_mib']} MiB, max "
                     f"{s['rss_max_mib']} MiB, slope {s['rss_slope_mib_per_hour']} MiB/h, CPU {s['cpu_percent']} %.\n")
        if r.get("tracemalloc") and "top_at_end" in r["tracemalloc"]:
            tm = r["tracemalloc"]
            text += (f"\ntracemalloc ({r['trainingjobs']:,} + {r['inference_budgets']:,}; Python-level memory "
                     f"{tm['traced_mib_at_start']} → {tm['traced_mib_at_end']} MiB over the quiet window). "
                     "Largest at the end, and largest growth:\n\n| where | MiB | | where | growth KiB |\n|---|---:|---|---|---:|\n")
            for a, b in zip(tm["top_at_end"], tm["top_growth"]):
                text += f"| `{a['where']}` | {a['mib']} | | `{b['where']}` | {b['growth_kib']} |\n"
    return text


def real_main(args: argparse.Namespace) -> int:
    runs = []
    sizes = [(int(x), False) for x in args.sizes.split(",") if x]
    sizes += [(int(x), True) for x in (args.planning_only or "").split(",") if x]
    quiet = [float(x) for x in str(args.quiet_seconds).split(",") if x]
    for i, (n, planning_only) in enumerate(sizes):
        budgets = args.budgets if args.budgets >= 0 else n // 10
        r = real_run(n, budgets, quiet_s=quiet[min(i, len(quiet) - 1)], settle_s=args.settle_seconds,
                     planning_only=planning_only,
                     soak_minutes=args.soak_minutes if not planning_only else 0.0,
                     tracemalloc_frames=args.tracemalloc, timeout_s=args.timeout)
        summary = {k: v for k, v in r.items() if k not in ("rss_mib_series", "requests_whole_run",
                                                            "requests_until_all_planned", "log_tail")}
        print(json.dumps(summary, default=str), flush=True)
        runs.append(r)
        # written after every size: a long run that is cut short keeps what it measured
        payload = {"runs": runs, "settings": {"step": "5m", "horizon": "7d", "replan_interval": "15m",
                                              "tick_interval_s": 600, "gpu_capacity": 1000000,
                                              "quiet_seconds": args.quiet_seconds, "settle_seconds": args.settle_seconds,
                                              "tracemalloc_frames": args.tracemalloc}}
        md = real_markdown(runs, _common.machine())
        _common.write_result(args.out, payload, md)
    print(md)
    return 0


# ------------------------------------------------------------------ main
def markdown(loads: list[dict], year: dict | None) -> str:
    rows = ["| TrainingJobs | planned | s to plan all | operator CPU s | peak RSS MiB | Jobs | duplicate Jobs | "
            "POSTs adopted on 409 | handler errors | first plans: grams within 1 % of offline | "
            "one tick later: same windows / grams within 1 % | s to exit on SIGTERM | steady-state CPU % (tick 60 s) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in loads:
        first, tick = r["spot_check_first_plans"], r["spot_check"]
        rows.append(f"| {r['trainingjobs']} | {r['planned']} | {r['seconds_to_plan_all']} | {r['operator_cpu_seconds']} | "
                    f"{r['operator_peak_rss_mib']} | {r['jobs_created']} | {r['duplicate_jobs']} | {r['job_posts_adopted_on_409']} | "
                    f"{r['handler_errors_in_log']} | {first['grams_within_1pct']}/{first['checked']} "
                    f"(worst +{first['worst_grams_gap_percent']} %) | {tick['same_windows']} / {tick['grams_within_1pct']} "
                    f"of {tick['checked']} (worst +{tick['worst_grams_gap_percent']} %) | {r.get('seconds_to_exit_on_sigterm')} | {r.get('steady_state_cpu_percent')} |")
    text = "# Operator footprint (benchmark 4)\n\n" + "\n".join(rows) + "\n"
    ib = [r for r in loads if r["inference_budgets"]]
    if ib:
        text += ("\nInferenceBudgets held in the same runs (each with its own Deployment):\n\n"
                 "| TrainingJobs | InferenceBudgets | decided | s to decide all | spot-check: same variant as offline |\n"
                 "|---:|---:|---:|---:|---:|\n")
        for r in ib:
            sc = r["budget_spot_check"]
            text += (f"| {r['trainingjobs']} | {r['inference_budgets']} | {r['budgets_decided']} | "
                     f"{r['seconds_to_decide_all_budgets']} | {sc['same_variant']}/{sc['checked']} |\n")
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
    ap.add_argument("--budgets", type=int, default=500, help="InferenceBudgets held in each load run")
    ap.add_argument("--skip-year", action="store_true")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for every plan per size")
    ap.add_argument("--real", action="store_true",
                    help="on the e2e control plane (e2e/cluster) instead of the emulator; sizes default to 1000,5000 "
                         "and budgets to N/10")
    ap.add_argument("--planning-only", default="", help="--real: sizes measured to all planned only (e.g. 20000)")
    ap.add_argument("--quiet-seconds", default=str(REAL_QUIET_S),
                    help="--real: the quiet window, s; a comma list gives one per size (the last repeats). "
                         "Over 720 s it holds every object's safety-net reconcile (TICK_INTERVAL 600 s ±20 %%)")
    ap.add_argument("--settle-seconds", type=float, default=REAL_SETTLE_S,
                    help="--real: wait after all planned before the quiet window")
    ap.add_argument("--soak-minutes", type=float, default=0.0, help="--real: sample RSS every 30 s for this long")
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                    help="--real: run the operator under tracemalloc (FRAMES per trace) and report the top 10")
    ap.add_argument("--out", default="operator_real", help="--real: result name under bench/results/")
    args = ap.parse_args(argv)
    if args.real:
        if args.sizes == "100,1000,5000":
            args.sizes = "1000,5000"
        if args.budgets == 500:
            args.budgets = -1
        return real_main(args)
    loads = []
    for n in [int(x) for x in args.sizes.split(",") if x]:
        r = asyncio.run(load_run(n, budgets=args.budgets, timeout_s=args.timeout))
        print(json.dumps(r))
        loads.append(r)
    year = None if args.skip_year else year_under_faults()
    if year:
        for r in year["runs"]:
            print(json.dumps(r))
    payload = {"loads": loads, "settings": {"step": "5m", "horizon": "2d", "tick_interval_s": 60, "capacity": "unlimited"}}
    _common.write_result("operator_footprint", payload, markdown(loads, None))
    rel = {"year_under_faults": year,
           "load_runs": [{k: r[k] for k in ("trainingjobs", "planned", "inference_budgets", "budgets_decided", "duplicate_jobs", "job_posts_adopted_on_409", "handler_errors_in_log",
                                            "operator_died", "seconds_to_exit_on_sigterm")} for r in loads],
           "fault_suite": "tests/integration/test_faults.py (SIGKILL x3 points, deleted Job, 5xx/410/drop/stall, "
                          "provider 500/malformed/unknown zone) — pass/fail in CI"}
    _common.write_result("reliability", rel, markdown(loads, year))
    return 0


if __name__ == "__main__":
    sys.exit(main())
