"""The operator's Prometheus metrics: one registry, declared once, documented from code.

Conventions (Prometheus naming guide; Kueue does the same): ``greenml_`` prefix,
``_total`` counters, base units (seconds, joules, grams — CO2e has no SI base unit;
grams is the unit of every CO2e figure in this project), and bounded label sets:
``namespace``, ``name``, ``kind``, ``zone``, ``source``, ``reason`` … — never pod
or object UIDs. Objects' series are removed when the object goes (``forget``).

``SPECS`` is the single declaration: ``Metrics`` builds its collectors from it and
``markdown_table()`` renders docs/metrics.md from it (``python -m greenml.metrics >
docs/metrics.md``; a unit test fails when the file is stale).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest, start_http_server,
)

from greenml.planning.accounting import AccountingPolicy, embodied_grams, kwh_to_joules

# the *_created series double every counter's cardinality and no dashboard uses them
disable_created_metrics()

PREFIX = "greenml_"
OBJECT = ("namespace", "name", "kind")
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PLANNING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BUDGET_FIGURES = ("spent", "remaining", "projected", "limit")


@dataclass(frozen=True)
class MetricSpec:
    name: str                 # without the greenml_ prefix
    type: str                 # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def full_name(self) -> str:
        return PREFIX + self.name


def _budget_specs() -> list[MetricSpec]:
    unit_help = {"grams": "gCO2e", "joules": "J"}
    text = {"spent": "spent so far in the current period", "remaining": "left in the current period",
            "projected": "projected for the whole period at the current pace", "limit": "the period's budget"}
    return [MetricSpec(f"budget_{fig}_{unit}", "gauge", f"InferenceBudget: {unit_help[unit]} {text[fig]}",
                       ("namespace", "name"))
            for unit in ("grams", "joules") for fig in BUDGET_FIGURES]


TRAININGJOB_BOARD = "trainingjobs"     # the replan metrics' board label of the TrainingJob board


def kueue_board(cluster_queue: str) -> str:
    """The replan metrics' board label of a ClusterQueue's board (the Kueue check plans each)."""
    return f"kueue/{cluster_queue}"


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("build_info", "gauge", "Always 1; the operator's version", ("version",)),
    # signals
    MetricSpec("grid_intensity_grams_per_kwh", "gauge",
               "Grid carbon intensity now (gCO2e/kWh), as the planner sees it", ("zone", "source", "kind")),
    MetricSpec("grid_intensity_forecast_min_grams_per_kwh", "gauge",
               "Lowest forecast intensity over the planning horizon (gCO2e/kWh)", ("zone", "source", "kind")),
    MetricSpec("grid_intensity_forecast_max_grams_per_kwh", "gauge",
               "Highest forecast intensity over the planning horizon (gCO2e/kWh)", ("zone", "source", "kind")),
    MetricSpec("signals_degraded", "gauge",
               "1 while the zone's forecast comes from a fallback link after a failure, else 0", ("zone", "link")),
    MetricSpec("signal_kind_changed", "gauge",
               "1 while the zone's intensity is of another kind than its provider's (a marginal signal replaced "
               "by an average profile), else 0", ("zone", "kind", "provider_kind")),
    MetricSpec("provider_errors_total", "counter",
               "Carbon-signal failures by provider and reason (Timeout, Unauthorized, RateLimited, …)",
               ("provider", "reason")),
    MetricSpec("signal_fallbacks_total", "counter",
               "Forecasts served by a fallback link (forecaster, embedded) instead of the provider", ("zone", "link")),
    MetricSpec("forecast_unavailable_total", "counter",
               "Replans where no link at all could serve a zone's forecast", ("zone", "reason")),
    # planning and control loop
    MetricSpec("decisions_total", "counter", "Decisions taken, by object kind and reason", ("kind", "reason")),
    MetricSpec("reconcile_duration_seconds", "histogram", "Time of one reconcile of one object", ("kind",),
               RECONCILE_BUCKETS),
    MetricSpec("reconcile_errors_total", "counter",
               "Reconciles that failed and were rescheduled with backoff (the object keeps its wake-ups)",
               ("kind", "error")),
    MetricSpec("planning_duration_seconds", "histogram",
               "Time of one replan of a whole plan board (board: trainingjobs, or kueue/CLUSTERQUEUE)", ("board",),
               PLANNING_BUCKETS),
    MetricSpec("replans_total", "counter",
               "Replans of a plan board (board: trainingjobs, or kueue/CLUSTERQUEUE)", ("board",)),
    MetricSpec("planned_jobs", "gauge",
               "TrainingJobs (or a ClusterQueue's Workloads) on the plan board at its last replan", ("board",)),
    # per object
    MetricSpec("object_phase", "gauge", "1 for the object's current phase, 0 for the others it had",
               OBJECT + ("phase",)),
    MetricSpec("energy_joules", "gauge", "IT energy used so far (J)", OBJECT),
    MetricSpec("carbon_operational_grams", "gauge", "Operational carbon so far: E × I with PUE (gCO2e)", OBJECT),
    MetricSpec("carbon_embodied_grams", "gauge", "Embodied carbon of the reserved GPUs/servers so far (gCO2e)", OBJECT),
    MetricSpec("carbon_expected_grams", "gauge", "Planned operational carbon of the whole run (gCO2e)", OBJECT),
    MetricSpec("carbon_counterfactual_grams", "gauge",
               "The counterfactual's operational carbon on the same forecast (run-now for jobs) (gCO2e)",
               OBJECT + ("counterfactual",)),
    *_budget_specs(),
    MetricSpec("active_variant_info", "gauge", "1 for the InferenceBudget's active model variant",
               ("namespace", "name", "variant")),
)


class Metrics:
    """The operator's collectors on their own registry (tests make as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None, version: str | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._m: dict[str, Counter | Gauge | Histogram] = {}
        for s in SPECS:
            self._m[s.name] = _build(s, self.registry)
        self._lock = threading.Lock()
        self._phases: dict[tuple[str, str, str], set[str]] = {}
        self._zone_labels: dict[str, tuple[str, str]] = {}
        self._degraded: dict[str, str] = {}
        self._kinds: dict[str, tuple[str, str]] = {}
        self._variants: dict[tuple[str, str], str] = {}
        self._counterfactual: dict[tuple[str, str, str], str] = {}
        self._replans_seen: dict[str, int] = {}
        if version is None:
            from greenml import __version__ as version
        self._m["build_info"].labels(version=version).set(1)

    def __getitem__(self, name: str):
        return self._m[name]

    # ------------------------------------------------------------ signals
    def zone_intensity(self, zone: str, source: str, kind: str, now: float, fmin: float, fmax: float) -> None:
        """Intensity now and the forecast's range; a new source replaces the zone's old series."""
        with self._lock:
            old = self._zone_labels.get(zone)
            if old is not None and old != (source, kind):
                for n in ("grid_intensity_grams_per_kwh", "grid_intensity_forecast_min_grams_per_kwh",
                          "grid_intensity_forecast_max_grams_per_kwh"):
                    _remove(self._m[n], zone, *old)
            self._zone_labels[zone] = (source, kind)
        self._m["grid_intensity_grams_per_kwh"].labels(zone, source, kind).set(now)
        self._m["grid_intensity_forecast_min_grams_per_kwh"].labels(zone, source, kind).set(fmin)
        self._m["grid_intensity_forecast_max_grams_per_kwh"].labels(zone, source, kind).set(fmax)

    def zone_link(self, zone: str, link: str, failures: Sequence[Mapping[str, str]]) -> None:
        """Which link served the zone's forecast, after which failures (a new forecast fetch)."""
        for f in failures:
            self._m["provider_errors_total"].labels(f.get("link", "unknown"), f.get("reason", "Unknown")).inc()
        if failures:
            self._m["signal_fallbacks_total"].labels(zone, link).inc()
        with self._lock:
            old = self._degraded.get(zone)
            if old is not None and old != link:
                _remove(self._m["signals_degraded"], zone, old)
            self._degraded[zone] = link
        self._m["signals_degraded"].labels(zone, link).set(1 if failures else 0)

    def kind_changed(self, zone: str, kind: str, provider_kind: str) -> None:
        """The kind served vs the provider's (signals.chain.SignalInfo): one series per zone."""
        with self._lock:
            old = self._kinds.get(zone)
            if old is not None and old != (kind, provider_kind):
                _remove(self._m["signal_kind_changed"], zone, *old)
            self._kinds[zone] = (kind, provider_kind)
        self._m["signal_kind_changed"].labels(zone, kind, provider_kind).set(1 if kind != provider_kind else 0)

    def forecast_unavailable(self, zone: str, reason: str, failures: Sequence[Mapping[str, str]] = ()) -> None:
        for f in failures:
            self._m["provider_errors_total"].labels(f.get("link", "unknown"), f.get("reason", "Unknown")).inc()
        self._m["forecast_unavailable_total"].labels(zone, reason).inc()

    # ------------------------------------------------------------ control loop
    def decision(self, kind: str, reason: str) -> None:
        self._m["decisions_total"].labels(kind, reason).inc()

    @contextmanager
    def reconcile_timer(self, kind: str) -> Iterator[None]:
        with self._m["reconcile_duration_seconds"].labels(kind).time():
            yield

    def reconcile_error(self, kind: str, error: str) -> None:
        self._m["reconcile_errors_total"].labels(kind, error).inc()

    def replan(self, replans: int, duration_s: float, jobs: int, board: str = TRAININGJOB_BOARD) -> bool:
        """Record a board's replan once (``replans`` is that board's running count). True if new."""
        with self._lock:
            seen = self._replans_seen.get(board, 0)
            if replans <= seen:
                return False
            self._replans_seen[board] = replans
        self._m["replans_total"].labels(board).inc(replans - seen)
        self._m["planning_duration_seconds"].labels(board).observe(duration_s)
        self._m["planned_jobs"].labels(board).set(jobs)
        return True

    # ------------------------------------------------------------ objects
    def phase(self, namespace: str, name: str, kind: str, phase: str) -> None:
        key = (namespace, name, kind)
        with self._lock:
            seen = self._phases.setdefault(key, set())
            seen.add(phase)
            known = sorted(seen)
        for p in known:
            self._m["object_phase"].labels(namespace, name, kind, p).set(1 if p == phase else 0)

    def usage(self, namespace: str, name: str, kind: str, *, energy_j: float, operational_g: float,
              embodied_g: float) -> None:
        self._m["energy_joules"].labels(namespace, name, kind).set(energy_j)
        self._m["carbon_operational_grams"].labels(namespace, name, kind).set(operational_g)
        self._m["carbon_embodied_grams"].labels(namespace, name, kind).set(embodied_g)

    def plan(self, namespace: str, name: str, kind: str, *, expected_g: float, counterfactual_g: float,
             counterfactual: str = "run-now") -> None:
        key = (namespace, name, kind)
        with self._lock:
            old = self._counterfactual.get(key)
            if old is not None and old != counterfactual:
                _remove(self._m["carbon_counterfactual_grams"], namespace, name, kind, old)
            self._counterfactual[key] = counterfactual
        self._m["carbon_expected_grams"].labels(namespace, name, kind).set(expected_g)
        self._m["carbon_counterfactual_grams"].labels(namespace, name, kind, counterfactual).set(counterfactual_g)

    def budget(self, namespace: str, name: str, *, grams: Mapping[str, float | None] | None = None,
               joules: Mapping[str, float | None] | None = None) -> None:
        """Budget figures by unit: keys of ``grams``/``joules`` are spent, remaining, projected, limit
        (None or missing: not set — an energy-only budget has no grams limit)."""
        for unit, figures in (("grams", grams or {}), ("joules", joules or {})):
            for fig in BUDGET_FIGURES:
                g = self._m[f"budget_{fig}_{unit}"]
                v = figures.get(fig)
                if v is None:
                    _remove(g, namespace, name)
                else:
                    g.labels(namespace, name).set(v)

    def active_variant(self, namespace: str, name: str, variant: str) -> None:
        key = (namespace, name)
        with self._lock:
            old = self._variants.get(key)
            if old is not None and old != variant:
                _remove(self._m["active_variant_info"], namespace, name, old)
            self._variants[key] = variant
        self._m["active_variant_info"].labels(namespace, name, variant).set(1)

    def forget(self, namespace: str, name: str, kind: str) -> None:
        """Drop every series of an object that is gone (bounded cardinality)."""
        with self._lock:
            phases = self._phases.pop((namespace, name, kind), set())
            cf = self._counterfactual.pop((namespace, name, kind), None)
            variant = self._variants.pop((namespace, name), None) if kind == "InferenceBudget" else None
        for p in phases:
            _remove(self._m["object_phase"], namespace, name, kind, p)
        for n in ("energy_joules", "carbon_operational_grams", "carbon_embodied_grams", "carbon_expected_grams"):
            _remove(self._m[n], namespace, name, kind)
        if cf is not None:
            _remove(self._m["carbon_counterfactual_grams"], namespace, name, kind, cf)
        if kind == "InferenceBudget":
            self.budget(namespace, name)
            if variant is not None:
                _remove(self._m["active_variant_info"], namespace, name, variant)

    # ------------------------------------------------------------ exposition
    def render(self) -> bytes:
        return generate_latest(self.registry)


