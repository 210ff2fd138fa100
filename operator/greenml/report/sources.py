"""Report rows from the two inputs: CR statuses (cluster) and simulator RESULT.json files.

Every figure says what it is (``Row.basis``): a cluster's usage is *measured* (power
model or Prometheus, per the status's ``usage.source``) and its savings are *planned*
(expected vs run-now grams on the same forecast); a simulation's are *simulated* on the
actual intensity series. Savings are only claimed where a counterfactual was recorded.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from greenml.planning.accounting import (
    AccountingError, AccountingPolicy, Footprint, Savings, footprint_from_grams,
)
from greenml.report.model import BudgetUse, PeriodSpend, ReportError, Row
from greenml.timeutil import parse_time

RUN_NOW = "run-now"


def _num(value: Any, where: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ReportError(f"{where}: expected a number, got {value!r}") from None
    if v != v or v < 0:
        raise ReportError(f"{where}: expected a number >= 0, got {value!r}")
    return v


def _fp(where: str, kwh: float, grams: float, gpus: float, seconds: float, policy: AccountingPolicy,
        unit: str = "run") -> Footprint:
    try:
        return footprint_from_grams(kwh, grams, gpus=gpus, reserved_seconds=seconds, policy=policy, unit=unit)
    except AccountingError as exc:
        raise ReportError(f"{where}: {exc}") from None


# ------------------------------------------------------------------ simulator
def rows_from_sim(result: Mapping[str, Any], policy: AccountingPolicy, *, path: str = "RESULT.json",
                  power: Mapping[str, tuple[int, float]] | None = None, namespace: str = "simulation",
                  start: datetime | None = None, end: datetime | None = None) -> list[Row]:
    """Rows of a ``greenml simulate shifting`` RESULT.json (one per job) or ``simulate
    inference`` result (one for the budget, its periods in ``Row.budget``), counting what
    falls in [start, end): a job's runs, a budget's periods that begin there.

    Shifting results carry grams and runs but not the jobs' power: ``power`` maps a job
    name to (gpus, total watts) — from the JOBS.csv the simulator read — unless the result's
    jobs carry ``gpus``/``watts`` themselves. A name "ns/name" puts the job in namespace ns.
    """
    if not isinstance(result, Mapping):
        raise ReportError(f"{path}: expected a JSON object")
    if "jobs" in result:
        if power is not None:
            _check_jobs_match(result["jobs"], power, path)
        rows = [_sim_job(j, i, policy, path, power or {}, namespace, start, end) for i, j in enumerate(result["jobs"])]
        return [r for r in rows if r is not None]
    if "periods" in result:
        return _sim_inference(result, policy, path, namespace, start, end)
    raise ReportError(f"{path}: not a simulator result (no 'jobs' or 'periods')")


def sim_time_range(result: Mapping[str, Any], path: str = "RESULT.json") -> tuple[datetime | None, datetime | None]:
    """The time a simulator result covers: a shifting result's summary start/end, an
    inference result's first step to the end of its last (or, without steps, its first
    period's start to its last period's end); None where it says nothing."""
    def when(value: Any, where: str) -> datetime | None:
        if value in (None, ""):
            return None
        try:
            return parse_time(value)
        except (ValueError, TypeError):
            raise ReportError(f"{path}: {where}: expected an ISO time, got {value!r}") from None
    if not isinstance(result, Mapping):
        return None, None
    steps = result.get("steps")
    if isinstance(steps, list) and len(steps) >= 2 and all(isinstance(s, Mapping) for s in steps[:2]):
        first, second = when(steps[0].get("time"), "steps[0].time"), when(steps[1].get("time"), "steps[1].time")
        last = when(steps[-1].get("time"), "steps[-1].time")
        if first and second and last:
            return first, last + (second - first)
    periods = result.get("periods")
    if isinstance(periods, list) and periods and all(isinstance(p, Mapping) for p in periods):
        return when(periods[0].get("start"), "periods[0].start"), when(periods[-1].get("end"), "periods[-1].end")
    summary = result.get("summary") if isinstance(result.get("summary"), Mapping) else {}
    return when(summary.get("start"), "summary.start"), when(summary.get("end"), "summary.end")


def _overlaps(s: datetime, e: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or e > start) and (end is None or s < end)


def _check_jobs_match(jobs: Any, power: Mapping[str, tuple[int, float]], path: str) -> None:
    """The JOBS.csv (--jobs) must be the one the simulator read: the same jobs as the result
    (the simulator reports every job it read), with the GPUs and watts the result carries
    (else its figures are not these jobs')."""
    named = {j.get("name"): j for j in jobs if isinstance(j, Mapping)} if isinstance(jobs, list) else {}
    missing = sorted((n for n in named if n not in power), key=str)
    if missing:
        raise ReportError(f"--jobs does not match {path}: {len(missing)} job(s) of the result are not in it "
                          f"({', '.join(map(str, missing[:5]))}); pass the JOBS.csv the simulation ran")
    extra = sorted(n for n in power if n not in named)
    if extra:
        raise ReportError(f"--jobs does not match {path}: {len(extra)} job(s) in it are not in the result "
                          f"({', '.join(extra[:5])}); pass the JOBS.csv the simulation ran")
    for name, j in named.items():
        if "gpus" in j and "watts" in j:
            gpus, watts = power[name]
            try:
                same = int(j["gpus"]) == gpus and abs(float(j["watts"]) - watts) <= 1e-6 * max(1.0, watts)
            except (TypeError, ValueError):
                continue   # _sim_job reports the malformed field
            if not same:
                raise ReportError(f"--jobs does not match {path}: job {name!r} has {gpus} GPUs, {watts:g} W in "
                                  f"--jobs but {j['gpus']} GPUs, {j['watts']} W in the result")


def _sim_job(j: Mapping[str, Any], i: int, policy: AccountingPolicy, path: str,
             power: Mapping[str, tuple[int, float]], namespace: str,
             start: datetime | None = None, end: datetime | None = None) -> Row | None:
    """The job's row, or None when it has runs and none of them overlaps [start, end)."""
    where = f"{path}: jobs[{i}]"
    name = j.get("name")
    if not name:
        raise ReportError(f"{where}.name: missing")
    if "gpus" in j and "watts" in j:
        gpus, watts = _num(j["gpus"], f"{where}.gpus"), _num(j["watts"], f"{where}.watts")
    elif name in power:
        gpus, watts = power[name]
    else:
        raise ReportError(f"{where}: job {name!r} has no power in the result; pass the simulator's "
                          f"JOBS.csv (--jobs) so energy and embodied carbon can be computed")
    seconds, inside = 0.0, not j.get("runs")
    for k, run in enumerate(j.get("runs") or []):
        try:
            s, e = parse_time(run[0]), parse_time(run[1])
        except (ValueError, TypeError, IndexError):
            raise ReportError(f"{where}.runs[{k}]: expected [start, end] ISO times, got {run!r}") from None
        seconds += max(0.0, (e - s).total_seconds())
        inside = inside or _overlaps(s, e, start, end)
    if not inside:
        return None
    kwh = watts * seconds / 3.6e6
    grams = _num(j.get("grams"), f"{where}.grams")
    run_now = _num(j.get("run_now_grams"), f"{where}.run_now_grams")
    ns, _, short = name.rpartition("/")
    actual = _fp(where, kwh, grams, gpus, seconds, policy)
    # run-now uses the same energy and hardware time (the same work), on the same actual series
    cf = _fp(where, kwh, run_now, gpus, seconds, policy)
    note = "" if j.get("deadline_met", True) else "deadline missed"
    return Row(ns or namespace, short, "TrainingJob", actual, Savings(actual, cf, RUN_NOW), "simulated", note)


PERIOD_SECONDS = {3600: "hour", 86400: "day", 7 * 86400: "week"}


def _sim_inference(result: Mapping[str, Any], policy: AccountingPolicy, path: str, namespace: str,
                   start: datetime | None = None, end: datetime | None = None) -> list[Row]:
    """One row for the budget (a workload, not a row per period): its periods that begin
    in [start, end) summed, and each one's spend against the budget in ``Row.budget``."""
    name = str(result.get("name") or Path(path).stem)
    kwh = grams = 0.0
    spent: list[PeriodSpend] = []
    limits: set[tuple[str, float]] = set()
    kinds: set[str] = set()
    said_over = 0
    for i, p in enumerate(result["periods"]):
        where = f"{path}: periods[{i}]"
        if not isinstance(p, Mapping):
            raise ReportError(f"{where}: expected an object")
        try:
            ps, pe = parse_time(p["start"]), parse_time(p["end"])
        except (KeyError, ValueError, TypeError):
            raise ReportError(f"{where}: expected start and end ISO times") from None
        if start is not None and ps < start or end is not None and ps >= end:
            continue
        p_kwh, p_grams = _num(p.get("kwh"), f"{where}.kwh"), _num(p.get("grams"), f"{where}.grams")
        kwh, grams = kwh + p_kwh, grams + p_grams
        complete = p.get("complete", True) is not False
        said_over += p.get("within_budget") is False
        if p.get("budget_grams") is not None:
            limits.add(("g", _num(p["budget_grams"], f"{where}.budget_grams")))
            spent.append(PeriodSpend(ps, pe, p_grams, complete=complete))
        elif p.get("budget_kwh") is not None:
            limits.add(("kWh", _num(p["budget_kwh"], f"{where}.budget_kwh")))
            spent.append(PeriodSpend(ps, pe, p_kwh, complete=complete))
        else:
            spent.append(PeriodSpend(ps, pe, p_grams, complete=complete))
        kinds.add(PERIOD_SECONDS.get(int((pe - ps).total_seconds()), "month"))
    if len(limits) > 1:
        raise ReportError(f"{path}: periods state different budgets {sorted(limits)}")
    (unit, limit), = limits or {("g", None)}
    period = str(result.get("period") or (kinds.pop() if len(kinds) == 1 else "period"))
    use = BudgetUse(period, unit, limit, tuple(spent))
    actual = _fp(f"{path}: periods", kwh, grams, 0, 0, policy, unit="period")
    over = len(spent) - use.within
    if limit is None:     # no budget figures: the result's own verdicts
        over = said_over
    partial = sum(not p.complete for p in spent)
    note = f"{len(spent)} {period} periods, {len(spent) - over} within budget" + (f", {over} OVER BUDGET" if over else "")
    if partial:
        note += f" ({partial} partial: the data starts or ends inside {'it' if partial == 1 else 'them'})"
    return [Row(namespace, name, "InferenceBudget", actual, None, "simulated", note, use)]


def read_jobs_power(path: Path) -> dict[str, tuple[int, float]]:
    """name → (gpus, total watts) from the simulator's JOBS.csv."""
    from greenml.sim.jobs import SimInputError, read_jobs_csv

    try:
        return {j.name: (j.gpus, j.watts) for j in read_jobs_csv(path)}
    except SimInputError as exc:
        raise ReportError(str(exc)) from None


# ------------------------------------------------------------------ cluster
def rows_from_cluster(trainingjobs: Iterable[Mapping[str, Any]], budgets: Iterable[Mapping[str, Any]],
                      policy: AccountingPolicy, *, start: datetime | None = None,
                      end: datetime | None = None, workloads: Iterable[Mapping[str, Any]] = ()) -> list[Row]:
    """Rows from CR bodies as the API returns them; objects created in [start, end).
    ``workloads``: Kueue Workloads; those greenml's carbon-window check keeps a record on."""
    rows = []
    for obj in trainingjobs:
        if _in_period(obj, start, end):
            rows.append(_tj_row(obj, policy))
    for obj in budgets:
        if _in_period(obj, start, end):
            rows.append(_ib_row(obj, policy))
    for obj in workloads:
        if _in_period(obj, start, end):
            row = _wl_row(obj, policy)
            if row is not None:
                rows.append(row)
    return rows


def _in_period(obj: Mapping[str, Any], start: datetime | None, end: datetime | None) -> bool:
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    if not created:
        return True
    t = parse_time(created)
    return (start is None or t >= start) and (end is None or t < end)


def _ident(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "?"), f"{obj.get('kind', '?')} {meta.get('namespace')}/{meta.get('name')}"


def _tj_row(obj: Mapping[str, Any], policy: AccountingPolicy) -> Row:
    from greenml.services.trainingjob import template_gpus

    ns, name, where = _ident(obj)
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    usage, progress, plan = status.get("usage") or {}, status.get("progress") or {}, status.get("plan") or {}
    power = spec.get("power") or {}
    gpus = power.get("gpus")
    if gpus is None:
        gpus = template_gpus(spec.get("template") or {})
    kwh = _num(usage.get("energyKwh", 0.0), f"{where}: status.usage.energyKwh")
    grams = _num(usage.get("grams", 0.0), f"{where}: status.usage.grams")
    seconds = _num(progress.get("runSeconds", 0.0), f"{where}: status.progress.runSeconds")
    if usage.get("wallSeconds") is not None:      # carbon-aware caps: the GPUs were held for the run's wall time
        seconds = _num(usage["wallSeconds"], f"{where}: status.usage.wallSeconds")
    actual = _fp(where, kwh, grams, float(gpus), seconds, policy)
    savings = _planned_savings(where, "status.plan", plan, kwh, policy)
    note = f"phase {status.get('phase', '?')}; energy: {usage.get('source', 'unknown')}"
    if savings is not None:
        note += f"; savings planned on the {plan.get('forecastSource', '?')} forecast"
    return Row(ns, name, "TrainingJob", actual, savings, "measured", note)


def _planned_savings(where: str, field: str, plan: Mapping[str, Any], kwh: float,
                     policy: AccountingPolicy) -> Savings | None:
    """The plan's expected vs run-now grams (``field``: where they are, for errors); None when
    the plan does not state both."""
    if plan.get("expectedGrams") is None or plan.get("runNowGrams") is None:
        return None
    planned_kwh = kwh if kwh > 0 else 1.0     # the plan's grams are for the whole run; energy cancels
    exp = _fp(where, planned_kwh, _num(plan["expectedGrams"], f"{where}: {field}.expectedGrams"), 0, 0, policy)
    cf = _fp(where, planned_kwh, _num(plan["runNowGrams"], f"{where}: {field}.runNowGrams"), 0, 0, policy)
    return Savings(exp, cf, RUN_NOW)


def _wl_row(obj: Mapping[str, Any], policy: AccountingPolicy) -> Row | None:
    """A Kueue Workload's row from the record greenml's check keeps on it (annotation
    ``greenml.io/carbon-window``: usage and the last plan); None without a record."""
    from greenml.services.kueue import ANN_RECORD

    meta = obj.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(ANN_RECORD)
    if not raw:
        return None
    ns, name, where = _ident({**obj, "kind": obj.get("kind") or "Workload"})
    try:
        rec = json.loads(raw)
    except ValueError:
        raise ReportError(f"{where}: annotation {ANN_RECORD}: not JSON") from None
    if not isinstance(rec, Mapping):
        raise ReportError(f"{where}: annotation {ANN_RECORD}: expected a JSON object")
    usage, plan = rec.get("usage") or {}, rec.get("plan") or {}
    field = f"annotation {ANN_RECORD}"
    kwh = _num(usage.get("energyKwh", 0.0), f"{where}: {field} usage.energyKwh")
    grams = _num(usage.get("grams", 0.0), f"{where}: {field} usage.grams")
    seconds = _num(usage.get("runSeconds", 0.0), f"{where}: {field} usage.runSeconds")
    gpus = _num(rec.get("gpus", 0), f"{where}: {field} gpus")
    actual = _fp(where, kwh, grams, gpus, seconds, policy)
    savings = _planned_savings(where, f"{field} plan", plan, kwh, policy)
    owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    note = f"Kueue {rec.get('phase', '?')}, check {rec.get('state', '?')} ({rec.get('reason', '?')})"
    if owner:
        note += f"; {owner.get('kind')} {owner.get('name')}"
    note += f"; energy: {usage.get('source', 'unknown')}"
    if savings is not None:
        note += f"; savings planned on the {plan.get('forecastSource', '?')} forecast"
    return Row(ns, name, "Workload", actual, savings, "measured", note)


def _ib_row(obj: Mapping[str, Any], policy: AccountingPolicy) -> Row:
    ns, name, where = _ident(obj)
    status = obj.get("status") or {}
    spend = status.get("spend") or {}
    kwh = _num(spend.get("energyKwh", 0.0), f"{where}: status.spend.energyKwh")
    grams = _num(spend.get("grams", 0.0), f"{where}: status.spend.grams")
    actual = _fp(where, kwh, grams, 0, 0, policy, unit="period")
    note = (f"current period from {spend.get('periodStart', '?')}; variant {status.get('activeVariant', '?')}; "
            "embodied not attributed (GPUs per replica not in status)")
    return Row(ns, name, "InferenceBudget", actual, None, "measured", note, _cluster_budget(obj, where))


def _cluster_budget(obj: Mapping[str, Any], where: str) -> BudgetUse | None:
    """The spec's budget and the status's current period (what the API keeps)."""
    budget = (obj.get("spec") or {}).get("budget") or {}
    spend = (obj.get("status") or {}).get("spend") or {}
    if budget.get("carbonGrams") is not None:
        unit, limit = "g", _num(budget["carbonGrams"], f"{where}: spec.budget.carbonGrams")
        spent, projected = spend.get("grams", 0.0), spend.get("projectedGrams")
    elif budget.get("energyKWh") is not None:
        unit, limit = "kWh", _num(budget["energyKWh"], f"{where}: spec.budget.energyKWh")
        spent, projected = spend.get("energyKwh", 0.0), spend.get("projectedKwh")
    else:
        return None

    def when(key: str) -> datetime | None:
        try:
            return parse_time(spend[key]) if spend.get(key) else None
        except (ValueError, TypeError):
            raise ReportError(f"{where}: status.spend.{key}: expected an ISO time, got {spend[key]!r}") from None
    period = PeriodSpend(when("periodStart"), when("periodEnd"), _num(spent, f"{where}: status.spend"),
                         None if projected is None else _num(projected, f"{where}: status.spend.projected"))
    return BudgetUse(str(budget.get("period", "day")), unit, limit, (period,))


def list_items(payload: Mapping[str, Any], what: str) -> Sequence[Mapping[str, Any]]:
    items = payload.get("items")
    if not isinstance(items, list):
        raise ReportError(f"{what}: the API returned no item list")
    return items
