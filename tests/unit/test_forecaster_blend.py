"""forecaster.blend_with_provider (a provider forecast corrected by the latest actual and
mixed with the own forecast), sim.forecasts.blended, and the benchmarks' rank measure."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.signals.base import IntensitySeries
from greenml.signals.forecaster import ForecasterPolicy, blend_with_provider, forecast_from_history
from greenml.sim import forecasts
from greenml.sim.jobs import ForecastSnapshots

NOW = datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
HALF = timedelta(minutes=30)


def history(days: int = 20, step: timedelta = H, offset: float = 0.0) -> IntensitySeries:
    n = int(days * 86400 // step.total_seconds())
    t = np.arange(n) * step.total_seconds() / 3600.0
    return IntensitySeries(NOW - step * n, step, 300 + offset + 100 * np.sin(2 * np.pi * t / 24), source="hist")


def provider(level: float, hours: int = 48, start: datetime = NOW, step: timedelta = HALF) -> IntensitySeries:
    n = int(hours * 3600 // step.total_seconds())
    return IntensitySeries(start, step, np.full(n, level), source="prov", issued_at=start)


def test_correction_fades_from_the_last_actual_to_the_provider():
    hist = history()
    last = float(hist.values[-1])
    pol = ForecasterPolicy(provider_own_weight=0.0)
    b = blend_with_provider(provider(100.0), hist, NOW, timedelta(hours=48), pol)
    assert b.start == NOW and b.step == HALF and len(b) == 96 and b.estimate and b.kind == "average"
    corr = last - 100.0
    assert b.meta["correction"] == pytest.approx(corr, abs=0.01) and b.meta["own_weight"] == 0.0
    lead = (np.arange(96) + 1) * 0.5
    assert np.allclose(b.values, 100.0 + corr * np.exp(-lead / pol.provider_correction_tau_hours))
    assert abs(b.values[0] - last) < abs(corr) * 0.1     # next half hour: close to the last actual
    assert abs(b.values[-1] - 100.0) < 0.1               # 48 h out: the provider


def test_own_weight_mixes_the_own_forecast_where_it_covers():
    hist = history()
    pol = ForecasterPolicy(provider_own_weight=0.25, provider_correction_tau_hours=0.0)
    p = provider(100.0, hours=96)
    b = blend_with_provider(p, hist, NOW, timedelta(hours=96), pol)
    own = forecast_from_history(hist, NOW, timedelta(hours=96), pol).resample(NOW, HALF, 192, fill="nan")
    covered = np.isfinite(own)
    assert covered[:144].all() and not covered[-1]       # the own forecaster stops at max_horizon (72 h)
    assert np.allclose(b.values[covered], 0.75 * 100.0 + 0.25 * own[covered])
    assert np.allclose(b.values[~covered], 100.0)
    assert b.meta["own_weight"] == 0.25


def test_without_usable_history_the_provider_is_kept():
    p = provider(123.0)
    for hist in (None, IntensitySeries(NOW - H, H, np.empty(0)), history().window(NOW, NOW + H)):
        b = blend_with_provider(p, hist, NOW, timedelta(hours=48))
        assert np.allclose(b.values, 123.0) and b.meta["correction"] is None
    marginal = IntensitySeries(NOW - 48 * H, H, np.full(48, 500.0), kind="marginal")
    b = blend_with_provider(p, marginal, NOW, timedelta(hours=48))
    assert np.allclose(b.values, 123.0)                  # never mix average and marginal
    short = history(days=0.5)                            # one value: correction, too short for the own forecast
    b = blend_with_provider(p, short, NOW, timedelta(hours=48))
    assert b.meta["correction"] is not None and b.meta["own_weight"] == 0.0


def test_blend_uses_only_history_before_now_and_starts_at_now():
    hist = history()
    later = NOW - 6 * H
    p = provider(100.0, hours=60, start=NOW - 12 * H)
    b = blend_with_provider(p, hist, later, timedelta(hours=24), ForecasterPolicy(provider_own_weight=0.0))
    assert b.start == later and b.end == later + timedelta(hours=24)
    # the correction is from the last slot before `later`, not from the history's end
    assert b.meta["correction"] == pytest.approx(float(hist.values[hist.index_of(later) - 1]) - 100.0, abs=0.01)


def test_sim_blended_forecaster_is_online():
    actual = history(days=20)
    issues = (NOW - 30 * H, NOW - 6 * H)
    targets = tuple(tuple(i + HALF * k for k in range(96)) for i in issues)
    snaps = ForecastSnapshots(issues, targets, (np.full(96, 100.0), np.full(96, 200.0)))
    fc = forecasts.blended(snaps, actual)
    now = NOW - 2 * H
    a = fc("z", now, timedelta(hours=24))
    assert a.meta["forecast"] == "blended" and a.start == now
    # changing actuals at or after `now` changes nothing
    v = actual.values.copy()
    v[actual.index_of(now):] += 1000
    b = forecasts.blended(snaps, IntensitySeries(actual.start, actual.step, v))("z", now, timedelta(hours=24))
    assert np.array_equal(a.values, b.values)
    assert abs(a.values[-1] - (0.8 * 200.0 + 0.2 * forecasts.builtin(actual)("z", now, timedelta(hours=24))
                               .resample(a.end - HALF, HALF, 1)[0])) < 1.0


def test_spearman():
    from bench.bench_forecaster import spearman
    x = np.arange(10.0)
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.ones(10)))
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(0.866, abs=1e-3)
