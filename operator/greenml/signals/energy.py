"""Energy and power of a workload from Prometheus, with a power-model fallback.

Links tried in order (the reading says which served and why earlier ones failed):

1. ``promql``: a user query (per object) with ``$namespace``, ``$pods`` (regex) and
   ``$range`` (e.g. ``3600s``) substituted; it must return joules (energy) or watts (power).
2. ``dcgm``: NVIDIA dcgm-exporter. Energy: ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` (mJ
   counter since boot) through ``increase()``, which handles counter resets; power:
   ``DCGM_FI_DEV_POWER_USAGE`` (W gauge). Joined to pods by the exporter's pod/namespace
   labels (``pod``/``namespace`` by default; ``exported_pod``/``exported_namespace``
   when scraped without honorLabels: set ``EnergyPolicy.pod_label``/``namespace_label``).
   If the counter is absent (older GPUs), energy is the power gauge's mean × duration.
3. ``kepler``: GPU joules only (``kepler_pod_gpu_joules_total``, labels
   ``pod_name``/``pod_namespace``), for Kepler builds that export them. Stock Kepler
   0.10/0.11 exports CPU/DRAM joules only (``kepler_pod_cpu_joules_total``…): a pod's
   CPU energy is not its GPU energy, so it is never counted here — with no GPU series
   the link reports NoData and the next one serves.
4. ``model``: GPUs × watts per GPU × duration (watts from greenml.signals.gpus), marked
   as an estimate.

Sample values must be finite: "NaN"/"+Inf"/"-Inf" (Prometheus sends them as strings)
and negatives fail the link with reason Malformed, and the next link serves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from greenml.signals.base import SignalError
from greenml.signals.promql import Prometheus, _quote, finite
from greenml.timeutil import ensure_utc


@dataclass(frozen=True)
class PowerModel:
    """The fallback: ``gpus`` GPUs drawing ``watts_per_gpu`` each (from the GPU table)."""

    gpus: float
    watts_per_gpu: float

    def __post_init__(self) -> None:
        if self.gpus < 0 or self.watts_per_gpu <= 0:
            raise ValueError("power model needs gpus >= 0 and watts_per_gpu > 0")

    @property
    def watts(self) -> float:
        return self.gpus * self.watts_per_gpu


@dataclass(frozen=True)
class EnergyPolicy:
    backends: tuple[str, ...] = ("promql", "dcgm", "kepler")
    energy_query: str | None = None   # user PromQL returning joules over $range
    power_query: str | None = None    # user PromQL returning watts now
    pod_label: str = "pod"
    namespace_label: str = "namespace"


@dataclass(frozen=True)
class Reading:
    """A measured (or modelled) quantity and who served it."""

    value: float
    unit: str                          # "J" or "W"
    source: str                        # "promql" | "dcgm" | "dcgm-power" | "kepler" | "model"
    estimate: bool = False
    fallback: tuple[dict, ...] = field(default=())
    query: str | None = None


def _scalar(result: list[dict], what: str) -> float | None:
    """Sum of an instant vector; None when empty (nothing matched)."""
    if not result:
        return None
    try:
        raw = [r["value"][1] for r in result]
    except (KeyError, IndexError, TypeError):
        raise SignalError(f"{what}: malformed instant result", reason="Malformed") from None
    vals = [finite(v, what) for v in raw]
    if any(v < 0 for v in vals):
        raise SignalError(f"{what}: negative reading", reason="Malformed")
    return sum(vals)


class EnergyMeter:
    """Measures a workload (namespace + pod-name regex) via Prometheus, else the power model."""

    def __init__(self, prometheus: Prometheus | str | None, policy: EnergyPolicy = EnergyPolicy()) -> None:
        self.prom = Prometheus(prometheus) if isinstance(prometheus, str) else prometheus
        self.policy = policy

    def _sel(self, ns_label: str, pod_label: str, namespace: str, pods: str, extra: str = "") -> str:
        return f'{{{ns_label}="{_quote(namespace)}",{pod_label}=~"{_quote(pods)}"{extra}}}'

    def _energy_queries(self, namespace: str, pods: str, rng: str) -> list[tuple[str, tuple[str, ...], float]]:
        """(source, queries whose results add up, scale to joules) per backend, in policy order."""
        p = self.policy
        dcgm = self._sel(p.namespace_label, p.pod_label, namespace, pods)
        kep = self._sel("pod_namespace", "pod_name", namespace, pods)
        seconds = float(rng[:-1])
        out: list[tuple[str, tuple[str, ...], float]] = []
        for b in p.backends:
            if b == "promql" and p.energy_query:
                q = p.energy_query.replace("$namespace", _quote(namespace)).replace("$pods", _quote(pods))
                out.append(("promql", (q.replace("$range", rng),), 1.0))
            elif b == "dcgm":
                out.append(("dcgm", (f"sum(increase(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{dcgm}[{rng}]))",), 1e-3))
                out.append(("dcgm-power", (f"sum(avg_over_time(DCGM_FI_DEV_POWER_USAGE{dcgm}[{rng}]))",), seconds))
            elif b == "kepler":   # GPU joules only: never the CPU/DRAM counters (module docstring)
                out.append(("kepler", (f"sum(increase(kepler_pod_gpu_joules_total{kep}[{rng}]))",), 1.0))
        return out

    def _power_queries(self, namespace: str, pods: str) -> list[tuple[str, str]]:
        p = self.policy
        dcgm = self._sel(p.namespace_label, p.pod_label, namespace, pods)
        kep = self._sel("pod_namespace", "pod_name", namespace, pods)
        out: list[tuple[str, str]] = []
        for b in p.backends:
            if b == "promql" and p.power_query:
                out.append(("promql", p.power_query.replace("$namespace", _quote(namespace)).replace("$pods", _quote(pods))))
            elif b == "dcgm":
                out.append(("dcgm", f"sum(DCGM_FI_DEV_POWER_USAGE{dcgm})"))
            elif b == "kepler":
                out.append(("kepler", f"sum(rate(kepler_pod_gpu_joules_total{kep}[1m]))"))
        return out

    def _first(self, queries: list[tuple[str, tuple[str, ...], float]], at: datetime | None, unit: str,
               model_value: float | None, model_what: str) -> Reading:
        failures: list[dict] = []
        if self.prom is None:
            failures.append({"link": "prometheus", "reason": "NotConfigured", "message": "no Prometheus URL"})
        else:
            for source, qs, scale in queries:
                try:
                    parts = [_scalar(self.prom.instant(q, at), source) for q in qs]
                except SignalError as exc:
                    failures.append({"link": source, "reason": exc.reason, "message": str(exc)})
                    continue
                if all(v is None for v in parts):
                    failures.append({"link": source, "reason": "NoData", "message": "query matched no series"})
                    continue
                total = sum(v for v in parts if v is not None)
                return Reading(total * scale, unit, source, fallback=tuple(failures), query=" + ".join(qs))
        if model_value is None:
            summary = "; ".join(f"{f['link']}: {f['reason']}" for f in failures)
            raise SignalError(f"no energy source and no power model ({summary})", reason="Unavailable")
        return Reading(model_value, unit, "model", estimate=True, fallback=tuple(failures), query=model_what)

    def energy_joules(self, namespace: str, pods_regex: str, start: datetime, end: datetime, *,
                      model: PowerModel | None = None) -> Reading:
        """Energy of the matching pods over [start, end)."""
        start, end = ensure_utc(start), ensure_utc(end)
        seconds = int(round((end - start).total_seconds()))
        if seconds <= 0:
            raise ValueError(f"energy interval must be positive: {start.isoformat()} .. {end.isoformat()}")
        queries = self._energy_queries(namespace, pods_regex, f"{seconds}s")
        return self._first(queries, end, "J", None if model is None else model.watts * seconds,
                           None if model is None else f"{model.gpus:g} GPU x {model.watts_per_gpu:g} W x {seconds} s")

    def power_watts_now(self, namespace: str, pods_regex: str, *, at: datetime | None = None,
                        model: PowerModel | None = None) -> Reading:
        """Current power of the matching pods."""
        queries = [(s, (q,), 1.0) for s, q in self._power_queries(namespace, pods_regex)]
        return self._first(queries, at, "W", None if model is None else model.watts,
                           None if model is None else f"{model.gpus:g} GPU x {model.watts_per_gpu:g} W")
