"""A light forecaster from history: a recency-weighted daily profile (with a weekday /
weekend offset when two weeks of history exist) plus the current anomaly, decaying
with lead time.

    s(L) = P[slot(now+L)] + W[daytype(now+L)] + (x_now - P[slot(now)] - W[daytype(now)]) * exp(-L / tau)
    f(now + L) = a(L) * x_last + (1 - a(L)) * s(L),   a(L) = exp(-L / tau_p)

(the blend with the last value x_last wins at short leads, where today's shape often
differs from the average day: a cloudy morning has no solar dip).

P is the mean of the last ``days`` days at each slot of the day, weighted by
``0.5 ** (age_days / half_life_days)``; x_now is the mean of the last hour of history.
Output is at the history's resolution, up to ``max_horizon`` (72 h). numpy only, O(n).
Defaults (half-life 4 d, tau 24 h, tau_p 2 h) were picked by a small grid search on
150 origins per zone (DE, GB, US-CAL-CISO) of the Electricity Maps 2021-2024 traces.
Its accuracy on 2021-2024 data vs persistence and NESO is in bench/results/forecaster.json,
what it keeps of perfect-forecast savings in bench/results/shifting.json.

``blend_with_provider`` is for when a provider forecast exists: the provider's forecast,
corrected by the latest actual (the gap between the last observed value and what the
provider said for that slot, fading with lead: ``exp(-lead / provider_correction_tau_hours)``),
then mixed with this forecaster's own (weight ``provider_own_weight`` where it covers):

    b(L) = (1 - w) * (p(L) + (x_last - p(last)) * exp(-L / tau_c)) + w * f(L)

A provider forecast is issued every few hours (NESO's fw48h: every 30 min, scraped here
every ~6 h) while actuals arrive every slot; the correction carries what happened since.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from greenml.signals.base import IntensitySeries, SignalError
from greenml.timeutil import ensure_utc

_DAY = 86400.0


@dataclass(frozen=True)
class ForecasterPolicy:
    days: int = 14                    # history used for the profile
    half_life_days: float = 4.0       # recency weighting of past days
    anomaly_tau_hours: float = 24.0   # how fast today's deviation fades into the profile
    persistence_tau_hours: float = 2.0  # weight of the last value itself, exp(-lead / this)
    min_history: timedelta = timedelta(days=1)
    max_horizon: timedelta = timedelta(hours=72)
    # blend_with_provider: how fast the latest actual's correction of a provider forecast fades,
    # and the weight of this forecaster's own forecast in the blend (0: provider + correction only)
    provider_correction_tau_hours: float = 6.0
    provider_own_weight: float = 0.2


def _daily_profile(vals: np.ndarray, per_day: int, ages_days: np.ndarray, half_life: float) -> np.ndarray:
    w = 0.5 ** (ages_days / half_life)
    n_full = (len(vals) // per_day) * per_day
    v = vals[len(vals) - n_full:].reshape(-1, per_day)
    ww = w[len(vals) - n_full:].reshape(-1, per_day)
    return (v * ww).sum(axis=0) / ww.sum(axis=0)


def forecast_from_history(history: IntensitySeries, now: datetime, horizon: timedelta,
                          policy: ForecasterPolicy = ForecasterPolicy()) -> IntensitySeries:
    """Forecast from ``now`` (slots at history.step) covering ``horizon`` (capped at max_horizon).

    Only history before ``now`` is used. Raises SignalError(reason="InsufficientHistory").
    """
    now = ensure_utc(now)
    step = history.step.total_seconds()
    if _DAY % step:
        raise SignalError(f"history step {history.step} does not divide a day", reason="Malformed")
    per_day = int(_DAY // step)
    end_idx = min(len(history), history.index_of(now))
    if end_idx * step < policy.min_history.total_seconds():
        raise SignalError(f"forecaster needs {policy.min_history} of history before {now.isoformat()}, "
                          f"has {timedelta(seconds=max(end_idx, 0) * step)}", reason="InsufficientHistory")
    lo = max(0, end_idx - policy.days * per_day)
    vals = history.values[lo:end_idx]
    if np.isnan(vals).any():
        raise SignalError("history has missing values", reason="Malformed")
    t0 = history.start.timestamp() + lo * step
    # slot-of-day phase of each history sample; align so the profile is indexed by UTC slot of day
    phase0 = int(round((t0 % _DAY) / step)) % per_day
    n_full = (len(vals) // per_day) * per_day
    last_day_start = len(vals) - n_full
    ages = (len(vals) - 1 - np.arange(len(vals))) * step / _DAY
    prof_rolled = _daily_profile(vals, per_day, ages, policy.half_life_days)
    # prof_rolled[j] is for the sample at index last_day_start + j → phase (phase0 + last_day_start + j)
    profile = np.roll(prof_rolled, (phase0 + last_day_start) % per_day)

    times = t0 + step * np.arange(len(vals))
    weekend = (((np.floor(times / _DAY).astype(np.int64) + 3) % 7) >= 5)
    week_off = np.zeros(2)
    if len(vals) >= 14 * per_day and weekend.any() and (~weekend).any():
        phases = (phase0 + np.arange(len(vals))) % per_day
        resid = vals - profile[phases]
        week_off = np.array([resid[~weekend].mean(), resid[weekend].mean()])

    start = history.start + history.step * end_idx
    cover = (now - start).total_seconds() + min(horizon, policy.max_horizon).total_seconds()
    n = max(1, int(-(-cover // step)))
    f_times = start.timestamp() + step * np.arange(n)
    f_phase = np.round((f_times % _DAY) / step).astype(np.int64) % per_day
    f_weekend = (((np.floor(f_times / _DAY).astype(np.int64) + 3) % 7) >= 5).astype(np.int64)
    base = profile[f_phase] + week_off[f_weekend]

    recent = vals[-max(1, int(3600 // step)):].mean()
    last_phase = (phase0 + len(vals) - 1) % per_day
    last_weekend = int(weekend[-1])
    anomaly = recent - profile[last_phase] - week_off[last_weekend]
    lead_h = (f_times - (start.timestamp() - step)) / 3600.0
    seasonal = base + anomaly * np.exp(-lead_h / policy.anomaly_tau_hours)
    a = np.exp(-lead_h / policy.persistence_tau_hours) if policy.persistence_tau_hours > 0 else 0.0
    out = np.maximum(a * vals[-1] + (1 - a) * seasonal, 0.0)
    return IntensitySeries(start, history.step, out, source=f"forecaster({history.source})", estimate=True,
                           issued_at=now, kind=history.kind,
                           meta={"model": "profile+anomaly", "history_days": round(len(vals) * step / _DAY, 2)})


def blend_with_provider(provider: IntensitySeries, history: IntensitySeries | None, now: datetime,
                        horizon: timedelta, policy: ForecasterPolicy = ForecasterPolicy()) -> IntensitySeries:
    """A provider forecast, corrected by the latest actual and blended with the own forecast.

    On the provider's grid, from the slot containing ``now`` (or the provider's start, if
    later) to the provider's end (at most ``now + horizon``). Only ``history`` before ``now``
    is used. Without usable history (none, another kind, gaps, too short for the own
    forecaster), what can be done is: the correction needs one past value, the own blend
    ``policy.min_history``; the provider forecast is returned unchanged when neither can.
    """
    now = ensure_utc(now)
    pstep = provider.step
    i0 = max(0, provider.index_of(now))
    end = min(provider.end, now + horizon)
    n = max(1, int(-(-(end - (provider.start + pstep * i0)).total_seconds() // pstep.total_seconds())))
    start = provider.start + pstep * i0
    p = provider.resample(start, pstep, n)
    meta = {**provider.meta, "model": "provider+correction+own", "provider_source": provider.source}
    if history is None or len(history) == 0 or history.kind != provider.kind:
        return _with_values(provider, start, p, {**meta, "correction": None, "own_weight": 0.0})
    last = min(len(history), history.index_of(now)) - 1
    if last < 0 or not np.isfinite(history.values[last]):
        return _with_values(provider, start, p, {**meta, "correction": None, "own_weight": 0.0})
    t_last = history.start + history.step * last            # the last observed slot, [t_last, t_last + step)
    p_last = float(provider.resample(t_last, history.step, 1)[0])    # edge value if the provider starts later
    corr = float(history.values[last]) - p_last
    f_times = start.timestamp() + pstep.total_seconds() * np.arange(n)
    lead_h = np.maximum(f_times - (t_last + history.step).timestamp(), 0.0) / 3600.0 + pstep.total_seconds() / 3600.0
    tau = policy.provider_correction_tau_hours
    out = p + (corr * np.exp(-lead_h / tau) if tau > 0 else 0.0)
    w_used = 0.0
    w = policy.provider_own_weight
    if w > 0:
        try:
            own = forecast_from_history(history.window(history.start, history.start + history.step * (last + 1)),
                                        now, horizon, policy)
        except SignalError:
            own = None
        if own is not None:
            o = own.resample(start, pstep, n, fill="nan")
            covered = np.isfinite(o)
            out = np.where(covered, (1 - w) * out + w * np.where(covered, o, 0.0), out)
            w_used = w
    return _with_values(provider, start, np.maximum(out, 0.0),
                          {**meta, "correction": round(corr, 2), "own_weight": w_used})


def _with_values(series: IntensitySeries, start: datetime, values: np.ndarray, meta: dict) -> IntensitySeries:
    return IntensitySeries(start, series.step, values, source=f"blend({series.source})", estimate=True,
                           issued_at=series.issued_at, kind=series.kind, meta=meta)
