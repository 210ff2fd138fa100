"""Bad InferenceBudget input never crashes the operator or blocks other objects.

The same two layers as test_bad_input.py (TrainingJobs):

- hypothesis-generated bodies (wrong types, missing fields, huge values, unicode, zero
  capacities, empty variant lists) and hand-edited or corrupted status through the pure
  path the handler calls — ``parse_spec()`` → ``reconcile()`` (with signals, and with the
  signals lost) → ``deployment_apply_body()``: the only exception ever raised is
  ``InvalidSpec``, its field is a dotted path into the spec, and every decision names a
  declared variant with replicas inside the policy's bounds;
- a handful of bad budgets through the real operator against kmock: each gets phase
  Failed, an ``InvalidSpec`` condition and a Warning Event naming the field, while a
  valid budget created after them is still decided.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from greenml.services import inferencebudget as svc
from greenml.services.trainingjob import InvalidSpec
from tests.integration.harness import operator_env, run_operator, wait_for
from tests.integration.test_bad_input import DELETE, expect_rejected, junk, mutate
from tests.integration.test_inferencebudget_operator import DEPLOY, IB, budget, deployment, intensity_file, status_of

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
STEP = timedelta(minutes=5)

PATHS = [
    ("spec",), ("spec", "targetRef"), ("spec", "targetRef", "name"), ("spec", "zone"), ("spec", "loadQuery"),
    ("spec", "budget"), ("spec", "budget", "carbonGrams"), ("spec", "budget", "energyKWh"),
    ("spec", "budget", "period"), ("spec", "budget", "timeZone"),
    ("spec", "policy"), ("spec", "policy", "qualityFloor"), ("spec", "policy", "minReplicas"),
    ("spec", "policy", "maxReplicas"), ("spec", "policy", "minDwell"), ("spec", "policy", "onSignalLoss"),
    ("spec", "variants"), ("spec", "variants", 0), ("spec", "variants", 1),
]
VARIANT_PATHS = ["name", "quality", "capacityRps", "power", "patch"]


def valid_body() -> dict[str, Any]:
    return budget("b", "chat", grams=500.0)


def mutate_any(body: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    """mutate() for dict paths; an int step indexes the variants list."""
    if len(path) == 3 and path[1] == "variants" and isinstance(path[2], int):
        spec = body.get("spec")
        variants = spec.get("variants") if isinstance(spec, dict) else None
        if isinstance(variants, list) and path[2] < len(variants):
            variants = list(variants)
            variants[path[2]] = value if value is not DELETE else None
            variants = [v for v in variants if v is not None]
            return mutate(body, ("spec", "variants"), variants)
        return body
    return mutate(body, path, value)


def signals(ok: bool, n: int, load: float = 20.0, reason: str | None = None) -> svc.Signals:
    if not ok:
        return svc.Signals(None, None, load, np.full(n, load), "none", "assumed", reason or "ServerError")
    forecast = 300.0 + 100.0 * np.sin(np.arange(n) / 12.0)
    return svc.Signals(float(forecast[0]), forecast, load, np.full(n, load), "file", "assumed", None)


def exercise(body: dict[str, Any], status: dict[str, Any] | None = None) -> str:
    """The handler's path without kopf. Returns "invalid" or "valid"."""
    try:
        spec, model = svc.parse_spec(body)
    except InvalidSpec as err:
        assert err.field.split(".")[0] == "spec", err.field
        assert err.message and isinstance(err.message, str)
        return "invalid"
    names = [v.name for v in model.variants]
    state = status
    for ok in (True, False, True):
        out = svc.reconcile(spec, model, state, NOW, signals(ok, 288), STEP)
        d = out.decision
        assert d.variant in names, (d.variant, names)
        assert 0 <= d.replicas <= max(model.max_replicas, model.min_replicas), (d.replicas, model)
        assert out.phase in ("Active", "Degraded")
        body_ = svc.deployment_apply_body("ns", spec.target_ref.name, spec, d.variant, d.replicas)
        assert body_["metadata"]["annotations"]["greenml.io/variant"] == d.variant
        state = {"activeVariant": d.variant, "replicas": d.replicas, "spend": out.spend_status(model, "power-model")}
    return "valid"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(PATHS), junk), min_size=1, max_size=3))
