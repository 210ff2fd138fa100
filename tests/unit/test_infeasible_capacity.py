"""When a GPU capacity makes the job set infeasible: how many deadlines no schedule can keep
(planning.capacity.fewest_misses, against brute force), the simulator's oracle saying that
it fell back to the greedy (RESULT.json and text), and the benches computing fractions of
the oracle only where it is an optimum."""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.planning import capacity as cp
from greenml.planning.shifting import JobSpec
from greenml.signals.base import IntensitySeries
from greenml.sim import forecasts
from greenml.sim.jobs import SimJob
from greenml.sim.shifting import SimPolicy, simulate
from tests.unit.test_sim_capacity import TWO_DUE_AT_ONCE, run_cli

pytest.importorskip("scipy", reason="the exact MILP needs the 'exact' extra (scipy)")

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def random_instance(rng: np.random.Generator, horizon: int = 10) -> tuple[list[JobSpec], int]:
    jobs = []
    for i in range(int(rng.integers(3, 7))):
        k, e, slack, g = int(rng.integers(1, 4)), int(rng.integers(0, horizon - 4)), int(rng.integers(0, 3)), int(rng.integers(1, 4))
        jobs.append(JobSpec(f"j{i}", k, min(horizon, e + k + slack), e, g, float(g), bool(rng.random() < 0.5),
                            int(rng.integers(1, 3))))
    return jobs, int(rng.integers(2, 5))


def brute_force_fewest(jobs: list[JobSpec], cap: int) -> int:
    placeable = [j for j in jobs if j.gpus <= cap]
    for size in range(len(placeable), -1, -1):
        for kept in itertools.combinations(placeable, size):
            if not kept or cp.optimum(list(kept), np.zeros(12), step_hours=1.0, capacity_gpus=cap).status == "optimal":
                return len(placeable) - size
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seed", range(12))
def test_fewest_misses_equals_brute_force_and_its_kept_jobs_fit(seed):
    jobs, cap = random_instance(np.random.default_rng(seed))
    got = cp.fewest_misses(jobs, capacity_gpus=cap)
    want = brute_force_fewest(jobs, cap)
    assert got.status == "optimal" and (got.low, got.fewest, got.high) == (want, want, want)
    kept = [j for j in jobs if j.name in got.met]
    assert len(kept) == len([j for j in jobs if j.gpus <= cap]) - want
    assert not kept or cp.optimum(kept, np.zeros(12), step_hours=1.0, capacity_gpus=cap).status == "optimal"
    feasible = cp.optimum(jobs, np.zeros(12), step_hours=1.0, capacity_gpus=cap).status == "optimal"
    assert (want == 0) == feasible


def test_some_instances_are_infeasible_so_the_brute_force_checks_something():
    found = {brute_force_fewest(*random_instance(np.random.default_rng(s))) for s in range(12)}
    assert 0 in found and max(found) >= 1


def test_a_job_that_cannot_meet_its_deadline_even_alone_is_a_miss():
    hopeless = JobSpec("hopeless", 3, 2, 0, 1, 1.0, True)
    fine = JobSpec("fine", 2, 4, 0, 1, 1.0, True)
    got = cp.fewest_misses([hopeless, fine], capacity_gpus=1)
    assert (got.fewest, got.met) == (1, ("fine",))


# ---------------------------------------------------------------- the simulator's oracle

def three_on_two() -> tuple[list[SimJob], IntensitySeries]:
    """Three 2-GPU, 2-hour jobs due 2 h after submit: on 2 GPUs only one can keep its deadline."""
    jobs = [SimJob(n, T0 + timedelta(hours=1), timedelta(hours=2), T0 + timedelta(hours=3), gpus=2) for n in "abc"]
    actual = IntensitySeries(T0, timedelta(hours=1), np.linspace(100, 300, 48), source="test", kind="actual")
    return jobs, actual


@pytest.mark.parametrize("cap, basis, reason, feasibility, fewest", [
    (2, "greedy-fallback", "infeasible", "infeasible", 2),
    (6, "milp-optimal", None, "feasible", 0),
    (None, "exact", None, "feasible", 0),
])
def test_the_oracle_says_what_its_schedule_is(cap, basis, reason, feasibility, fewest):
    jobs, actual = three_on_two()
    r = simulate(jobs, actual, forecasts.perfect(actual),
                 SimPolicy(name="oracle", step=timedelta(hours=1), capacity_gpus=cap)).summary()
    assert (r["oracle_basis"], r["oracle_fallback_reason"], r["feasibility"], r["fewest_misses"]) == \
        (basis, reason, feasibility, fewest)
    assert r["deadlines_met"] <= len(jobs) - fewest


def test_other_policies_have_no_oracle_basis_but_the_fewest_misses():
    jobs, actual = three_on_two()
    r = simulate(jobs, actual, forecasts.perfect(actual),
                 SimPolicy(name="run-now", step=timedelta(hours=1), capacity_gpus=2)).summary()
    assert (r["oracle_basis"], r["feasibility"], r["fewest_misses"]) == (None, "infeasible", 2)
    assert any("at best 2 deadline(s) missed" in n for n in r["notes"])


