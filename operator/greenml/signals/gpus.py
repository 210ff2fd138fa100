"""Default GPU power table for the power model (energy = GPUs × watts × time) used when
no measurement is available.

``tdp_w``: board power from the vendor datasheets (NVIDIA product briefs: A100 SXM4
400 W / PCIe 300 W, H100 SXM5 700 W / PCIe 350 W, H200 SXM 700 W, L40S 350 W, L4 72 W,
T4 70 W, A10 150 W, A40 300 W, V100 SXM2 300 W / PCIe 250 W, P100 250 W, Quadro RTX 6000
260 W as capped in the Zeus sweep).

``typical_w``: average draw while training. Measured for A40, V100, P100 and Quadro RTX
6000: the mean ``avg_gpu_power_w`` at the maximum power limit over the six workloads of
the Zeus power-limit sweep (You, Chung, Chowdhury, NSDI '23; ml-energy/zeus, Apache-2.0,
``zeus_nsdi23_power_limit_sweep.csv``): A40 184.3 W, V100 149.1 W, P100 105.4 W,
RTX 6000 165.9 W. For the other models, ``typical_w = TDP × 0.62``, the mean of the
measured/TDP ratios of the three recent GPUs in that sweep (A40 0.614, V100 0.596,
RTX 6000 0.638); P100 (0.42) is left out as a generation older.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

TYPICAL_FRACTION_OF_TDP = 0.62


@dataclass(frozen=True)
class GPUSpec:
    model: str
    tdp_w: float
    typical_w: float
    measured: bool  # typical_w measured (Zeus) rather than TDP × 0.62


def _spec(model: str, tdp: float, measured_w: float | None = None) -> GPUSpec:
    if measured_w is not None:
        return GPUSpec(model, tdp, measured_w, True)
    return GPUSpec(model, tdp, round(tdp * TYPICAL_FRACTION_OF_TDP, 1), False)


GPUS: dict[str, GPUSpec] = {s.model: s for s in (
    _spec("H200", 700),
    _spec("H100-SXM", 700),
    _spec("H100-PCIE", 350),
    _spec("A100-SXM", 400),
    _spec("A100-PCIE", 300),
    _spec("L40S", 350),
    _spec("L4", 72),
    _spec("T4", 70),
    _spec("A10", 150),
    _spec("A40", 300, 184.3),
    _spec("V100-SXM", 300),
    _spec("V100", 250, 149.1),
    _spec("P100", 250, 105.4),
    _spec("RTX6000", 260, 165.9),
)}

# bare family names resolve to the most common data-centre variant
_FAMILY_DEFAULT = {"H100": "H100-SXM", "A100": "A100-SXM"}


def normalise(name: str) -> str:
    """``NVIDIA-A100-SXM4-80GB`` / ``Tesla V100-PCIE-16GB`` / ``Quadro RTX 6000`` → a table key prefix form."""
    s = re.sub(r"[\s_]+", "-", name.strip().upper())
    s = re.sub(r"^(NVIDIA-)?(TESLA-|QUADRO-)?", "", s)
    s = s.replace("RTX-6000", "RTX6000").replace("SXM4", "SXM").replace("SXM5", "SXM").replace("SXM2", "SXM")
    return s


def lookup(name: str) -> GPUSpec | None:
    """The table entry for a GPU product name (node label ``nvidia.com/gpu.product`` or
    a user's spec), by longest matching key; None when unknown."""
    s = normalise(name)
    for key in sorted(GPUS, key=len, reverse=True):
        if s == key or s.startswith(key + "-") or s.startswith(key):
            if key in ("A10", "L4") and s[len(key):len(key) + 1].isdigit():  # A100 is not A10; L40 is not L4
                continue
            return GPUS[key]
    fam = next((f for f in _FAMILY_DEFAULT if s.startswith(f)), None)
    return GPUS[_FAMILY_DEFAULT[fam]] if fam else None


def watts_table() -> Mapping[str, float]:
    """Typical watts per GPU by model key (what the operator's Defaults consume)."""
    return {k: v.typical_w for k, v in GPUS.items()}
