"""InferenceBudget benchmark: the operator's pacing vs baselines vs the offline optimum, on real traces.

Inputs (all from ../shared/data, read in place, never copied):
- intensity: Electricity Maps hourly LCA intensity, 2023, zones DE / GB / US-CAL-CISO /
  US-MIDA-PJM (periods are local days in each zone's time zone);
- load: the Azure LLM inference trace (conversation, 2023-11-16, ~1 h; Splitwise, ISCA'24).
  Its arrivals are counted per minute, and the 60 per-minute rates are stretched over
  24 hours (minute m of the trace → local day time 24·m min … 24·(m+1) min) and repeated
  every day, scaled to a mean of ``MEAN_RPS``. This keeps the trace's real burst shape at
  a daily scale; it is not a measured diurnal curve (the trace covers one hour only);
- variants:
  * ``llm``: ML.ENERGY Leaderboard 2023 (A100, chat task): Vicuna-13B, Vicuna-7B,
    RWKV-raven-7B. quality = mean(ARC, HellaSwag, TruthfulQA) min-max normalised over
    all A100-chat rows of the table; joulesPerRequest = energy per response;
    capacityRps = 1 / latency per response (batch size 1, as measured);
  * ``tflite``: TFLite hosted models, MobileNetV1 1.0 at 224 px float32 and int8, 0.75 int8:
    quality = top-1 / 100; energy per request ∝ TFLite latency at a constant 2 W draw
    (an assumption: the table has no energy; budgets are set relative to always-best,
    so the constant cancels out of every reported ratio).

Budgets: 50 / 70 / 90 % of the always-best policy's mean daily spend in that zone.
Policies: paced (decide(), perfect and 10 %-noise forecasts, and ``online``: the operator's own
intensity and load forecasters fed only the past, with ``WARMUP`` days of history before the
year), always-best, always-cheapest,
threshold (best when the current intensity ≤ the trace median, else cheapest), and the
offline optimum (λ rounding + greedy fill; its LP/Lagrangian bound is reported too).

Run: ``python bench/bench_inference.py [--quick]`` → bench/results/inference.{json,md}.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import data_file, write_result  # noqa: E402
from greenml.api import InferenceBudgetSpec  # noqa: E402
from greenml.planning.inference import BudgetModel, compile_spec  # noqa: E402
from greenml.planning.periods import zone_info  # noqa: E402
from greenml.sim.inference import (OnlineForecasts, always_best, always_cheapest, offline_reference,  # noqa: E402
                                   read_intensity_csv, simulate_inference, threshold_policy)
from greenml.signals.base import IntensitySeries  # noqa: E402
from greenml.timeutil import parse_time  # noqa: E402

ZONES = {"DE": "Europe/Berlin", "GB": "Europe/London", "US-CAL-CISO": "America/Los_Angeles",
         "US-MIDA-PJM": "America/New_York"}
FRACTIONS = (0.5, 0.7, 0.9)
NOISE = (0.0, 0.1)
WARMUP = timedelta(days=28)   # history before the replayed year (the online forecasters' look-back)
MEAN_RPS = 2.0
LLM = ("lmsys/vicuna-13B", "lmsys/vicuna-7B", "RWKV/rwkv-raven-7b")
TFLITE = ("Mobilenet_V1_1.0_224", "Mobilenet_V1_1.0_224_quant", "Mobilenet_V1_0.75_224_quant")
TFLITE_WATTS = 2.0  # assumed constant draw; cancels out of every ratio reported


def _slug(name: str) -> str:
    return name.split("/")[-1].lower().replace("_", "-").replace(".", "")


def llm_variants(path: Path) -> list[dict]:
    rows = [r for r in csv.DictReader(open(path, newline="")) if r["gpu"] == "A100" and r["task"] == "chat"]
    score = {r["model"]: (float(r["arc_challenge_acc_pct"]) + float(r["hellaswag_acc_pct"])
                          + float(r["truthfulqa_mc2_pct"])) / 3 for r in rows}
    lo, hi = min(score.values()), max(score.values())
    out = []
    for r in rows:
        if r["model"] in LLM:
            out.append({"name": _slug(r["model"]), "quality": round((score[r["model"]] - lo) / (hi - lo), 4),
                        "capacityRps": 1.0 / float(r["latency_per_response_s"]),
                        "power": {"joulesPerRequest": float(r["energy_per_response_joules"])},
                        "patch": {"spec": {"template": {"metadata": {"labels": {"model": _slug(r["model"])}}}}}})
    return out


def tflite_variants(path: Path) -> list[dict]:
    out = []
    for r in csv.DictReader(open(path, newline="")):
        if r["model"] in TFLITE:
            lat = float(r["tflite_latency_ms"]) / 1000.0
            out.append({"name": _slug(r["model"]), "quality": float(r["top1_acc_pct"]) / 100.0,
                        "capacityRps": 1.0 / lat, "power": {"joulesPerRequest": TFLITE_WATTS * lat},
                        "patch": {"spec": {"template": {"metadata": {"labels": {"model": _slug(r["model"])}}}}}})
    return out


def spec_for(variants: list[dict], tz: str, max_replicas: int) -> InferenceBudgetSpec:
    return InferenceBudgetSpec.model_validate({
        "targetRef": {"name": "server"},
        "budget": {"carbonGrams": 1.0, "period": "day", "timeZone": tz},
        "variants": variants,
        "policy": {"qualityFloor": 0.0, "minReplicas": 1, "maxReplicas": max_replicas, "minDwell": "30m"},
    })


def azure_minute_rates(path: Path) -> np.ndarray:
    """Arrivals per minute over the trace (requests/s), one value per minute."""
    ts = []
    for r in csv.DictReader(open(path, newline="")):
        ts.append(datetime.fromisoformat(r["TIMESTAMP"][:26]).timestamp())
    t = np.array(ts) - min(ts)
    counts = np.bincount((t // 60).astype(int))
    return counts[:60] / 60.0


def diurnal_load(minute_rates: np.ndarray, series: IntensitySeries, tz: str) -> np.ndarray:
    """Load on the intensity grid: the trace's minute profile stretched over each local day."""
    shape = minute_rates / minute_rates.mean() * MEAN_RPS
    z = zone_info(tz)
    out = np.empty(len(series))
    for i, t in enumerate(series.times()):
        local = t.astimezone(z)
        frac = (local.hour * 3600 + local.minute * 60 + local.second) / 86400.0
        out[i] = shape[min(len(shape) - 1, int(frac * len(shape)))]
    return out


