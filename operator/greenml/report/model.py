"""The showback report's data: rows per workload, totals per namespace, the method.

Pure: built from CR statuses (dicts) or a simulator RESULT.json (dict), never from the
API directly — ``greenml.commands.report`` fetches, this module accounts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping, Sequence

from greenml.planning.accounting import AccountingPolicy, Footprint, Savings, empty_footprint


class ReportError(ValueError):
    """Input a report cannot be built from; the message names the file/object and field."""


@dataclass(frozen=True)
class PeriodSpend:
    start: datetime | None
    end: datetime | None
    spent: float                      # in the budget's unit
    projected: float | None = None    # the operator's projection for the whole period (an open period)
    complete: bool = True             # False: the data starts or ends inside the period


@dataclass(frozen=True)
class BudgetUse:
    """An InferenceBudget's spend per period against its budget, in the budget's unit
    (grams for a carbon budget, else kWh)."""
    period: str                       # hour | day | week | month
    unit: str                         # "g" | "kWh"
    limit: float | None               # allowed per period; None: not known (no spec)
    periods: tuple[PeriodSpend, ...]

    @property
    def within(self) -> int:
        return sum(self.limit is None or p.spent <= self.limit * (1 + 1e-9) for p in self.periods)


@dataclass(frozen=True)
class Row:
    namespace: str
    name: str
    kind: str                         # TrainingJob | InferenceBudget | Workload (Kueue)
    actual: Footprint
    savings: Savings | None = None    # None: no counterfactual recorded, no savings claimed
    basis: str = "measured"           # what the figures are: measured | planned (forecast) | simulated
    note: str = ""
    budget: BudgetUse | None = None   # InferenceBudgets: the spend per period against the budget


@dataclass(frozen=True)
class NamespaceTotal:
    namespace: str
    workloads: int
    actual: Footprint
    counterfactual: Footprint | None  # sum over the rows that state one (same name required)
    counterfactual_rows: int
    with_counterfactual_actual_g: float = 0.0   # the actual grams of just those rows

    @property
    def saved_g(self) -> float | None:
        if self.counterfactual is None:
            return None
        return self.counterfactual.total_g - self.with_counterfactual_actual_g

    @property
    def saved_percent(self) -> float | None:
        if self.counterfactual is None or self.counterfactual.total_g <= 0:
            return None
        return 100.0 * (self.saved_g or 0.0) / self.counterfactual.total_g


@dataclass(frozen=True)
class Report:
    title: str
    source: str                      # "cluster <server>" | "simulation <file>"
    start: datetime | None
    end: datetime | None
    policy: AccountingPolicy
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def namespaces(self) -> list[NamespaceTotal]:
        out = []
        for ns in sorted({r.namespace for r in self.rows}):
            rows = [r for r in self.rows if r.namespace == ns]
            out.append(namespace_total(ns, rows, self.policy))
        return out

    def total(self) -> NamespaceTotal:
        return namespace_total("all namespaces", list(self.rows), self.policy)

    def budgets(self) -> list[Row]:
        """The rows that carry a budget, by namespace and name."""
        return sorted((r for r in self.rows if r.budget is not None), key=lambda r: (r.namespace, r.name))


def namespace_total(label: str, rows: Sequence[Row], policy: AccountingPolicy) -> NamespaceTotal:
    water = policy.wue_l_per_kwh is not None
    actual = _sum([r.actual for r in rows], policy, water)
    with_cf = [r for r in rows if r.savings is not None]
    cf = _sum([r.savings.counterfactual for r in with_cf], policy, water) if with_cf else None
    return NamespaceTotal(label, len(rows), actual, cf, len(with_cf),
                          with_counterfactual_actual_g=sum(r.savings.actual.total_g for r in with_cf))


def _sum(fps: Sequence[Footprint], policy: AccountingPolicy, water: bool) -> Footprint:
    total = empty_footprint(policy.kind, water=water)
    for f in fps:
        total = total + f
    return total


def counterfactual_names(rows: Sequence[Row]) -> Mapping[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        if r.savings is not None:
            out[r.savings.counterfactual_name] = out.get(r.savings.counterfactual_name, 0) + 1
    return out