# ------------------------------------------------------------------ recording helpers for the controllers
def record_decision(metrics: Metrics, kind: str, namespace: str, name: str, status_patch: Mapping) -> None:
    """After a reconcile: count the decision (when one was recorded) and set the phase."""
    last = status_patch.get("lastDecision")
    if last:
        metrics.decision(kind, str(last.get("reason") or "Unknown"))
    phase = status_patch.get("phase")
    if phase:
        metrics.phase(namespace, name, kind, str(phase))


def record_board(metrics: Metrics, board, name: str = TRAININGJOB_BOARD) -> None:
    """A new replan of a plan board (``name``: its board label): duration, jobs, and what each
    zone's forecast came from."""
    stats = board.stats
    if not metrics.replan(stats.replans, stats.last_duration_s, stats.last_jobs, name):
        return
    for zone, sig in dict(board.signals).items():
        metrics.zone_intensity(zone, sig.source, sig.kind, sig.now, sig.min, sig.max)
        metrics.zone_link(zone, sig.link, [{"link": link, "reason": reason} for link, reason in sig.fallback])
        if getattr(sig, "info", None) is not None:
            labels = sig.info.labels()
            metrics.kind_changed(zone, labels["kind"], labels["provider_kind"])
    for zone, failure in board.failures().items():
        metrics.forecast_unavailable(zone, failure.reason)