def varied_load(base: np.ndarray, series: IntensitySeries, tz: str, seed: int = 7) -> np.ndarray:
    """A harder load for the online forecaster (made up, on top of the real shape): each
    local day's level × 0.7 on weekends × exp(N(0, 0.15)), and every step × (1 + N(0, 0.1))."""
    rng = np.random.default_rng(seed)
    z = zone_info(tz)
    days = np.array([t.astimezone(z).toordinal() for t in series.times()])
    uniq, inv = np.unique(days, return_inverse=True)
    weekend = np.array([datetime.fromordinal(int(d)).weekday() >= 5 for d in uniq])
    level = np.where(weekend, 0.7, 1.0) * np.exp(0.15 * rng.standard_normal(uniq.size))
    noise = np.maximum(0.0, 1.0 + 0.1 * rng.standard_normal(base.size))
    return base * level[inv] * noise


def _row(family: str, zone: str, frac: float, name: str, summary: dict, periods: list[dict] | None,
         budget: float, feasible: list[bool], opt: dict, elapsed: float) -> dict:
    """One result row; adherence is recomputed against ``budget`` (baselines ignore it)."""
    within = None
    if periods is not None:
        ok = [p["grams"] <= budget * (1 + 1e-9) for p, f in zip(periods, feasible) if f]
        within = sum(ok) / len(ok) if ok else None
    spend = max(p["grams"] for p in periods) / budget if periods else None
    row = {"family": family, "zone": zone, "budget_fraction": frac, "policy": name,
           "mean_quality": summary["mean_quality"],
           "quality_vs_optimum": summary["mean_quality"] / opt["mean_quality"] if opt["mean_quality"] else None,
           "quality_vs_upper_bound": summary["mean_quality"] / opt["mean_quality_upper_bound"],
           "adherence_feasible_days": within, "max_spend_fraction": spend,
           "switches_per_day": summary.get("switches_per_day"), "days": len(feasible),
           "infeasible_days": int(len(feasible) - sum(feasible)), "seconds": round(elapsed, 3)}
    print(f"{family:6} {zone:12} {int(100 * frac)}% {name:22} quality {row['mean_quality']:.4f} "
          f"({_pct(row['quality_vs_optimum'])} of optimum) adherence(feasible days) "
          f"{_pct(within)} switches/day {_num(row['switches_per_day'])} [{elapsed:.2f}s]")
    return row


def _timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