def test_the_cli_reports_the_oracles_fallback(tmp_path, capsys):
    rc, result = run_cli(tmp_path, TWO_DUE_AT_ONCE, "--capacity-gpus", "2", "--policy", "oracle")
    s = result["summary"]
    assert (rc, s["deadlines_met"], s["feasibility"]) == (0, 1, "infeasible")      # existing fields as before
    assert (s["oracle_basis"], s["oracle_fallback_reason"], s["fewest_misses"]) == ("greedy-fallback", "infeasible", 1)
    assert "oracle basis: greedy-fallback (infeasible): not an optimum" in capsys.readouterr().out
    rc, result = run_cli(tmp_path, TWO_DUE_AT_ONCE, "--capacity-gpus", "4", "--policy", "oracle")
    assert (result["summary"]["oracle_basis"], result["summary"]["fewest_misses"]) == ("milp-optimal", 0)
    assert "not an optimum" not in capsys.readouterr().out


# ---------------------------------------------------------------- the benches

def bench_row(ws: str, policy: str, grams: float, met: int, basis: str | None, feasibility: str, fewest: int) -> dict:
    return {"zone": "Z", "window_start": ws, "forecast": "perfect", "policy": policy, "capacity": True,
            "n_jobs": 10, "seed": 1, "capacity_gpus": 8, "grams": grams, "run_now_grams": 100.0,
            "deadlines_met": met, "jobs": 10, "wall_seconds": 0.0, "unplaceable": 0, "feasibility": feasibility,
            "fewest_misses": fewest, "oracle_basis": basis, "oracle_fallback_reason":
                "infeasible" if basis == "greedy-fallback" else None}


def test_the_shifting_bench_takes_fractions_only_where_the_oracle_is_an_optimum():
    """Window 1: the MILP optimum saves 10 %, greenml 5 %. Window 2 is infeasible: the greedy
    fallback saves nothing, greenml 10 %. Pooled over both the fraction would be 1.5."""
    from bench.bench_shifting import summarise

    rows = [bench_row("w1", "oracle", 90.0, 10, "milp-optimal", "feasible", 0),
            bench_row("w1", "greenml", 95.0, 10, None, "feasible", 0),
            bench_row("w2", "oracle", 100.0, 6, "greedy-fallback", "infeasible", 3),
            bench_row("w2", "greenml", 90.0, 7, None, "infeasible", 3)]
    table, _, md = summarise(rows)
    g = next(t for t in table if t["policy"] == "greenml")
    assert g["fraction_of_oracle"] == pytest.approx(0.5)
    assert (g["windows"], g["oracle_optimal_windows"], g["infeasible_windows"]) == (2, 1, 1)
    assert g["deadlines_met_at_best"] == "17/20" and g["savings_percent"] == pytest.approx(7.5)
    assert "0.500 (1/2; oracle greedy + repair in 1: not an optimum)" in md
    assert "| Z | w2 | 8 | 10 | no | 3 | greedy-fallback (infeasible) | 6 | 7 |" in md
    assert "1.500" not in md


def test_the_shifting_bench_gives_no_fraction_when_the_oracle_is_never_an_optimum():
    from bench.bench_shifting import summarise

    rows = [bench_row("w2", "oracle", 100.0, 6, "greedy-fallback", "infeasible", 3),
            bench_row("w2", "greenml", 90.0, 7, None, "infeasible", 3)]
    table, _, md = summarise(rows)
    assert {t["fraction_of_oracle"] for t in table} == {None}
    assert "— (0/1; oracle greedy + repair in 1: not an optimum)" in md


def test_the_capacity_bench_says_when_the_oracle_is_no_optimum():
    from bench import _common, bench_capacity

    base = {"zone": "DE", "month": "2023-03", "greenml_deadlines_met": 190, "greenml_late": ["j1"],
            "late_flagged_at_arrival": ["j1"], "greenml_savings_percent": 12.0, "oracle_deadlines_met": 185,
            "oracle_savings_percent": 9.0}
    issue = [{**base, "feasibility": "infeasible", "fewest_misses": 4, "oracle_basis": "greedy-fallback",
              "oracle_fallback_reason": "infeasible", "greenml_fraction_of_oracle": None},
             {**base, "month": "2023-04", "feasibility": "feasible", "fewest_misses": 0, "oracle_basis": "milp-optimal",
              "oracle_fallback_reason": None, "greenml_fraction_of_oracle": 0.9}]
    md = bench_capacity.markdown({"speed": [], "quality": [], "issue": issue, "machine": _common.machine()})
    assert "| DE | 2023-03 | no (4 cannot be met) |" in md and "— (oracle not an optimum) |" in md
    assert "| DE | 2023-04 | yes |" in md and "| 0.900 |" in md


@pytest.mark.parametrize("seed", range(6))
def test_without_an_exact_answer_the_bounds_hold(seed):
    """A tiny time limit (HiGHS may stop before it decides) or too many variables: the bounds
    still bracket the brute-force answer, and the demand bound's proof gives low >= 1."""
    jobs, cap = random_instance(np.random.default_rng(seed))
    want = brute_force_fewest(jobs, cap)
    for got in (cp.fewest_misses(jobs, capacity_gpus=cap, time_limit_s=1e-9),
                cp.fewest_misses(jobs, capacity_gpus=cap, max_variables=1)):
        assert got.low <= want and (got.high is None or got.high >= want)
        assert got.fewest in (None, want)
        if cp.demand_bound(jobs, cap) is not None:
            assert got.low >= 1
    assert cp.fewest_misses(jobs, capacity_gpus=cap, max_variables=1).status == "too_large"