def test_mutated_budgets_raise_only_invalid_spec(edits):
    body = valid_body()
    for path, value in edits:
        body = mutate_any(body, path, value)
    exercise(body)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(min_value=0, max_value=1), field=st.sampled_from(VARIANT_PATHS), value=junk)
def test_mutated_variants_raise_only_invalid_spec(index, field, value):
    body = valid_body()
    body = mutate_any(body, ("spec", "variants", index),
                      mutate({"v": body["spec"]["variants"][index]}, ("v", field), value)["v"])
    exercise(body)


@settings(max_examples=150, deadline=None)
@given(spec=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                         lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                         max_leaves=12))
def test_arbitrary_json_budget_specs_raise_only_invalid_spec(spec):
    exercise({"metadata": {"name": "x", "namespace": "serving"}, "spec": spec})


STATUS_PATHS = [("activeVariant",), ("replicas",), ("switchedAt",), ("carbonPrice",), ("spend",),
                ("spend", "periodStart"), ("spend", "periodEnd"), ("spend", "grams"), ("spend", "energyKwh"),
                ("spend", "accountedUntil")]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(STATUS_PATHS), junk), min_size=1, max_size=3))
@example(edits=[(("spend", "periodEnd"), "9999-12-31T23:59:59Z")])   # found: planned to it, 6 GiB arrays
def test_corrupted_status_is_survived(edits):
    """Status is the operator's memory, but anyone with status access (or a restore from an
    old backup) can write junk there: a decision is still made, never an exception."""
    status = {"activeVariant": "full", "replicas": 2, "switchedAt": "2024-06-01T11:00:00Z", "carbonPrice": 0.001,
              "spend": {"periodStart": "2024-06-01T00:00:00Z", "periodEnd": "2024-06-02T00:00:00Z",
                        "grams": 120.0, "energyKwh": 0.3, "accountedUntil": "2024-06-01T11:55:00Z"}}
    for path, value in edits:
        status = mutate(status, path, value)
    assert exercise(valid_body(), status) == "valid"


@pytest.mark.parametrize("path,value,field", [
    (("spec", "variants"), [], "spec.variants"),
    (("spec", "policy", "minDwell"), "forever", "spec.policy.minDwell"),
    (("spec", "policy", "qualityFloor"), 1.5, "spec.policy.qualityFloor"),
    (("spec", "budget", "carbonGrams"), -1, "spec.budget.carbonGrams"),
    (("spec", "targetRef", "name"), "", "spec.targetRef.name"),
])
def test_each_bad_budget_field_is_named(path, value, field):
    with pytest.raises(InvalidSpec) as exc:
        svc.parse_spec(mutate(valid_body(), path, value))
    assert exc.value.field.startswith(field), exc.value.field


# ------------------------------------------------------------------ the real operator
BAD = {
    "bad-variants": (("spec", "variants"), [], "variants"),
    "bad-dwell": (("spec", "policy", "minDwell"), "forever", "minDwell"),
    "bad-floor": (("spec", "policy", "qualityFloor"), "high", "qualityFloor"),
    "bad-unicode": (("spec", "budget", "period"), "🚀 weekly", "period"),
    "bad-huge": (("spec", "policy", "maxReplicas"), 10**30, "maxReplicas"),
}


@pytest.mark.timeout(120)
async def test_bad_budgets_fail_with_invalid_spec_and_others_are_served(api, kubeconfig, tmp_path):
    with run_operator(tmp_path, operator_env(tmp_path, kubeconfig, intensity_file(tmp_path))) as op:
        await api.create(DEPLOY, deployment("chat"))
        for name, (path, value, _) in BAD.items():
            await api.create(IB, mutate(budget(name, "chat"), path, value))
        await api.create(IB, budget("good", "chat"))
        async def no_variant(name, status):
            assert not status.get("activeVariant"), status

        await expect_rejected(api, op, BAD, status_of, no_variant)
        await wait_for("the valid budget decided", lambda: _decided(api, "good"), op=op)
        assert op.alive()


async def _decided(api, name):
    s = await status_of(api, name)
    return s if s.get("activeVariant") else None