def record_trainingjob(metrics: Metrics, req, status_patch: Mapping, plan, policy: AccountingPolicy) -> None:
    """Usage (energy, operational and embodied grams so far) and the plan of one TrainingJob."""
    _record_usage(metrics, req.namespace, req.name, "TrainingJob", req.gpus, req.watts,
                  status_patch.get("usage") or {}, policy)
    if plan is not None:
        metrics.plan(req.namespace, req.name, "TrainingJob", expected_g=plan.expected_grams * policy.pue,
                     counterfactual_g=plan.run_now_grams * policy.pue, counterfactual="run-now")


def record_workload(metrics: Metrics, namespace: str, name: str, record: Mapping, policy: AccountingPolicy) -> None:
    """The same figures for a Kueue Workload, from its record (``services.kueue.build_record``:
    usage, gpus, watts, and the plan — the last one once it finished), kind ``Workload``."""
    if "usage" not in record:
        return
    _record_usage(metrics, namespace, name, "Workload", int(record.get("gpus") or 0), float(record.get("watts") or 0.0),
                  record["usage"], policy)
    plan = record.get("plan") or {}
    if plan.get("expectedGrams") is not None and plan.get("runNowGrams") is not None:
        metrics.plan(namespace, name, "Workload", expected_g=float(plan["expectedGrams"]) * policy.pue,
                     counterfactual_g=float(plan["runNowGrams"]) * policy.pue, counterfactual="run-now")


