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

Partial coverage: DCGM series are per GPU. Given the power model (so the job's GPU count),
a DCGM reading that matched fewer GPUs than the job has (an exporter missing on a node, a
GPU not labelled with the pod) is topped up with the model for the missing GPUs, labelled
``coverage = {"gpus_measured": n, "gpus": N}`` and ``estimate=True``; without a model the
count is still reported (``coverage`` with ``gpus: None``).

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


# (source, queries whose results add up, scale to the unit, query counting the GPUs measured)
Query = tuple[str, tuple[str, ...], float, "str | None"]


@dataclass(frozen=True)
class Reading:
    """A measured (or modelled) quantity and who served it."""

    value: float
    unit: str                          # "J" or "W"
    source: str                        # "promql" | "dcgm" | "dcgm-power" | "kepler" | "model"
    estimate: bool = False
    fallback: tuple[dict, ...] = field(default=())
    query: str | None = None
    coverage: dict | None = None       # per-GPU sources: {"gpus_measured": n, "gpus": N or None}

    @property
    def partial(self) -> bool:
        """Measured for fewer GPUs than the job has (the rest from the power model)."""
        c = self.coverage or {}
        return c.get("gpus") is not None and c.get("gpus_measured", 0) < c["gpus"]


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

    def _energy_queries(self, namespace: str, pods: str, rng: str) -> list[Query]:
        """Per backend, in policy order: (source, queries whose results add up, scale to
        joules, the query counting the GPUs it measured or None)."""
        p = self.policy
        dcgm = self._sel(p.namespace_label, p.pod_label, namespace, pods)
        kep = self._sel("pod_namespace", "pod_name", namespace, pods)
        seconds = float(rng[:-1])
        out: list[Query] = []
        for b in p.backends:
            if b == "promql" and p.energy_query:
                q = p.energy_query.replace("$namespace", _quote(namespace)).replace("$pods", _quote(pods))
                out.append(("promql", (q.replace("$range", rng),), 1.0, None))
            elif b == "dcgm":
                for source, metric, query, scale in (
                        ("dcgm", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "increase", 1e-3),
                        ("dcgm-power", "DCGM_FI_DEV_POWER_USAGE", "avg_over_time", seconds)):
                    out.append((source, (f"sum({query}({metric}{dcgm}[{rng}]))",), scale,
                                f"count(max_over_time({metric}{dcgm}[{rng}]))"))
            elif b == "kepler":   # GPU joules only: never the CPU/DRAM counters (module docstring)
                out.append(("kepler", (f"sum(increase(kepler_pod_gpu_joules_total{kep}[{rng}]))",), 1.0, None))
        return out

    def _power_queries(self, namespace: str, pods: str) -> list[Query]:
        p = self.policy
        dcgm = self._sel(p.namespace_label, p.pod_label, namespace, pods)
        kep = self._sel("pod_namespace", "pod_name", namespace, pods)
        out: list[Query] = []
        for b in p.backends:
            if b == "promql" and p.power_query:
                q = p.power_query.replace("$namespace", _quote(namespace)).replace("$pods", _quote(pods))
                out.append(("promql", (q,), 1.0, None))
            elif b == "dcgm":
                out.append(("dcgm", (f"sum(DCGM_FI_DEV_POWER_USAGE{dcgm})",), 1.0, f"count(DCGM_FI_DEV_POWER_USAGE{dcgm})"))
            elif b == "kepler":
                out.append(("kepler", (f"sum(rate(kepler_pod_gpu_joules_total{kep}[1m]))",), 1.0, None))
        return out

    def _first(self, queries: list[Query], at: datetime | None, unit: str, model: PowerModel | None,
               model_factor: float, model_what: str | None) -> Reading:
        """The first backend that answers; ``model_factor``: the model's watts to the unit
        (seconds for joules, 1 for watts)."""
        failures: list[dict] = []
        if self.prom is None:
            failures.append({"link": "prometheus", "reason": "NotConfigured", "message": "no Prometheus URL"})
        else:
            for source, qs, scale, count_query in queries:
                try:
                    parts = [_scalar(self.prom.instant(q, at), source) for q in qs]
                    measured = _scalar(self.prom.instant(count_query, at), source) if count_query else None
                except SignalError as exc:
                    failures.append({"link": source, "reason": exc.reason, "message": str(exc)})
                    continue
                if all(v is None for v in parts):
                    failures.append({"link": source, "reason": "NoData", "message": "query matched no series"})
                    continue
                total = sum(v for v in parts if v is not None) * scale
                query = " + ".join(qs)
                if measured is None:
                    return Reading(total, unit, source, fallback=tuple(failures), query=query)
                coverage = {"gpus_measured": int(measured), "gpus": model.gpus if model else None}
                missing = (model.gpus - measured) if model else 0.0
                if missing > 0:   # partial: the model for the GPUs no series measured
                    total += missing * model.watts_per_gpu * model_factor   # type: ignore[union-attr]
                    query += f" + model for {missing:g} of {model.gpus:g} GPU"  # type: ignore[union-attr]
                return Reading(total, unit, source, estimate=missing > 0, fallback=tuple(failures), query=query,
                               coverage=coverage)
        if model is None:
            summary = "; ".join(f"{f['link']}: {f['reason']}" for f in failures)
            raise SignalError(f"no energy source and no power model ({summary})", reason="Unavailable")
        return Reading(model.watts * model_factor, unit, "model", estimate=True, fallback=tuple(failures),
                       query=model_what)

    def energy_joules(self, namespace: str, pods_regex: str, start: datetime, end: datetime, *,
                      model: PowerModel | None = None) -> Reading:
        """Energy of the matching pods over [start, end)."""
        start, end = ensure_utc(start), ensure_utc(end)
        seconds = int(round((end - start).total_seconds()))
        if seconds <= 0:
            raise ValueError(f"energy interval must be positive: {start.isoformat()} .. {end.isoformat()}")
        queries = self._energy_queries(namespace, pods_regex, f"{seconds}s")
        return self._first(queries, end, "J", model, float(seconds),
                           None if model is None else f"{model.gpus:g} GPU x {model.watts_per_gpu:g} W x {seconds} s")

    def power_watts_now(self, namespace: str, pods_regex: str, *, at: datetime | None = None,
                        model: PowerModel | None = None) -> Reading:
        """Current power of the matching pods."""
        return self._first(self._power_queries(namespace, pods_regex), at, "W", model, 1.0,
                           None if model is None else f"{model.gpus:g} GPU x {model.watts_per_gpu:g} W")
