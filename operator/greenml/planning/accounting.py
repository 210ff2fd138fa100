"""Software Carbon Intensity accounting: SCI = (E × I + M) per R.

Pure functions and frozen dataclasses, shared by the operator, the simulator and
``greenml report``. Sources of the method and of every default constant:

- SCI: Green Software Foundation, *Software Carbon Intensity (SCI) Specification*
  v1.0 (2022), published as ISO/IEC 21031:2024. E is the energy the software uses,
  data-centre overhead included (here: IT energy × PUE); I is a **location-based**
  grid intensity (gCO2e/kWh); M is the embodied share of the hardware reserved:
  ``M = TE × (TiR / EL) × (RR / ToR)`` (total embodied × time reserved / expected
  life × resources reserved / total resources); R is the functional unit.
- Embodied defaults: Luccioni, Viguier & Ligozat, "Estimating the Carbon Footprint
  of BLOOM, a 176B Parameter Language Model", JMLR 24 (2023), §4.1: 150 kgCO2e per
  GPU (A100-class) and 2,500 kgCO2e per 8-GPU server excluding its GPUs.
- GPU lifetime: the issue's 2–5 years for accelerators; the default 4 years is
  inside that range (BLOOM assumed 6 years, which lowers M). Configurable.
- Units: 1 kWh = 3.6e6 J = 3.6e6 W·s; 1 lb = 453.59237 g (NIST SP 811, exact),
  so lbs/MWh × 0.45359237 = g/kWh (WattTime MOER is published in lbs/MWh).
- Water: WUE in L/kWh of IT energy (The Green Grid, WP #35, 2011). Optional: no
  default is assumed, because on-site water use varies from ~0 (air-cooled) to
  several L/kWh; for reference, Shehabi et al., *United States Data Center Energy
  Usage Report*, LBNL-1005775 (2016) uses 1.8 L/kWh as the US average.

Average and marginal intensities answer different questions (attribution vs the
consequence of a change). They are labelled on every figure and never combined:
``Footprint`` arithmetic and ``Savings`` refuse to mix kinds, because comparing a
marginal counterfactual with an average actual overstates savings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

IntensityKind = Literal["average", "marginal"]
KINDS: tuple[str, ...] = ("average", "marginal")

JOULES_PER_KWH = 3.6e6
GRAMS_PER_POUND = 453.59237          # NIST SP 811 (exact)
SECONDS_PER_YEAR = 365.25 * 86400.0

# Luccioni et al. 2023 (JMLR 24), §4.1 — see the module docstring
DEFAULT_GPU_EMBODIED_KG = 150.0
DEFAULT_SERVER_EMBODIED_KG = 2500.0
DEFAULT_GPUS_PER_SERVER = 8
DEFAULT_GPU_LIFETIME_YEARS = 4.0
DEFAULT_SERVER_LIFETIME_YEARS = 4.0


class AccountingError(ValueError):
    """Bad accounting input; the message names the field."""


# ------------------------------------------------------------------ units
def ws_to_kwh(watt_seconds: float) -> float:
    """W·s (= J) → kWh."""
    return watt_seconds / JOULES_PER_KWH


def joules_to_kwh(joules: float) -> float:
    return joules / JOULES_PER_KWH


def kwh_to_joules(kwh: float) -> float:
    return kwh * JOULES_PER_KWH


def lbs_per_mwh_to_g_per_kwh(lbs_per_mwh: float) -> float:
    """WattTime MOER (lbs CO2/MWh) → g/kWh: × 453.59237 g/lb ÷ 1000 kWh/MWh."""
    return lbs_per_mwh * GRAMS_PER_POUND / 1000.0


def _nonneg(name: str, value: float) -> float:
    if value is None or not math.isfinite(value) or value < 0:
        raise AccountingError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _positive(name: str, value: float) -> float:
    if value is None or not math.isfinite(value) or value <= 0:
        raise AccountingError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise AccountingError(f"intensity kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


# ------------------------------------------------------------------ policy
@dataclass(frozen=True)
class Hardware:
    """Embodied carbon of the reserved hardware (defaults cited in the module docstring)."""

    gpu_embodied_kg: float = DEFAULT_GPU_EMBODIED_KG
    gpu_lifetime_years: float = DEFAULT_GPU_LIFETIME_YEARS
    server_embodied_kg: float = DEFAULT_SERVER_EMBODIED_KG       # one server without its GPUs
    server_lifetime_years: float = DEFAULT_SERVER_LIFETIME_YEARS
    gpus_per_server: int = DEFAULT_GPUS_PER_SERVER

    def __post_init__(self) -> None:
        _nonneg("gpuEmbodiedKg", self.gpu_embodied_kg)
        _nonneg("serverEmbodiedKg", self.server_embodied_kg)
        _positive("gpuLifetimeYears", self.gpu_lifetime_years)
        _positive("serverLifetimeYears", self.server_lifetime_years)
        if int(self.gpus_per_server) != self.gpus_per_server or self.gpus_per_server < 1:
            raise AccountingError(f"gpusPerServer must be an integer >= 1, got {self.gpus_per_server!r}")


@dataclass(frozen=True)
class AccountingPolicy:
    """How a cluster is accounted: one typed object instead of many flags.

    ``pue`` multiplies IT energy (1.0: IT energy only; the Uptime Institute's 2023
    survey average is 1.58 — set the cluster's own figure). ``wue_l_per_kwh``: None
    means water is not reported. ``kind``: the intensity kind every figure uses.
    """

    pue: float = 1.0
    wue_l_per_kwh: float | None = None
    kind: IntensityKind = "average"
    hardware: Hardware = Hardware()

    def __post_init__(self) -> None:
        if not math.isfinite(self.pue) or self.pue < 1.0:
            raise AccountingError(f"pue must be >= 1.0 (facility energy / IT energy), got {self.pue!r}")
        if self.wue_l_per_kwh is not None:
            _nonneg("wueLPerKwh", self.wue_l_per_kwh)
        _kind(self.kind)


# ------------------------------------------------------------------ the parts of SCI
def facility_kwh(it_kwh: float, pue: float) -> float:
    """E: IT energy × PUE."""
    return _nonneg("energyKwh", it_kwh) * pue


def operational_grams(it_kwh: float, intensity_g_per_kwh: float, pue: float = 1.0) -> float:
    """E × I with E = IT energy × PUE (kWh) and I in gCO2e/kWh."""
    return facility_kwh(it_kwh, pue) * _nonneg("intensity", intensity_g_per_kwh)


def embodied_grams(gpus: float, reserved_seconds: float, hardware: Hardware = Hardware()) -> float:
    """M = TE × (TiR/EL) × (RR/ToR), for the GPUs and their share of the servers.

    GPUs: gpus × gpu TE × reserved / GPU life. Servers: the fraction gpus/gpusPerServer
    of one server's TE × reserved / server life. A CPU-only job (0 GPUs) is charged no
    accelerator hardware here.
    """
    gpus = _nonneg("gpus", gpus)
    t = _nonneg("reservedSeconds", reserved_seconds)
    gpu = gpus * hardware.gpu_embodied_kg * 1000.0 * t / (hardware.gpu_lifetime_years * SECONDS_PER_YEAR)
    server = (gpus / hardware.gpus_per_server) * hardware.server_embodied_kg * 1000.0 * t / (
        hardware.server_lifetime_years * SECONDS_PER_YEAR)
    return gpu + server


def water_litres(it_kwh: float, wue_l_per_kwh: float | None) -> float | None:
    """On-site water: IT energy × WUE (None when WUE is not configured)."""
    return None if wue_l_per_kwh is None else _nonneg("energyKwh", it_kwh) * wue_l_per_kwh


def mean_intensity(values: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """Energy-weighted mean intensity (weights: kWh per value; None: equal weights)."""
    if len(values) == 0:
        raise AccountingError("intensity: no values")
    w = [1.0] * len(values) if weights is None else [float(x) for x in weights]
    if len(w) != len(values):
        raise AccountingError(f"intensity: {len(values)} values but {len(w)} weights")
    total = sum(w)
    if total <= 0:
        raise AccountingError("intensity: weights sum to zero")
    return sum(float(v) * x for v, x in zip(values, w)) / total


# ------------------------------------------------------------------ footprints
@dataclass(frozen=True)
class Footprint:
    """One workload's cost, every part kept (not only the total).

    ``energy_kwh`` is IT energy; ``facility_kwh`` includes PUE; grams are gCO2e with
    the intensity ``kind`` they were computed with; ``water_l`` None: not reported.
    ``units``/``unit`` are R (e.g. 1 "training run", 12.5 "1,000 requests").
    """

    energy_kwh: float
    facility_kwh: float
    operational_g: float
    embodied_g: float
    kind: IntensityKind
    water_l: float | None = None
    units: float = 1.0
    unit: str = "run"

    @property
    def total_g(self) -> float:
        return self.operational_g + self.embodied_g

    @property
    def sci_g_per_unit(self) -> float:
        """SCI = (E×I + M) / R (gCO2e per functional unit)."""
        if self.units <= 0:
            raise AccountingError(f"functional units ({self.unit}) must be > 0 to compute SCI, got {self.units}")
        return self.total_g / self.units

    def __add__(self, other: "Footprint") -> "Footprint":
        if not isinstance(other, Footprint):
            return NotImplemented
        if other.kind != self.kind:
            raise AccountingError(f"cannot add a {other.kind} footprint to a {self.kind} one: never mix "
                                  "average and marginal intensity")
        unit = self.unit if self.unit == other.unit else "mixed"
        water = None if self.water_l is None and other.water_l is None else (self.water_l or 0.0) + (other.water_l or 0.0)
        return Footprint(self.energy_kwh + other.energy_kwh, self.facility_kwh + other.facility_kwh,
                         self.operational_g + other.operational_g, self.embodied_g + other.embodied_g,
                         self.kind, water, self.units + other.units, unit)

    def to_json(self) -> dict:
        return {"energyKwh": round(self.energy_kwh, 6), "facilityKwh": round(self.facility_kwh, 6),
                "operationalGrams": round(self.operational_g, 3), "embodiedGrams": round(self.embodied_g, 3),
                "totalGrams": round(self.total_g, 3), "intensityKind": self.kind,
                "waterLitres": None if self.water_l is None else round(self.water_l, 3),
                "functionalUnits": self.units, "functionalUnit": self.unit,
                "sciGramsPerUnit": round(self.sci_g_per_unit, 6) if self.units > 0 else None}


def empty_footprint(kind: IntensityKind = "average", unit: str = "run", water: bool = False) -> Footprint:
    return Footprint(0.0, 0.0, 0.0, 0.0, kind, 0.0 if water else None, 0.0, unit)


def footprint(it_kwh: float, intensity_g_per_kwh: float, *, gpus: float = 0.0, reserved_seconds: float = 0.0,
              policy: AccountingPolicy = AccountingPolicy(), units: float = 1.0, unit: str = "run",
              kind: IntensityKind | None = None) -> Footprint:
    """A workload's footprint from IT energy, the (energy-weighted) intensity and the GPUs reserved.

    ``kind`` states the intensity's kind; it must match the policy's (mixing is refused).
    """
    k = _kind(kind or policy.kind)
    if k != policy.kind:
        raise AccountingError(f"intensity is {k} but the accounting policy is {policy.kind}: never mix them")
    _nonneg("functionalUnits", units)
    return Footprint(
        energy_kwh=_nonneg("energyKwh", it_kwh),
        facility_kwh=facility_kwh(it_kwh, policy.pue),
        operational_g=operational_grams(it_kwh, intensity_g_per_kwh, policy.pue),
        embodied_g=embodied_grams(gpus, reserved_seconds, policy.hardware),
        kind=k, water_l=water_litres(it_kwh, policy.wue_l_per_kwh), units=units, unit=unit)


def footprint_from_grams(it_kwh: float, it_grams: float, *, gpus: float = 0.0, reserved_seconds: float = 0.0,
                         policy: AccountingPolicy = AccountingPolicy(), units: float = 1.0, unit: str = "run",
                         kind: IntensityKind | None = None) -> Footprint:
    """The same, when the operational grams of the IT energy are already known (planner/simulator
    figures are kW × ∫ intensity dt): PUE scales them, embodied and water are added."""
    _nonneg("grams", it_grams)
    intensity = it_grams / it_kwh if it_kwh > 0 else 0.0
    if it_kwh <= 0 and it_grams > 0:
        raise AccountingError(f"grams {it_grams} > 0 with no energy: cannot attribute")
    return footprint(it_kwh, intensity, gpus=gpus, reserved_seconds=reserved_seconds, policy=policy,
                     units=units, unit=unit, kind=kind)


def per_thousand(count: float) -> float:
    """R for 'per 1,000 requests/tokens': the count in thousands."""
    return _nonneg("count", count) / 1000.0


# ------------------------------------------------------------------ savings
@dataclass(frozen=True)
class Savings:
    """Actual against a *stated* counterfactual, both computed on the same intensity data.

    Both figures are stored; ``saved_g`` and ``percent`` derive from them. Embodied
    carbon is the same in both (same hardware for the same time), so it is included in
    the totals but cancels in the difference.
    """

    actual: Footprint
    counterfactual: Footprint
    counterfactual_name: str          # e.g. "run-now", "always-best-variant"

    def __post_init__(self) -> None:
        if self.actual.kind != self.counterfactual.kind:
            raise AccountingError(f"actual is {self.actual.kind} but counterfactual {self.counterfactual_name!r} is "
                                  f"{self.counterfactual.kind}: savings need one intensity kind")
        if not self.counterfactual_name:
            raise AccountingError("counterfactual_name: a savings figure needs a stated counterfactual")

    @property
    def saved_g(self) -> float:
        return self.counterfactual.total_g - self.actual.total_g

    @property
    def percent(self) -> float:
        base = self.counterfactual.total_g
        return 100.0 * self.saved_g / base if base > 0 else 0.0

    def to_json(self) -> dict:
        return {"counterfactual": self.counterfactual_name, "actual": self.actual.to_json(),
                "counterfactualFootprint": self.counterfactual.to_json(),
                "savedGrams": round(self.saved_g, 3), "savedPercent": round(self.percent, 3)}