def _record_usage(metrics: Metrics, namespace: str, name: str, kind: str, gpus: int, watts: float,
                  usage: Mapping, policy: AccountingPolicy) -> None:
    kwh = float(usage.get("energyKwh") or 0.0)
    if usage.get("countedRunSeconds") is not None:          # carbon-aware caps: energy is not run time × watts
        # the GPUs are held for the run's wall time: a capped stretch takes longer than its work
        run_s = float(usage.get("wallSeconds") or usage["countedRunSeconds"])
    else:
        run_s = kwh_to_joules(kwh) / watts if watts > 0 else 0.0    # usage is run time × the job's watts
    metrics.usage(namespace, name, kind, energy_j=kwh_to_joules(kwh),
                  operational_g=float(usage.get("grams") or 0.0) * policy.pue,
                  embodied_g=embodied_grams(gpus, run_s, policy.hardware))


def _build(s: MetricSpec, registry: CollectorRegistry):
    # prometheus_client appends _total to counters itself: declare them without it
    if s.type == "counter":
        return Counter(s.full_name.removesuffix("_total"), s.help, s.labels, registry=registry)
    if s.type == "gauge":
        return Gauge(s.full_name, s.help, s.labels, registry=registry)
    if s.type == "histogram":
        return Histogram(s.full_name, s.help, s.labels, registry=registry, buckets=s.buckets)
    raise ValueError(f"metric {s.name}: unknown type {s.type!r}")


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


def start_metrics_server(metrics: Metrics, port: int, addr: str = "0.0.0.0") -> object | None:
    """Serve ``/metrics`` on ``port`` (0: disabled). Returns the server (None when disabled)."""
    if port == 0:
        return None
    server, _thread = start_http_server(port, addr=addr, registry=metrics.registry)
    return server


# ------------------------------------------------------------------ docs
def markdown_table(specs: Iterable[MetricSpec] = SPECS) -> str:
    lines = [
        "# Metrics",
        "",
        "<!-- generated by `python -m greenml.metrics > docs/metrics.md`; do not edit by hand -->",
        "",
        "The operator serves these on `/metrics` (port `metricsPort`, setting `GREENML_METRICS_PORT`; 0 turns it "
        "off). Counters end in `_total`, durations are in seconds, energy in joules, carbon in grams CO2e. "
        "Labels are bounded: objects are named by namespace/name/kind, never by UID.",
        "",
        "| metric | type | labels | description |",
        "|---|---|---|---|",
    ]
    for s in specs:
        labels = ", ".join(f"`{x}`" for x in s.labels) or "—"
        lines.append(f"| `{s.full_name}` | {s.type} | {labels} | {s.help.replace('|', '/')} |")
    lines += ["", "Histograms also expose `_bucket`, `_sum` and `_count` series.", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(markdown_table())
