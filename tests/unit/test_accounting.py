"""SCI accounting against hand-computed cases (greenml.planning.accounting)."""
from __future__ import annotations

import math

import pytest

from greenml.planning.accounting import (
    AccountingError, AccountingPolicy, Footprint, Hardware, Savings, embodied_grams, empty_footprint, footprint,
    footprint_from_grams, joules_to_kwh, kwh_to_joules, lbs_per_mwh_to_g_per_kwh, mean_intensity,
    operational_grams, per_thousand, water_litres, ws_to_kwh,
)

YEAR_S = 365.25 * 86400


@pytest.mark.parametrize("ws, kwh", [(3.6e6, 1.0), (600 * 3600, 0.6), (0.0, 0.0), (1.0, 1 / 3.6e6)])
def test_watt_seconds_to_kwh(ws, kwh):
    assert ws_to_kwh(ws) == pytest.approx(kwh, rel=1e-12)
    assert joules_to_kwh(ws) == pytest.approx(kwh, rel=1e-12)
    assert kwh_to_joules(kwh) == pytest.approx(ws, rel=1e-12)


@pytest.mark.parametrize("lbs, grams", [(1000.0, 453.59237), (1.0, 0.45359237), (0.0, 0.0),
                                        (850.0, 385.5535145)])  # 850 lbs/MWh: a typical CAISO MOER
def test_lbs_per_mwh_to_g_per_kwh(lbs, grams):
    assert lbs_per_mwh_to_g_per_kwh(lbs) == pytest.approx(grams, rel=1e-9)


def test_operational_includes_pue():
    # 2 GPUs × 300 W × 1 h = 0.6 kWh IT; PUE 1.5 → 0.9 kWh; × 400 g/kWh = 360 g
    assert operational_grams(0.6, 400.0, 1.5) == pytest.approx(360.0)
    assert operational_grams(0.6, 400.0) == pytest.approx(240.0)


def test_embodied_amortisation_by_hand():
    # 2 GPUs for 1 h; 150 kg/GPU over 4 y; a quarter of a 2,500 kg server over 4 y
    hand = (2 * 150_000 + 2 / 8 * 2_500_000) * 3600 / (4 * YEAR_S)
    assert embodied_grams(2, 3600) == pytest.approx(hand, rel=1e-12)
    assert hand == pytest.approx(26.38, abs=0.01)


def test_embodied_lifetime_is_configurable_and_scales_inversely():
    short = Hardware(gpu_lifetime_years=2.0, server_lifetime_years=2.0)
    long = Hardware(gpu_lifetime_years=5.0, server_lifetime_years=5.0)
    assert embodied_grams(8, 86400, short) == pytest.approx(2.5 * embodied_grams(8, 86400, long))
    # a full server of 8 GPUs for its whole life: all its embodied carbon
    one_life = Hardware(gpu_lifetime_years=3.0, server_lifetime_years=3.0)
    assert embodied_grams(8, 3 * YEAR_S, one_life) == pytest.approx(8 * 150_000 + 2_500_000)


def test_cpu_only_job_has_no_accelerator_embodied():
    assert embodied_grams(0, 3600) == 0.0


def test_water_via_wue():
    assert water_litres(10.0, 1.8) == pytest.approx(18.0)
    assert water_litres(10.0, None) is None


def test_footprint_and_sci_per_unit():
    policy = AccountingPolicy(pue=1.2, wue_l_per_kwh=0.5)
    fp = footprint(ws_to_kwh(8 * 400 * 7200), 300.0, gpus=8, reserved_seconds=7200, policy=policy)
    it = 8 * 400 * 2 / 1000                             # 6.4 kWh
    assert fp.energy_kwh == pytest.approx(it)
    assert fp.facility_kwh == pytest.approx(it * 1.2)
    assert fp.operational_g == pytest.approx(it * 1.2 * 300.0)      # 2304 g
    m = (8 * 150_000 + 1 * 2_500_000) * 7200 / (4 * YEAR_S)
    assert fp.embodied_g == pytest.approx(m)
    assert fp.total_g == pytest.approx(2304.0 + m)
    assert fp.water_l == pytest.approx(3.2)
    assert fp.sci_g_per_unit == pytest.approx(fp.total_g)           # R = 1 training run