def run_case(family: str, zone: str, model: BudgetModel, series: IntensitySeries, load: np.ndarray,
             online: OnlineForecasts | None = None, only_paced: bool = False) -> list[dict]:
    """All policies for one zone and variant family at every budget fraction; ``online``
    (the traces from ``WARMUP`` before ``series``) adds the paced policy on the operator's
    own forecasts."""
    threshold = float(np.median(series.values))
    baselines = {name: _timed(simulate_inference, model, series, load, policy=pol, steps=False)
                 for name, pol in (("always-best", always_best), ("always-cheapest", always_cheapest),
                                   ("threshold", threshold_policy(threshold)))}
    noise = (0.0,) if only_paced else NOISE
    best = baselines["always-best"][0]
    daily_best = best["summary"]["grams"] / max(1, best["summary"]["periods"])
    rows = []
    for frac in FRACTIONS:
        budget = frac * daily_best
        m = replace(model, carbon_grams=budget)
        # a day is feasible when the cheapest variant fits its budget (else no policy can)
        feasible = [p["grams"] <= budget * (1 + 1e-9) for p in baselines["always-cheapest"][0]["periods"]]
        opt, t_opt = _timed(offline_reference, m, series, load)
        rows.append(_row(family, zone, frac, "offline-optimum", {"mean_quality": opt["mean_quality"]}, None,
                         budget, feasible, opt, t_opt))
        for err in noise:
            r, t = _timed(simulate_inference, m, series, load, err, seed=1, steps=False)
            rows.append(_row(family, zone, frac, f"paced (noise {int(100 * err)}%)", r["summary"], r["periods"],
                             budget, feasible, opt, t))
        if online is not None:
            r, t = _timed(simulate_inference, m, online.intensity, online.load, online=online, warmup=WARMUP,
                          steps=False)
            assert len(r["periods"]) == len(feasible), (len(r["periods"]), len(feasible))
            row = _row(family, zone, frac, "paced (online)", r["summary"], r["periods"], budget, feasible, opt, t)
            rows.append({**row, **{f"forecast_{k}": v for k, v in r["summary"]["online"].items()}})
        for name, (r, t) in ({} if only_paced else baselines).items():
            rows.append(_row(family, zone, frac, name, r["summary"], r["periods"], budget, feasible, opt, t))
    return rows


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# InferenceBudget benchmark", "",
             f"Intensity: Electricity Maps hourly LCA, {meta['period']} (© Electricity Maps). Load: Azure LLM "
             "inference trace (conv), minute profile stretched over each local day (Splitwise, ISCA'24). Variants: "
             "ML.ENERGY Leaderboard 2023 (A100 chat) and TFLite hosted models (MobileNetV1 float/int8).", "",
             "Quality vs optimum: mean served quality ÷ the offline optimum's feasible plan; vs bound: ÷ its "
             "Lagrangian (LP) upper bound. Adherence on days where the cheapest variant fits (others: no "
             "policy can hold the budget).", "",
             *online_table(rows), "",
             "## Every case", "",
             "| family | zone | budget | policy | quality | vs optimum | vs bound | adherence | max spend | switches/day |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['zone']} | {int(100 * r['budget_fraction'])}% | {r['policy']} | "
                     f"{r['mean_quality']:.4f} | {_pct(r['quality_vs_optimum'])} | {_pct(r['quality_vs_upper_bound'])} | "
                     f"{_pct(r['adherence_feasible_days'])} | {_pct(r['max_spend_fraction'])} | "
                     f"{_num(r['switches_per_day'])} |")
    return "\n".join(lines) + "\n"


def online_table(rows: list[dict]) -> list[str]:
    """The online mode at a glance: quality against the LP bound (perfect forecast beside
    it), feasible days over budget, and the forecasters' errors."""
    out = ["## Online: the operator's own forecasts, past data only", "",
           "Quality as a fraction of the offline LP (Lagrangian) bound; days over budget among the days on "
           "which the cheapest variant fits; forecast error = mean absolute error of every forecast value "
           "the policy used ÷ the mean actual.", "",
           "| family | zone | budget | online vs bound | perfect forecast vs bound | days over budget (online) "
           "| intensity forecast error | load forecast error |",
           "|---|---|---|---|---|---|---|---|"]
    perfect = {(r["family"], r["zone"], r["budget_fraction"]): r for r in rows if r["policy"] == "paced (noise 0%)"}
    for r in rows:
        if r["policy"] != "paced (online)":
            continue
        p = perfect.get((r["family"], r["zone"], r["budget_fraction"]))
        over = round((1 - r["adherence_feasible_days"]) * (r["days"] - r["infeasible_days"]))
        out.append(f"| {r['family']} | {r['zone']} | {int(100 * r['budget_fraction'])}% | "
                   f"{r['quality_vs_upper_bound']:.4f} | {p['quality_vs_upper_bound']:.4f} | "
                   f"{over} of {r['days'] - r['infeasible_days']} | {_pct(r['forecast_intensity_relative_mae'])} | "
                   f"{_pct(r['forecast_load_relative_mae'])} |" if p else "")
    return out


