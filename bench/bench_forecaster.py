"""Forecaster accuracy on real traces, against naive baselines and NESO's own forecasts.

1. Electricity Maps hourly 2021-2024 (DE, GB, US-CAL-CISO, US-MIDA-PJM; LCA intensity;
   data: Electricity Maps, ODbL): rolling origins sampled at random (seeded) from
   2021-02 to 2024-12; MAE at 1, 6, 24, 48 h ahead for our forecaster, persistence,
   same-hour-yesterday and the embedded climatology. Lead k h = the hour starting k-1 h
   after the last observed hour.
   Also what a scheduler gets from it: choosing the cleanest 4 h window in the next 24 h
   by each forecast, the mean actual intensity saved vs running now, as a share of what a
   perfect forecast would save.
2. NESO (CC BY 4.0): the 17 fw48h snapshots of March 2023 (NESO's multi-horizon
   forecasts) vs ours from the NESO half-hourly actuals up to each snapshot, by lead
   bucket; and short-lead MAE over 2023 vs NESO's kept forecast.

    python bench/bench_forecaster.py [--origins 400]
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import data_file, write_result  # noqa: E402
from greenml.signals.base import IntensitySeries  # noqa: E402
from greenml.signals.embedded import profile_values  # noqa: E402
from greenml.signals.file import load_intensity_csv  # noqa: E402
from greenml.signals.forecaster import ForecasterPolicy, forecast_from_history  # noqa: E402
from greenml.timeutil import parse_time  # noqa: E402

ZONES = ("DE", "GB", "US-CAL-CISO", "US-MIDA-PJM")
LEADS_H = (1, 6, 24, 48)
WINDOW_H, SEARCH_H = 4, 24
POLICY = ForecasterPolicy()


def _forecast(hist: IntensitySeries, i: int, n: int) -> np.ndarray:
    """Our forecast of slots i .. i+n-1 from the slots before i (history = POLICY.days)."""
    per_day = int(86400 // hist.step.total_seconds())
    lo = max(0, i - POLICY.days * per_day)
    window = IntensitySeries(hist.start + hist.step * lo, hist.step, hist.values[lo:i], source=hist.source)
    f = forecast_from_history(window, window.end, hist.step * n, POLICY)
    return f.values[:n]


def _best_window_mean(pred: np.ndarray, actual: np.ndarray, w: int) -> float:
    """Actual mean of the w-slot window whose predicted mean is lowest."""
    k = np.convolve(pred, np.ones(w) / w, mode="valid")
    j = int(np.argmin(k))
    return float(actual[j:j + w].mean())


def bench_zone(zone: str, origins: int, rng: np.random.Generator) -> dict:
    path = data_file(f"carbon_intensity/electricitymaps_{zone}_hourly_2021-2024.csv")
    if path is None:
        return {"skipped": "data not available"}
    s = load_intensity_csv(path, column="ci_lca_gco2eq_per_kwh")
    v = s.values
    horizon = max(max(LEADS_H), SEARCH_H)
    idx = rng.integers(31 * 24, len(v) - horizon, size=origins)
    err = {m: {h: [] for h in LEADS_H} for m in ("forecaster", "persistence", "same_hour_yesterday", "embedded")}
    saved = {m: [] for m in ("forecaster", "embedded", "perfect")}
    for i in idx:
        i = int(i)
        actual = v[i:i + horizon]
        preds = {
            "forecaster": _forecast(s, i, horizon),
            "persistence": np.full(horizon, v[i - 1]),
            "same_hour_yesterday": np.array([v[i + k - 24 * (k // 24 + 1)] for k in range(horizon)]),
            "embedded": profile_values(zone, s.start + s.step * i, s.step, horizon),
        }
        for m, p in preds.items():
            for h in LEADS_H:
                err[m][h].append(abs(p[h - 1] - actual[h - 1]))
        now_mean = float(actual[:WINDOW_H].mean())
        search = slice(0, SEARCH_H)
        for m, p in (("forecaster", preds["forecaster"]), ("embedded", preds["embedded"]), ("perfect", actual)):
            saved[m].append(now_mean - _best_window_mean(p[search], actual[search], WINDOW_H))
    mae = {m: {f"{h}h": round(float(np.mean(e[h])), 1) for h in LEADS_H} for m, e in err.items()}
    perfect = float(np.mean(saved["perfect"]))
    sched = {m: {"saved_g_per_kwh": round(float(np.mean(x)), 1),
                 "share_of_perfect": round(float(np.mean(x)) / perfect, 3) if perfect else None}
             for m, x in saved.items()}
    return {"origins": origins, "mae": mae, "scheduler_4h_in_24h": sched}


def _neso_actuals() -> IntensitySeries | None:
    path = data_file("carbon_intensity/neso_gb_national_halfhourly_2023_forecast_actual.csv")
    return None if path is None else load_intensity_csv(path, column="actual_gco2_per_kwh")


def bench_neso_snapshots(actuals: IntensitySeries) -> dict:
    path = data_file("carbon_intensity/neso_gb_national_fw48h_forecast_snapshots_2023-03.csv")
    if path is None:
        return {"skipped": "data not available"}
    rows = list(csv.DictReader(path.open()))
    buckets = ((0, 12), (12, 24), (24, 36), (36, 48))
    ours: dict[str, list[float]] = {f"{a}-{b}h": [] for a, b in buckets}
    neso: dict[str, list[float]] = {f"{a}-{b}h": [] for a, b in buckets}
    by_snapshot: dict[str, list[dict]] = {}
    for r in rows:
        by_snapshot.setdefault(r["snapshot_utc"], []).append(r)
    for snap, rs in by_snapshot.items():
        first = min(parse_time(r["window_from_utc"]) for r in rs)
        i = actuals.index_of(first)
        pred = _forecast(actuals, i, 96)
        for r in rs:
            lead = float(r["lead_hours"])
            k = actuals.index_of(parse_time(r["window_from_utc"])) - i
            key = next(f"{a}-{b}h" for a, b in buckets if a <= lead < b)
            actual = float(r["actual_gco2_per_kwh"])
            ours[key].append(abs(pred[k] - actual))
            neso[key].append(abs(float(r["forecast_gco2_per_kwh"]) - actual))
    return {"snapshots": len(by_snapshot),
            "mae_ours": {k: round(float(np.mean(v)), 1) for k, v in ours.items()},
            "mae_neso": {k: round(float(np.mean(v)), 1) for k, v in neso.items()}}


def bench_neso_short_lead(actuals: IntensitySeries, origins: int, rng: np.random.Generator) -> dict:
    path = data_file("carbon_intensity/neso_gb_national_halfhourly_2023_forecast_actual.csv")
    assert path is not None
    fc = {parse_time(r["from_utc"]): float(r["forecast_gco2_per_kwh"]) for r in csv.DictReader(path.open())
          if r["forecast_gco2_per_kwh"] and r["actual_gco2_per_kwh"]}
    raw_actual = {parse_time(r["from_utc"]): float(r["actual_gco2_per_kwh"]) for r in csv.DictReader(path.open())
                  if r["actual_gco2_per_kwh"]}
    ours, neso = [], []
    for i in rng.integers(15 * 48, len(actuals) - 2, size=origins):
        t = actuals.start + actuals.step * int(i)
        if t not in fc or t not in raw_actual or actuals.start + actuals.step * int(i - 1) not in raw_actual:
            continue  # skip origins in or next to the October gap
        ours.append(abs(_forecast(actuals, int(i), 1)[0] - raw_actual[t]))
        neso.append(abs(fc[t] - raw_actual[t]))
    return {"origins": len(ours), "lead": "next half hour",
            "mae_ours": round(float(np.mean(ours)), 1), "mae_neso": round(float(np.mean(neso)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--origins", type=int, default=400, help="sampled forecast origins per zone")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    zones = {}
    for z in ZONES:
        zones[z] = bench_zone(z, args.origins, rng)
        if "mae" in zones[z]:
            m = zones[z]["mae"]
            print(f"{z:12s} MAE g/kWh at " + ", ".join(f"{h}h" for h in LEADS_H))
            for name, row in m.items():
                print(f"  {name:20s} " + "  ".join(f"{row[f'{h}h']:6.1f}" for h in LEADS_H))
            sch = zones[z]["scheduler_4h_in_24h"]
            print("  scheduler (4 h job, best window in 24 h), saved g/kWh vs run-now: "
                  + ", ".join(f"{k} {v['saved_g_per_kwh']} ({v['share_of_perfect']:.0%})" for k, v in sch.items()))
    actuals = _neso_actuals()
    neso: dict = {"skipped": "data not available"}
    if actuals is not None:
        neso = {"fw48h_snapshots_2023_03": bench_neso_snapshots(actuals),
                "short_lead_2023": bench_neso_short_lead(actuals, args.origins, rng)}
        print("NESO fw48h snapshots (GB, Mar 2023): MAE ours vs NESO by lead:")
        snap = neso["fw48h_snapshots_2023_03"]
        for k in snap["mae_ours"]:
            print(f"  {k:7s} ours {snap['mae_ours'][k]:6.1f}   NESO {snap['mae_neso'][k]:6.1f}")
        sl = neso["short_lead_2023"]
        print(f"NESO 2023 next half hour: ours {sl['mae_ours']} vs NESO {sl['mae_neso']} ({sl['origins']} origins)")
    elapsed = time.perf_counter() - t0
    print(f"elapsed {elapsed:.1f} s")
    md = ["| zone | method | " + " | ".join(f"{h} h" for h in LEADS_H) + " |", "|---|---|" + "---|" * len(LEADS_H)]
    for z, r in zones.items():
        for name, row in r.get("mae", {}).items():
            md.append(f"| {z} | {name} | " + " | ".join(str(row[f"{h}h"]) for h in LEADS_H) + " |")
    write_result("forecaster", {"policy": POLICY.__dict__ | {"min_history": str(POLICY.min_history),
                                                             "max_horizon": str(POLICY.max_horizon)},
                                "origins_per_zone": args.origins, "seed": args.seed, "zones": zones, "neso": neso,
                                "elapsed_s": round(elapsed, 1)}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
