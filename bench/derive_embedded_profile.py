"""Fit the embedded per-zone intensity profile (greenml.signals.embedded.PROFILES).

Least-squares fit of the parametric model in ``embedded.profile_features`` (mean level,
three daily harmonics, an annual harmonic, a season-dependent daily swing, a weekend
offset) to the real traces in ../shared/data/carbon_intensity:

- DE, GB, US-CAL-CISO, US-MIDA-PJM: Electricity Maps hourly, 2021-2024, life-cycle
  (``ci_lca_gco2eq_per_kwh``). Data: Electricity Maps Data Portal (ODbL; attribution
  "Electricity Maps"), via HewlettPackard/green-dcc.
- FR: Let's Wait Awhile 2020, 30 min (Wiesner et al., Middleware '21, from ENTSO-E
  production data with IPCC 2011 life-cycle factors).

Only the fitted coefficients go into the operator; no data rows are embedded.
Prints the constants (paste into embedded.py) and writes bench/results/embedded_profile.json.

    python bench/derive_embedded_profile.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import data_file, write_result  # noqa: E402
from greenml.signals.embedded import FEATURE_NAMES, profile_features  # noqa: E402
from greenml.signals.file import load_intensity_csv  # noqa: E402

SOURCES = {
    "DE": ("carbon_intensity/electricitymaps_DE_hourly_2021-2024.csv", "ci_lca_gco2eq_per_kwh", "Electricity Maps 2021-2024 (ODbL)"),
    "GB": ("carbon_intensity/electricitymaps_GB_hourly_2021-2024.csv", "ci_lca_gco2eq_per_kwh", "Electricity Maps 2021-2024 (ODbL)"),
    "US-CAL-CISO": ("carbon_intensity/electricitymaps_US-CAL-CISO_hourly_2021-2024.csv", "ci_lca_gco2eq_per_kwh", "Electricity Maps 2021-2024 (ODbL)"),
    "US-MIDA-PJM": ("carbon_intensity/electricitymaps_US-MIDA-PJM_hourly_2021-2024.csv", "ci_lca_gco2eq_per_kwh", "Electricity Maps 2021-2024 (ODbL)"),
    "FR": ("carbon_intensity/lets_wait_awhile_FR_2020.csv", "ci_gco2eq_per_kwh", "Let's Wait Awhile 2020 / ENTSO-E (Wiesner et al. 2021)"),
}


def fit_zone(relpath: str, column: str) -> dict:
    path = data_file(relpath)
    if path is None:
        raise FileNotFoundError(relpath)
    s = load_intensity_csv(path, column=column)
    t = np.array([x.timestamp() for x in s.times()]) + s.step.total_seconds() / 2  # slot mid-points
    X = profile_features(t)
    coef, *_ = np.linalg.lstsq(X, s.values, rcond=None)
    pred = X @ coef
    resid = s.values - pred
    ss_tot = float(((s.values - s.values.mean()) ** 2).sum())
    return {
        "coef": [round(float(c), 2) for c in coef],
        "rows": len(s),
        "mae": round(float(np.abs(resid).mean()), 1),
        "r2": round(1 - float((resid ** 2).sum()) / ss_tot, 3),
        "min": round(float(s.values.min()), 1),
        "max": round(float(s.values.max()), 1),
    }


def main() -> None:
    fits: dict[str, dict] = {}
    for zone, (rel, col, cite) in SOURCES.items():
        if data_file(rel) is None:
            print(f"skip {zone}: {rel} not available")
            continue
        fits[zone] = {**fit_zone(rel, col), "source": cite}
        f = fits[zone]
        print(f"{zone:12s} rows={f['rows']:6d} R2={f['r2']:.3f} MAE={f['mae']:6.1f} g/kWh  range {f['min']}..{f['max']}")
    print("\n# features:", ", ".join(FEATURE_NAMES))
    print("PROFILES = {")
    for zone, f in fits.items():
        print(f"    {zone!r}: ({', '.join(f'{c:g}' for c in f['coef'])}),")
    print("}")
    print("FLOORS = {" + ", ".join(f"{z!r}: {f['min']:g}" for z, f in fits.items()) + "}")
    md = ["| zone | rows | R² | MAE g/kWh | source |", "|---|---|---|---|---|"]
    md += [f"| {z} | {f['rows']} | {f['r2']} | {f['mae']} | {f['source']} |" for z, f in fits.items()]
    write_result("embedded_profile", {"features": list(FEATURE_NAMES), "zones": fits}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