def summarise(rows: list[dict]) -> dict:
    """Per policy (the varied-load rows apart): worst and mean quality, adherence, switches."""
    def key(r: dict) -> str:
        return r["policy"] + (" [varied load]" if "varied" in r["family"] else "")

    out = {}
    for pol in sorted({key(r) for r in rows}):
        rs = [r for r in rows if key(r) == pol]
        adh = [r["adherence_feasible_days"] for r in rs if r["adherence_feasible_days"] is not None]
        out[pol] = {"min_quality_vs_optimum": min(r["quality_vs_optimum"] for r in rs),
                    "mean_quality_vs_optimum": float(np.mean([r["quality_vs_optimum"] for r in rs])),
                    "min_quality_vs_upper_bound": min(r["quality_vs_upper_bound"] for r in rs),
                    "min_adherence_feasible_days": min(adh) if adh else None,
                    "feasible_days_over_budget": sum(round((1 - r["adherence_feasible_days"]) *
                                                           (r["days"] - r["infeasible_days"]))
                                                     for r in rs if r["adherence_feasible_days"] is not None),
                    "mean_switches_per_day": float(np.mean([r["switches_per_day"] for r in rs]))
                    if rs[0]["switches_per_day"] is not None else None}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two weeks, DE only, LLM variants (smoke run)")
    ap.add_argument("--year", type=int, default=2023)
    args = ap.parse_args(argv)
    files = {"llm": data_file("model_variants/mlenergy_llm_2023_energy_latency_accuracy.csv"),
             "tflite": data_file("model_variants/tflite_hosted_models_int8_vs_fp32_accuracy_latency.csv"),
             "load": data_file("cluster_traces/azure_llm_inference_2023_conv.csv")}
    if not all(files.values()):
        print(f"shared data missing: {[k for k, v in files.items() if v is None]}; nothing measured")
        return 0
    start = parse_time(f"{args.year}-01-01")
    end = start + timedelta(days=14) if args.quick else parse_time(f"{args.year + 1}-01-01")
    zones = ["DE"] if args.quick else list(ZONES)
    families = {"llm": llm_variants(files["llm"])}
    if not args.quick:
        families["tflite"] = tflite_variants(files["tflite"])
    minute_rates = azure_minute_rates(files["load"])
    rows: list[dict] = []
    t0 = time.perf_counter()
    for zone in zones:
        path = data_file(f"carbon_intensity/electricitymaps_{zone}_hourly_2021-2024.csv")
        if path is None:
            print(f"skipping {zone}: no intensity file")
            continue
        whole = read_intensity_csv(path)
        # whole local days only, so every period is complete
        z = zone_info(ZONES[zone])
        lo = datetime(start.year, start.month, start.day, tzinfo=z)
        hi = datetime(end.year, end.month, end.day, tzinfo=z)
        series = whole.window(lo, hi)
        load = diurnal_load(minute_rates, series, ZONES[zone])
        # the online mode: the same year, with WARMUP of real history before it (the load
        # shape continued backwards), forecasts shared by every budget of the zone
        past = whole.window(lo - WARMUP, hi)
        online = OnlineForecasts(past, diurnal_load(minute_rates, past, ZONES[zone]), ZONES[zone])
        for family, variants in families.items():
            model = compile_spec(spec_for(variants, ZONES[zone], max_replicas=1000))
            rows += run_case(family, zone, model, series, load, online)
        # the same with a load that is not the same every day (LLM variants: they separate the policies)
        varied = varied_load(diurnal_load(minute_rates, past, ZONES[zone]), past, ZONES[zone])
        k = len(past) - len(series)
        hard = OnlineForecasts(past, varied, ZONES[zone])
        model = compile_spec(spec_for(families["llm"], ZONES[zone], max_replicas=1000))
        rows += run_case("llm, varied load", zone, model, series, varied[k:], hard, only_paced=True)
    total = time.perf_counter() - t0
    meta = {"period": f"{start:%Y-%m-%d} to {end:%Y-%m-%d}", "zones": zones, "mean_rps": MEAN_RPS,
            "variants": families, "budget_fractions": FRACTIONS, "forecast_noise": NOISE,
            "online": f"the operator's own forecasters, {WARMUP.days} days of history before the period",
            "varied_load": "family 'llm, varied load': the daily shape × 0.7 on weekends × exp(N(0, 0.15)) per "
                           "local day × (1 + N(0, 0.1)) per step (made up, seed 7): budgets, baselines and the "
                           "optimum recomputed on it",
            "offline_optimum": "per day: Lagrangian (λ) rounding + greedy fill, feasible; upper bound = dual value",
            "seconds_total": round(total, 2)}
    summary = summarise(rows)
    for pol, s in summary.items():
        print(f"{pol:22} min quality vs optimum {_pct(s['min_quality_vs_optimum'])}, mean "
              f"{_pct(s['mean_quality_vs_optimum'])}, min adherence {_pct(s['min_adherence_feasible_days'])}, "
              f"switches/day {_num(s['mean_switches_per_day'])}")
    print(f"total {total:.1f}s")
    write_result("inference-quick" if args.quick else "inference", {"meta": meta, "summary": summary, "rows": rows},
                 markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
