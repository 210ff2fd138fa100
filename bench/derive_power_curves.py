"""Derive the default power-cap curves (greenml.planning.power.CURVES) from the Zeus sweep.

Data: ../shared/data/gpu_power/zeus_nsdi23_power_limit_sweep.csv — the power-limit sweeps of
Zeus (You, Chung, Chowdhury, "Zeus: Understanding and Optimizing GPU Energy Consumption of
DNN Training", NSDI '23; ml-energy/zeus, Apache-2.0): 218 (GPU, workload) configurations
(dataset × network × batch size × optimizer) on A40, V100, P100 and Quadro RTX 6000, each
run at every power limit of its GPU.

Per configuration, time per epoch and average GPU power at each limit are divided by their
values at the GPU's maximum limit; per GPU and limit the median over configurations is the
curve point (limit as a fraction of the maximum). ``generic`` (GPUs outside the sweep) is
the mean of the A40, V100 and RTX 6000 curves at fractions 0.4 … 1.0 (P100 left out as a
generation older, as in greenml.signals.gpus). Also reported: the energy-optimal cap per
configuration (median energy saving and slowdown there).

Only these derived figures go into the operator; no data rows are embedded.

    python bench/derive_power_curves.py     # prints CURVES, writes bench/results/power_curves.json
"""
from __future__ import annotations

import csv
import statistics as st
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import data_file, write_result  # noqa: E402

SWEEP = "gpu_power/zeus_nsdi23_power_limit_sweep.csv"
NAMES = {"NVIDIA A40": "A40", "NVIDIA V100": "V100", "NVIDIA P100": "P100", "NVIDIA Quadro RTX 6000": "RTX6000"}
GENERIC_FROM = ("A40", "V100", "RTX6000")
GENERIC_FRACTIONS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def main() -> int:
    path = data_file(SWEEP)
    if path is None:
        print(f"skipped: {SWEEP} not found under the shared data folder")
        return 0
    configs: dict[tuple, dict[float, tuple[float, float]]] = defaultdict(dict)
    with path.open() as fh:
        for r in csv.DictReader(fh):
            key = (NAMES[r["gpu"]], r["dataset"], r["network"], r["batch_size"], r["optimizer"])
            configs[key][float(r["power_limit_w"])] = (float(r["time_per_epoch_s"]), float(r["avg_gpu_power_w"]))
    per_gpu: dict[str, dict[float, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    savings, slowdowns = [], []
    for key, by_limit in configs.items():
        top = max(by_limit)
        t0, p0 = by_limit[top]
        for limit, (t, p) in by_limit.items():
            per_gpu[key[0]][limit / top].append((t / t0, p / p0))
        energy = {lim: t * p for lim, (t, p) in by_limit.items()}
        best = min(energy, key=energy.get)
        savings.append(1 - energy[best] / energy[top])
        slowdowns.append(by_limit[best][0] / t0 - 1)
    curves = {}
    for gpu in sorted(per_gpu):
        curves[gpu] = [(round(frac, 4), round(st.median(x[0] for x in v), 3), round(st.median(x[1] for x in v), 3))
                       for frac, v in sorted(per_gpu[gpu].items())]
    generic = []
    for frac in GENERIC_FRACTIONS:
        tf = [np.interp(frac, [p[0] for p in curves[g]], [p[1] for p in curves[g]]) for g in GENERIC_FROM]
        pf = [np.interp(frac, [p[0] for p in curves[g]], [p[2] for p in curves[g]]) for g in GENERIC_FROM]
        generic.append((frac, round(float(np.mean(tf)), 3), round(float(np.mean(pf)), 3)))
    curves["generic"] = generic
    print("CURVES (fraction of max limit, time factor, power factor):")
    for name, pts in curves.items():
        print(f'    "{name}": {tuple(pts)},')
    summary = {"configurations": len(configs),
               "energy_optimal_saving_median": round(st.median(savings), 4),
               "energy_optimal_saving_max": round(max(savings), 4),
               "energy_optimal_slowdown_median": round(st.median(slowdowns), 4)}
    print(summary)
    md = ["# Power-cap curves (Zeus NSDI'23 sweep, medians)", "",
          f"{summary['configurations']} configurations; at the energy-optimal cap: median energy saving "
          f"{100 * summary['energy_optimal_saving_median']:.1f} % (max {100 * summary['energy_optimal_saving_max']:.1f} %), "
          f"median slowdown {100 * summary['energy_optimal_slowdown_median']:.1f} %.", "",
          "| GPU | cap / max limit | time factor | power factor |", "|---|---|---|---|"]
    md += [f"| {g} | {f:g} | {t:g} | {p:g} |" for g, pts in curves.items() for f, t, p in pts]
    write_result("power_curves", {"source": SWEEP, "curves": curves, "summary": summary}, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
