"""The fallback chain: provider → own forecaster on cached provider history → embedded.

A provider outage never stops a plan: every call ends at the embedded profile, which
knows the main zones offline. The returned series says who served it:

- ``source``: the serving link's name ("electricitymaps", "forecaster(electricitymaps)", "embedded");
- ``meta["link"]``: "provider" | "forecaster" | "embedded";
- ``kind`` is the served series' own ("average"/"marginal"); when the embedded profile
  (average) stands in for a provider of another kind (WattTime: marginal),
  ``meta["kind_changed"]`` says so;
- ``meta["fallback"]``: ``[{"link": ..., "reason": ..., "message": ...}]`` for each link
  that failed before it (reasons: Timeout, Unauthorized, Forbidden, RateLimited,
  ServerError, BadQuery, Malformed, UnknownZone, Stale, InsufficientHistory, Unavailable);
- a provider forecast also carries ``meta["covers_until"]`` (where the provider's answer
  ends) and ``meta["short"]`` (it ends before now + horizon). A short one is continued on
  the provider's grid by the next links that serve the same kind — the own forecaster (up
  to its 72 h), then the embedded profile — each part listed in ``meta["extended"]``
  (link, source, from, to); another kind never continues it (``meta["extend_failed"]``).
- with ``ChainPolicy.blend`` (the operator's ``forecast_blend`` setting, on by default) a
  provider forecast is corrected by the latest recorded actual and mixed with the own
  forecast (``forecaster.blend_with_provider``) when recent history of the same kind covers
  the own forecaster's minimum: ``source`` is then ``"<provider>+blend"`` and
  ``meta["blend"]`` says what was done (``applied``, ``correction``, ``own_weight``, the
  history used) or why not (``applied: False``, ``reason``): the provider's forecast is then
  served as issued. The history comes from the chain's cache; the blend asks the provider
  for it at most once per zone per ``history_ttl``, and no failure of the blend leaves it.
- ``describe(series)`` reads all this into a SignalInfo: the ``SignalsDegraded`` and
  ``SignalKindChanged`` conditions and the metric labels (source, link, kind, provider_kind).

A provider that answered 429 is blocked for its Retry-After (greenml.signals.providers):
until then its calls fail at once with RateLimited and the next link serves.

Messages come from SignalError texts, which never carry credentials (providers redact).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Callable

import numpy as np

from greenml.signals.base import CarbonSource, IntensitySeries, SignalError
from greenml.signals.embedded import EmbeddedSource
from greenml.signals.forecaster import ForecasterPolicy, blend_with_provider, forecast_from_history
from greenml.signals.robust import Clock, TTLCache, check_fresh
from greenml.timeutil import ensure_utc, format_time

log = logging.getLogger("greenml.signals.chain")


@dataclass(frozen=True)
class ChainPolicy:
    """Freshness and caching rules of the chain."""

    current_max_age: timedelta = timedelta(hours=2)     # a "current" value older than this is Stale
    forecast_max_age: timedelta = timedelta(hours=6)    # a forecast issued longer ago is Stale
    history_lookback: timedelta = timedelta(days=14)    # what the own forecaster asks the provider for
    history_ttl: float = 3600.0                         # seconds a fetched history is reused
    history_max_stale: timedelta = timedelta(hours=24)  # cached history usable on error if it ends within this
    forecast_ttl: float = 300.0                         # seconds a provider forecast is reused
    history_retry: float = 60.0                         # seconds a failed history request is not repeated
    forecaster: ForecasterPolicy = ForecasterPolicy()
    # a provider forecast corrected by the latest actual and mixed with the own forecast
    # (forecaster.blend_with_provider). Off for a bare chain (served as issued); the operator's
    # setting forecast_blend (default on) sets it through build_source.
    blend: bool = False
    blend_history_max_age: timedelta = timedelta(hours=3)   # the history must reach this close to now


def _mark(series: IntensitySeries, link: str, failures: list[dict], wanted_kind: str | None = None) -> IntensitySeries:
    meta = {**series.meta, "link": link, "fallback": list(failures)}
    if wanted_kind is not None and series.kind != wanted_kind:
        meta["kind_changed"] = {"provider": wanted_kind, "served": series.kind}   # e.g. marginal → average
    return replace(series, meta=meta)


def _failure(link: str, exc: SignalError) -> dict:
    return {"link": link, "reason": exc.reason, "message": str(exc)}


class FallbackChain:
    """A CarbonSource that tries ``primary`` (None: none configured), then the own
    forecaster on the primary's history, then ``fallback`` (the embedded profile)."""

    def __init__(self, primary: CarbonSource | None, *, fallback: CarbonSource | None = None,
                 policy: ChainPolicy = ChainPolicy(), clock: Clock = time.monotonic,
                 forecaster: Callable[..., IntensitySeries] = forecast_from_history) -> None:
        self.primary = primary
        self.fallback = fallback or EmbeddedSource()
        self.policy = policy
        self._forecast = forecaster
        self._history_cache: TTLCache[IntensitySeries] = TTLCache(policy.history_ttl, clock=clock)
        # a failed history request, by zone: not repeated for history_retry seconds (the own
        # forecaster and short-forecast continuations ask on every call otherwise)
        self._history_failed: TTLCache[SignalError] = TTLCache(policy.history_retry, clock=clock)
        # by zone: (the forecast, the end of the range it was asked for)
        self._forecast_cache: TTLCache[tuple[IntensitySeries, datetime]] = TTLCache(policy.forecast_ttl, clock=clock)
        # by zone: a history request was made (any link) within history_ttl — the blend then
        # uses what is cached and asks nothing (at most one request per zone per history_ttl)
        self._history_asked: TTLCache[bool] = TTLCache(policy.history_ttl, clock=clock)
        self._blend_said: dict[str, str] = {}   # by zone: the last blend outcome logged
        self.name = f"chain({primary.name if primary else 'none'}>{self.fallback.name})"

    def __repr__(self) -> str:
        return f"FallbackChain(primary={getattr(self.primary, 'name', None)!r}, fallback={self.fallback.name!r})"

    # -- links -------------------------------------------------------------------------
    def _fallback(self, call: Callable[[CarbonSource], IntensitySeries], failures: list[dict]) -> IntensitySeries:
        try:
            return _mark(call(self.fallback), "embedded", failures, getattr(self.primary, "kind", None))
        except SignalError as exc:
            failures.append(_failure(self.fallback.name, exc))
            summary = "; ".join(f"{f['link']}: {f['reason']}" for f in failures)
            err = SignalError(f"no source could serve ({summary})", reason=exc.reason)
            err.failures = failures  # type: ignore[attr-defined]
            raise err from None

    def _history_for_forecaster(self, zone: str, now: datetime) -> IntensitySeries:
        assert self.primary is not None
        key = (zone,)
        cached = self._history_cache.get(key)
        if cached is not None and cached.end >= now - timedelta(hours=1):
            return cached
        try:
            failed = self._history_failed.get(key)
            if failed is not None:
                raise failed
            try:
                self._history_asked.put(key, True)
                hist = self.primary.history(zone, now - self.policy.history_lookback, now)
                if len(hist) == 0:
                    raise SignalError(f"{self.primary.name}: empty history for {zone}", reason="Malformed")
            except SignalError as exc:
                self._history_failed.put(key, exc)
                raise
            self._history_cache.put(key, hist)
            return hist
        except SignalError:
            stale = self._history_cache.get_stale(key)
            if stale is not None and now - stale.end <= self.policy.history_max_stale:
                return stale
            raise

    # -- CarbonSource ------------------------------------------------------------------
    def current(self, zone: str, now: datetime) -> IntensitySeries:
        now = ensure_utc(now)
        failures: list[dict] = []
        if self.primary is not None:
            try:
                s = check_fresh(self.primary.current(zone, now), now, self.policy.current_max_age, self.primary.name)
                return _mark(s, "provider", failures)
            except SignalError as exc:
                failures.append(_failure(self.primary.name, exc))
        return self._fallback(lambda src: src.current(zone, now), failures)

    def history(self, zone: str, start: datetime, end: datetime) -> IntensitySeries:
        failures: list[dict] = []
        if self.primary is not None:
            try:
                s = self.primary.history(zone, start, end)
                if len(s) == 0:
                    raise SignalError(f"{self.primary.name}: no history for {zone}", reason="Malformed")
                return _mark(s, "provider", failures)
            except SignalError as exc:
                failures.append(_failure(self.primary.name, exc))
        return self._fallback(lambda src: src.history(zone, start, end), failures)

    def forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        now = ensure_utc(now)
        failures: list[dict] = []
        if self.primary is not None:
            try:
                s = self._provider_forecast(zone, now, horizon)
                if self.policy.blend:
                    s = self._blended(s, zone, now, horizon)
                return _mark(self._extended(s, zone, now, horizon) if s.meta.get("short") else s, "provider", failures)
            except SignalError as exc:
                failures.append(_failure(self.primary.name, exc))
            try:
                return _mark(self._own_forecast(zone, now, horizon), "forecaster", failures)
            except SignalError as exc:
                failures.append(_failure(f"forecaster({self.primary.name})", exc))
        return self._fallback(lambda src: src.forecast(zone, now, horizon), failures)

    def _own_forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        return self._forecast(self._history_for_forecaster(zone, now), now, horizon, self.policy.forecaster)

    def _history_for_blend(self, zone: str, now: datetime) -> IntensitySeries | None:
        """The cached history of ``zone``; asks the provider (through the forecaster's path, so
        the answer is cached for both) only when no history request was made for the zone
        within ``history_ttl`` and the cache does not serve. None when there is none."""
        key = (zone,)
        if self._history_asked.get(key) is None:
            try:
                return self._history_for_forecaster(zone, now)
            except SignalError:
                self._history_asked.put(key, True)   # a failure (or a retry pause) counts as the hour's request
        return self._history_cache.get_stale(key)

    def _blended(self, s: IntensitySeries, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        """``s`` (the provider's forecast) corrected by the latest actual and mixed with the own
        forecast, when usable history exists; otherwise ``s`` as issued, ``meta["blend"]``
        saying why. Never raises: any failure serves ``s`` (logged)."""
        try:
            hist = self._history_for_blend(zone, now)
            why = self._unusable(hist, s, now)
            if why is not None:
                return self._as_issued(s, zone, *why)
            assert hist is not None
            b = blend_with_provider(s, hist, now, horizon, self.policy.forecaster)
            if b.meta.get("correction") is None or len(b) == 0 or b.kind != s.kind \
                    or not np.isfinite(b.values).all():
                return self._as_issued(s, zone, "NotBlended", "the blend kept the provider's forecast")
        except Exception as exc:   # noqa: BLE001 - the blend is an improvement, never a failure
            return self._as_issued(s, zone, "BlendFailed", f"{type(exc).__name__}: {exc}", error=True)
        used = hist.window(hist.start, now)
        info = {"applied": True, "correction": b.meta.get("correction"), "own_weight": b.meta.get("own_weight"),
                "history_from": format_time(used.start), "history_to": format_time(used.end)}
        self._said(zone, "applied", f"blending the {s.source} forecast for {zone} with the latest actual "
                                    f"(history to {info['history_to']})")
        meta = {k: v for k, v in s.meta.items() if k not in ("blend",)}
        meta.update(model=b.meta.get("model"), blend=info)
        return replace(b, source=f"{s.source}+blend", meta=meta)

    def _unusable(self, hist: IntensitySeries | None, s: IntensitySeries,
                  now: datetime) -> tuple[str, str] | None:
        """(reason, message) when ``hist`` cannot correct ``s`` at ``now``; None when it can."""
        if hist is None or len(hist) == 0:
            return "NoHistory", "no recorded history"
        if hist.kind != s.kind:
            return "KindMismatch", f"history is {hist.kind}, the forecast {s.kind}: never mixed"
        before = min(len(hist), hist.index_of(now))
        end = hist.start + hist.step * max(before, 0)
        if before <= 0 or now - end > self.policy.blend_history_max_age:
            return "Stale", f"history ends {format_time(hist.end)}, more than {self.policy.blend_history_max_age} before now"
        need = self.policy.forecaster.min_history
        if hist.step * before < need:
            return "InsufficientHistory", f"{hist.step * before} of history, the blend wants {need}"
        return None

    def _as_issued(self, s: IntensitySeries, zone: str, reason: str, message: str, *,
                   error: bool = False) -> IntensitySeries:
        self._said(zone, reason, f"serving the {s.source} forecast for {zone} as issued, not blended: "
                                 f"{reason}: {message}", error=error)
        return replace(s, meta={**s.meta, "blend": {"applied": False, "reason": reason, "message": message}})

    def _said(self, zone: str, outcome: str, line: str, *, error: bool = False) -> None:
        """Log a zone's blend outcome when it changes (not once per reconcile)."""
        if self._blend_said.get(zone) != outcome:
            self._blend_said[zone] = outcome
            (log.warning if error else log.info)("%s", line)

    def _extended(self, s: IntensitySeries, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        """A short provider forecast, continued towards ``now + horizon`` on the provider's grid
        by the next links that serve the same kind: the own forecaster (up to its 72 h), then
        the embedded profile. ``meta["extended"]`` lists each part (link, source, from, to);
        ``covers_until`` and ``short`` still say what the provider returned. Where nothing
        serves, the series ends where the last part ended."""
        want = now + horizon
        parts: list[dict] = []
        tried: list[dict] = []
        values = [s.values]
        end = s.end
        fillers: list[tuple[str, Callable[[], IntensitySeries]]] = [
            ("forecaster", lambda: self._own_forecast(zone, now, horizon)),
            ("embedded", lambda: self.fallback.forecast(zone, now, horizon))]
        for link, serve in fillers:
            if end >= want:
                break
            try:
                tail = serve()
                if tail.kind != s.kind:
                    raise SignalError(f"{tail.source} serves {tail.kind}, the provider {s.kind}: never mixed",
                                      reason="KindMismatch")
                if tail.end <= end:
                    raise SignalError(f"{tail.source} ends {tail.end.isoformat()}, not past {end.isoformat()}",
                                      reason="Stale")
            except SignalError as exc:
                tried.append(_failure(link, exc))
                continue
            upto = min(want, tail.end)
            k = int(-(-(upto - end).total_seconds() // s.step.total_seconds()))
            values.append(tail.resample(end, s.step, k, fill="edge"))
            parts.append({"link": link, "source": tail.source, "from": end.isoformat(),
                          "to": (end + s.step * k).isoformat()})
            end += s.step * k
        meta = {**s.meta, "extended": parts}
        if tried:
            meta["extend_failed"] = tried
        return replace(s, values=np.concatenate(values), meta=meta)

    def _provider_forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        assert self.primary is not None
        # keyed by zone, not by horizon: callers ask for different, moving horizons (a budget
        # to its period's end), and a key per horizon would call the provider every time.
        # A cached forecast serves a request it covers (now .. now + horizon), or one that
        # reaches no further than what it was fetched for (the provider was asked for that
        # much and answered shorter: asking again within the TTL gets no more). Either way
        # it is served as returned, never extended: ``meta["covers_until"]`` says where it
        # ends and ``meta["short"]`` whether that is before now + horizon.
        cached = self._forecast_cache.get(zone)
        want = now + horizon
        if cached is not None and cached[0].start <= now < cached[0].end and want <= max(cached[0].end, cached[1]):
            return self._covering(cached[0], want)
        s = self.primary.forecast(zone, now, horizon)
        if len(s) == 0:
            raise SignalError(f"{self.primary.name}: empty forecast for {zone}", reason="Malformed")
        issued = s.issued_at or s.start
        if now - issued > self.policy.forecast_max_age:
            raise SignalError(f"{self.primary.name}: forecast issued {issued.isoformat()} is older than "
                              f"{self.policy.forecast_max_age}", reason="Stale")
        if s.end <= now:
            raise SignalError(f"{self.primary.name}: forecast ends {s.end.isoformat()}, before now", reason="Stale")
        self._forecast_cache.put(zone, (s, want))
        return self._covering(s, want)

    @staticmethod
    def _covering(s: IntensitySeries, want: datetime) -> IntensitySeries:
        return replace(s, meta={**s.meta, "covers_until": s.end.isoformat(), "short": s.end < want})


# ------------------------------------------------------------------------------ what a series says
@dataclass(frozen=True)
class SignalInfo:
    """Where a served series came from, for a status condition and metric labels
    (``describe(series)``). Fields read the chain's meta (see the module docstring)."""

    source: str
    link: str                                  # provider | forecaster | embedded
    kind: str                                  # the kind served
    provider_kind: str | None                  # the provider's kind where another kind serves
    estimate: bool
    fallback: tuple[tuple[str, str], ...]      # (link, reason) of each link that failed first
    short: bool = False                        # the provider's forecast ended before the horizon
    covers_until: str | None = None            # where the provider's part ends
    extended: tuple[tuple[str, str], ...] = ()  # (link, from) of each part after it
    partial: bool = False                      # history not reaching back to the start asked
    zone_map: str | None = None                # why another zone's profile serves
    blended: bool = False                      # the provider's forecast corrected by the latest actual (+ own)

    @property
    def kind_changed(self) -> bool:
        return self.provider_kind is not None and self.provider_kind != self.kind

    @property
    def degraded_reason(self) -> str | None:
        """The first failed link's reason (as TrainingJobs report it); ``ShortForecast`` when
        the provider answered but not for the whole horizon; None when it served in full."""
        if self.fallback:
            return self.fallback[0][1]
        if self.link != "provider":
            return f"Fallback:{self.link}"
        if self.short:
            return "ShortForecast"
        return None

    def conditions(self) -> list[tuple[str, bool, str, str]]:
        """``(type, status, reason, message)``: ``SignalsDegraded`` and ``SignalKindChanged``
        (a fallback of another kind — WattTime's marginal signal replaced by an average
        profile — is never silent)."""
        tried = "; ".join(f"{link}: {reason}" for link, reason in self.fallback)
        parts = [f"intensity from {self.source} ({self.kind}{', estimate' if self.estimate else ''})"]
        if self.blended:
            parts.append("the provider's forecast corrected by the latest actual and blended with the own forecast")
        if tried:
            parts.append(f"after {tried}")
        if self.short:
            then = ", then ".join(f"{link} from {start}" for link, start in self.extended) or "nothing"
            parts.append(f"the provider's forecast ends {self.covers_until}; {then}")
        if self.zone_map:
            parts.append(self.zone_map)
        reason = self.degraded_reason
        kind_msg = (f"the provider's {self.provider_kind} signal is not served: {self.kind} intensity from "
                    f"{self.source} stands in (not comparable; accounting and thresholds use {self.kind})"
                    if self.kind_changed else f"{self.kind} intensity, as the provider's")
        return [("SignalsDegraded", reason is not None, reason or "ProviderServing", "; ".join(parts)),
                ("SignalKindChanged", self.kind_changed, "KindChanged" if self.kind_changed else "SameKind",
                 kind_msg)]

    def labels(self) -> dict[str, str]:
        """Metric labels: ``source``, ``link``, ``kind`` (served), ``provider_kind``
        (the provider's: equal to ``kind`` unless another kind stands in)."""
        return {"source": self.source, "link": self.link, "kind": self.kind,
                "provider_kind": self.provider_kind or self.kind}


def describe(series: IntensitySeries) -> SignalInfo:
    """What a series served by the chain says about its origin (see SignalInfo)."""
    m = series.meta if isinstance(series.meta, dict) else {}
    changed = m.get("kind_changed") or {}
    return SignalInfo(
        source=series.source, link=str(m.get("link", "provider")), kind=series.kind,
        provider_kind=changed.get("provider") if isinstance(changed, dict) else None,
        estimate=bool(series.estimate),
        fallback=tuple((str(f.get("link", "?")), str(f.get("reason", "Unknown"))) for f in m.get("fallback") or ()),
        short=bool(m.get("short")), covers_until=m.get("covers_until"),
        extended=tuple((str(x.get("link")), str(x.get("from"))) for x in m.get("extended") or ()),
        partial=bool(m.get("partial")), zone_map=m.get("zone_map"),
        blended=isinstance(m.get("blend"), dict) and m["blend"].get("applied") is True)
