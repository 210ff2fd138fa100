"""The load forecaster (greenml.planning.loadforecast) on made-up series with known shape:
daily and weekly seasonality, gaps, spikes, level shifts, DST, short history — and the
operator's use of it (services.inferencebudget.load_signals, the Prometheus parsing)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenml.planning.loadforecast import LoadForecastError, LoadForecastPolicy, forecast_load
from greenml.services import inferencebudget as svc
from greenml.signals.base import SignalError
from tests.unit.test_inference import make_spec

T0 = datetime(2024, 3, 4, tzinfo=timezone.utc)   # a Monday
STEP = timedelta(minutes=15)
PER_DAY = 96


def shape(t: np.ndarray, weekend: float = 1.0, tz_offset_h: float = 0.0) -> np.ndarray:
    """req/s at epoch seconds ``t``: a daily cycle peaking at 15:00 local, ``weekend`` × on Sat/Sun."""
    local = t + tz_offset_h * 3600
    hour = (local % 86400) / 3600
    day = np.floor(local / 86400)
    sat_sun = ((day + 3) % 7) >= 5
    return (10 + 6 * np.cos(2 * np.pi * (hour - 15) / 24)) * np.where(sat_sun, weekend, 1.0)


def grid(days: float, step: timedelta = STEP, start: datetime = T0) -> np.ndarray:
    n = int(days * 86400 / step.total_seconds())
    return start.timestamp() + step.total_seconds() * np.arange(n)


def truth_after(t: np.ndarray, k: int, step: timedelta = STEP) -> np.ndarray:
    return t[-1] + step.total_seconds() * np.arange(1, k + 1)


def now_of(t: np.ndarray) -> datetime:
    return datetime.fromtimestamp(t[-1], tz=timezone.utc)


def test_daily_cycle_is_forecast_from_history_only():
    t = grid(8)
    rng = np.random.default_rng(1)
    vals = shape(t) * (1 + 0.05 * rng.standard_normal(t.size))
    f = forecast_load(vals, T0, STEP, now_of(t), timedelta(hours=24))
    assert f.start == now_of(t) + STEP and f.method == "daily"
    want = shape(truth_after(t, f.values.size))
    assert np.abs(f.values - want).mean() / want.mean() < 0.03
    # samples after `now` are never read
    spoiled = np.concatenate([vals, np.full(200, 1e6)])
    g = forecast_load(spoiled, T0, STEP, now_of(t), timedelta(hours=24))
    np.testing.assert_allclose(g.values, f.values)


def test_weekday_levels_after_two_weeks():
    t = grid(21)
    vals = shape(t, weekend=0.5)
    # the history ends on a Friday evening: the forecast must dip for Saturday
    end = int(np.searchsorted(t, (T0 + timedelta(days=18, hours=20)).timestamp()))
    f = forecast_load(vals[:end + 1], T0, STEP, now_of(t[:end + 1]), timedelta(hours=30))
    assert f.method == "daily+weekday"
    want = shape(truth_after(t[:end + 1], f.values.size), weekend=0.5)
    assert np.abs(f.values - want).mean() / want.mean() < 0.03
    # with one week only, the weekend is unknown: the daily profile (the weekday median) serves
    short = forecast_load(vals[end + 1 - 7 * PER_DAY:end + 1], T0 + STEP * (end + 1 - 7 * PER_DAY), STEP,
                          now_of(t[:end + 1]), timedelta(hours=30))
    assert short.method == "daily"


def test_gaps_are_left_out_and_missing_slots_interpolated():
    t = grid(7)
    vals = shape(t).copy()
    rng = np.random.default_rng(2)
    vals[rng.random(t.size) < 0.2] = np.nan           # 20 % of scrapes lost
    vals[PER_DAY * 3:PER_DAY * 5] = np.nan           # and two whole days
    vals[(np.arange(t.size) % PER_DAY) == 40] = np.nan  # one slot never seen
    f = forecast_load(vals, T0, STEP, now_of(t), timedelta(hours=24))
    want = shape(truth_after(t, f.values.size))
    assert np.isfinite(f.values).all()
    assert np.abs(f.values - want).mean() / want.mean() < 0.02


def test_spikes_do_not_move_the_forecast():
    t = grid(7)
    clean = shape(t)
    spiky = clean.copy()
    spiky[np.arange(7) * (PER_DAY + 5) + 30] *= 50  # one burst a day, at a different slot each day
    spiky[np.arange(0, t.size, 97)] *= 20
    spiky[-1] = 500.0                                # and one right now
    a = forecast_load(clean, T0, STEP, now_of(t), timedelta(hours=24))
    b = forecast_load(spiky, T0, STEP, now_of(t), timedelta(hours=24))
    assert np.abs(b.values - a.values).max() / a.values.mean() < 0.05


def test_a_lasting_level_change_is_followed_then_fades():
    t = grid(7)
    vals = shape(t)
    vals[-12:] *= 2.0                                # the last 3 h at twice the usual load
    f = forecast_load(vals, T0, STEP, now_of(t), timedelta(hours=24))
    want = shape(truth_after(t, f.values.size))
    assert f.values[0] / want[0] == pytest.approx(2.0, rel=0.05)
    assert f.values[-1] / want[-1] == pytest.approx(1.0, abs=0.05)


def test_short_or_empty_history_is_refused_with_a_reason():
    t = grid(0.5)
    with pytest.raises(LoadForecastError) as err:
        forecast_load(shape(t), T0, STEP, now_of(t), timedelta(hours=6))
    assert err.value.reason == "InsufficientHistory"
    t = grid(3)
    mostly_missing = np.full(t.size, np.nan)
    mostly_missing[-10:] = 5.0
    mostly_missing[0] = 5.0                          # three days old, but with almost nothing since
    with pytest.raises(LoadForecastError):
        forecast_load(mostly_missing, T0, STEP, now_of(t), timedelta(hours=6))
    with pytest.raises(LoadForecastError) as err:
        forecast_load(shape(t), T0, timedelta(minutes=7), now_of(t), timedelta(hours=6))
    assert err.value.reason == "Malformed"
    # a series younger than the window asked for: its history starts at its first sample
    young = shape(t)
    young[: t.size - 2 * PER_DAY] = np.nan
    assert forecast_load(young, T0, STEP, now_of(t), timedelta(hours=6)).history == timedelta(days=2)
    # all zero: a flat zero forecast, not an error
    f = forecast_load(np.zeros(t.size), T0, STEP, now_of(t), timedelta(hours=6))
    assert (f.values == 0).all()


def test_local_time_keeps_the_peak_across_a_dst_change():
    # Berlin switches to summer time on 2024-03-31; users keep their local 15:00 peak
    start = datetime(2024, 3, 24, tzinfo=timezone.utc)
    t = grid(9, start=start)
    offset = np.where(t >= datetime(2024, 3, 31, 1, tzinfo=timezone.utc).timestamp(), 2.0, 1.0)
    vals = np.array([shape(np.array([x]), tz_offset_h=o)[0] for x, o in zip(t, offset)])
    f = forecast_load(vals, start, STEP, now_of(t), timedelta(hours=24), tz="Europe/Berlin")
    want = shape(truth_after(t, f.values.size), tz_offset_h=2.0)
    assert np.abs(f.values - want).mean() / want.mean() < 0.01
    utc = forecast_load(vals, start, STEP, now_of(t), timedelta(hours=24), tz="UTC")
    assert np.abs(utc.values - want).mean() > 3 * np.abs(f.values - want).mean()


def test_on_grid_maps_the_forecast_onto_planning_steps():
    t = grid(3)
    f = forecast_load(shape(t), T0, STEP, now_of(t), timedelta(hours=2))
    five = f.on_grid(7.0, now_of(t), timedelta(minutes=5), 24)
    assert five[0] == 7.0 and five.size == 24
    # 5-minute steps read the 15-minute slot holding them: three of each
    np.testing.assert_allclose(five[3:6], f.values[0])
    assert f.on_grid(7.0, now_of(t), STEP, 1).tolist() == [7.0]


def test_speed_a_week_at_five_minutes():
    import time

    step = timedelta(minutes=5)
    t = grid(7, step)
    vals = shape(t)
    forecast_load(vals, T0, step, now_of(t), timedelta(hours=24), tz="Europe/Berlin")
    t0 = time.perf_counter()
    for _ in range(50):
        forecast_load(vals, T0, step, now_of(t), timedelta(hours=24), tz="Europe/Berlin")
    assert (time.perf_counter() - t0) / 50 < 0.05   # ~2 ms measured on 2 busy cores


def test_policy_lookback_limits_what_is_read():
    t = grid(40)
    vals = shape(t)
    vals[: 10 * PER_DAY] = 1e6                       # long ago, beyond the 28-day look-back
    f = forecast_load(vals, T0, STEP, now_of(t), timedelta(hours=6), policy=LoadForecastPolicy())
    assert f.values.max() < 20


# ------------------------------------------------------------ the operator's side

def range_rows(t: np.ndarray, vals: np.ndarray, parts: int = 2) -> list[dict]:
    """A Prometheus matrix: the load split over ``parts`` series (per pod), NaN samples absent."""
    return [{"metric": {"pod": f"p{k}"},
             "values": [[float(x), f"{v / parts:.6f}"] for x, v in zip(t, vals) if np.isfinite(v)]}
            for k in range(parts)]


def test_range_result_is_summed_per_timestamp_with_gaps():
    t = grid(1)
    vals = shape(t)
    vals[10:20] = np.nan
    got = svc.range_load(range_rows(t, vals), T0, STEP, t.size)
    np.testing.assert_allclose(got[~np.isnan(vals)], vals[~np.isnan(vals)], rtol=1e-5)
    assert np.isnan(got[10:20]).all()
    t0 = T0.timestamp()
    odd = svc.range_load([{"values": [[t0, "NaN"], [t0 + 900, "+Inf"], [t0 + 1800, "-3"], [t0 + 2700, "4"]]}],
                         T0, STEP, 5)
    assert np.isnan(odd[:3]).all() and odd[3] == 4 and np.isnan(odd[4])   # missing, not an error
    with pytest.raises(SignalError):
        svc.range_load([{"values": [[1, "x"]]}], T0, STEP, 3)
    with pytest.raises(SignalError):
        svc.range_load([{"metric": {}}], T0, STEP, 3)
    assert svc.instant_load([{"value": [1, "2.5"]}, {"value": [1, "1"]}]) == 3.5
    assert svc.instant_load([]) == 0.0
    with pytest.raises(SignalError):
        svc.instant_load([{"value": [1, "-1"]}])


def test_load_signals_forecast_and_fallbacks():
    from greenml.planning.inference import compile_spec

    model = compile_spec(make_spec())
    t = grid(7)
    now = now_of(t)
    hist = (T0, STEP, shape(t))
    s = svc.load_signals(model, now, STEP, 8, 99.0, 12.0, hist)
    assert s.now == 12.0 and s.forecast[0] == 12.0 and s.degraded_reason is None
    assert "forecast (daily)" in s.source and "history" in s.source
    np.testing.assert_allclose(s.forecast[1:], shape(truth_after(t, 7)), rtol=0.05)
    short = svc.load_signals(model, now, STEP, 8, 99.0, 12.0, (T0, STEP, shape(t)[-10:]))
    assert (short.forecast == 12.0).all() and "InsufficientHistory" in short.source and short.degraded_reason is None
    failed = svc.load_signals(model, now, STEP, 8, 99.0, 12.0, SignalError("down", reason="Unavailable"))
    assert (failed.forecast == 12.0).all() and failed.degraded_reason == "Unavailable"
    assert "history query failed" in failed.source
    none = svc.load_signals(model, now, STEP, 8, 99.0, SignalError("bad", reason="BadQuery"), None)
    assert none.now == 99.0 and none.degraded_reason == "BadQuery" and "assumed" in none.source
    plain = svc.load_signals(model, now, STEP, 8, 99.0, None, None)
    assert plain.now == 99.0 and plain.degraded_reason is None


def test_history_step_respects_the_points_limit():
    assert svc.load_history_step(timedelta(minutes=5)) == timedelta(minutes=5)
    assert svc.load_history_step(timedelta(seconds=2)) == timedelta(minutes=5)    # ≥ 14 d / 10,000, divides a day
    assert svc.load_history_step(timedelta(minutes=7)) == timedelta(minutes=10)
    assert svc.LOAD_HISTORY / svc.load_history_step(timedelta(seconds=10)) <= svc.MAX_RANGE_POINTS


def test_error_is_measured_a_day_ahead_and_widens_the_reserve():
    from greenml.planning.inference import OWN_FORECAST, PacingConfig, pacing_for

    t = grid(10)
    steady = forecast_load(shape(t), T0, STEP, now_of(t), timedelta(hours=6))
    assert steady.error is not None and steady.error < 1e-6
    rng = np.random.default_rng(5)
    level = np.repeat(np.exp(0.2 * rng.standard_normal(10)), PER_DAY)   # each day's level unknown the day before
    moody = forecast_load(shape(t) * level, T0, STEP, now_of(t), timedelta(hours=6))
    assert 0.03 < moody.error < 0.5
    assert forecast_load(shape(grid(1.5)), T0, STEP, now_of(grid(1.5)), timedelta(hours=6)).error is None
    assert pacing_for(False) == PacingConfig() and pacing_for(True) == OWN_FORECAST
    assert pacing_for(True, moody.error).forecast_margin == pytest.approx(OWN_FORECAST.forecast_margin + moody.error)
    assert pacing_for(False, 5.0).forecast_margin == 0.5 and pacing_for(True, float("nan")) == OWN_FORECAST