def test_sci_per_thousand_requests():
    fp = footprint(2.0, 250.0, units=per_thousand(40_000), unit="1,000 requests")
    assert fp.units == 40.0
    assert fp.sci_g_per_unit == pytest.approx(500.0 / 40.0)


def test_footprint_from_grams_scales_by_pue_and_adds_embodied():
    policy = AccountingPolicy(pue=1.5)
    fp = footprint_from_grams(2.0, 500.0, gpus=1, reserved_seconds=3600, policy=policy)
    assert fp.operational_g == pytest.approx(750.0)
    assert fp.embodied_g == pytest.approx(embodied_grams(1, 3600))


def test_never_mix_average_and_marginal():
    avg = footprint(1.0, 100.0)
    marg = footprint(1.0, 100.0, policy=AccountingPolicy(kind="marginal"))
    with pytest.raises(AccountingError, match="never mix"):
        _ = avg + marg
    with pytest.raises(AccountingError, match="one intensity kind"):
        Savings(avg, marg, "run-now")
    with pytest.raises(AccountingError, match="never mix"):
        footprint(1.0, 100.0, kind="marginal")       # the policy says average


def test_savings_store_both_figures_against_a_stated_counterfactual():
    policy = AccountingPolicy()
    actual = footprint_from_grams(1.0, 150.0, gpus=1, reserved_seconds=3600, policy=policy)
    run_now = footprint_from_grams(1.0, 400.0, gpus=1, reserved_seconds=3600, policy=policy)
    s = Savings(actual, run_now, "run-now")
    assert s.saved_g == pytest.approx(250.0)         # embodied cancels
    assert s.percent == pytest.approx(100 * 250 / run_now.total_g)
    j = s.to_json()
    assert j["counterfactual"] == "run-now"
    assert j["actual"]["operationalGrams"] == 150.0
    assert j["counterfactualFootprint"]["operationalGrams"] == 400.0
    with pytest.raises(AccountingError, match="stated counterfactual"):
        Savings(actual, run_now, "")


def test_footprints_add_per_part():
    a = footprint(1.0, 100.0, gpus=1, reserved_seconds=10, policy=AccountingPolicy(wue_l_per_kwh=1.0))
    b = footprint(2.0, 200.0)
    s = a + b
    assert s.energy_kwh == 3.0 and s.operational_g == pytest.approx(500.0)
    assert s.embodied_g == pytest.approx(a.embodied_g)
    assert s.water_l == pytest.approx(1.0)
    assert s.units == 2.0
    assert (empty_footprint() + b).operational_g == b.operational_g


def test_mean_intensity_energy_weighted():
    assert mean_intensity([100.0, 400.0], [3.0, 1.0]) == pytest.approx(175.0)
    with pytest.raises(AccountingError, match="weights"):
        mean_intensity([1.0], [1.0, 2.0])


@pytest.mark.parametrize("kwargs, field", [
    ({"pue": 0.9}, "pue"), ({"pue": math.nan}, "pue"), ({"wue_l_per_kwh": -1}, "wueLPerKwh"),
    ({"kind": "hourly"}, "kind"),
])
def test_bad_policy_names_the_field(kwargs, field):
    with pytest.raises(AccountingError, match=field):
        AccountingPolicy(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"gpu_lifetime_years": 0}, "gpuLifetimeYears"), ({"gpu_embodied_kg": -5}, "gpuEmbodiedKg"),
    ({"gpus_per_server": 0}, "gpusPerServer"),
])
def test_bad_hardware_names_the_field(kwargs, field):
    with pytest.raises(AccountingError, match=field):
        Hardware(**kwargs)


def test_bad_inputs_name_the_field():
    with pytest.raises(AccountingError, match="energyKwh"):
        footprint(-1.0, 100.0)
    with pytest.raises(AccountingError, match="intensity"):
        footprint(1.0, math.inf)
    with pytest.raises(AccountingError, match="no energy"):
        footprint_from_grams(0.0, 5.0)
    with pytest.raises(AccountingError, match="functional units"):
        _ = Footprint(1, 1, 1, 0, "average", units=0).sci_g_per_unit
