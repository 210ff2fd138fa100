"""A bounded local record of the intensity history read from a provider.

The own forecaster wants two weeks of history, and many plans serve only the last 24 h
(Electricity Maps' free tier: /latest and /history). So whatever a provider's history
answers is kept, per provider and zone, in a small store that survives restarts — a
ConfigMap in the operator's namespace, never the pod's disk — and merged with each new
answer: after a few days of running the forecaster has weeks of data.

- ``RecordedHistory(provider, store)`` is a CarbonSource: ``current``/``forecast`` pass
  through; ``history`` asks the provider only for what the record lacks (from its last
  slot on), merges the answer into the record, saves it and serves the merged window.
  When the provider fails, a record that reaches within ``max_stale`` of the range's end
  serves instead (``meta["recorded"]["provider_error"]`` says why). A store that cannot
  be read or written never fails a call: it is logged and the provider's answer serves.
- Bounds: ``retention`` (35 days) per zone at the provider's own step. Gaps up to
  ``max_gap`` (3 days: an operator that was down) are filled with the same slot a day
  earlier (linear where there is none), counted in ``meta["filled"]``; a longer gap cuts
  the older part off (the forecaster needs contiguous history).
- Encoding: per key one compact JSON line; values in 0.1 gCO2e/kWh as little-endian
  uint16 (uint32 where a value exceeds 6553.5), zlib-compressed, base64. Measured on the
  shared traces: 35 days of Electricity Maps hourly data 2.1 KiB a zone, NESO half-hourly
  2.9 KiB, WattTime 5-minute (31 days) 12 KiB, incompressible 5-minute noise 23 KiB. The
  ConfigMap store refuses a write that would take the whole object past ``max_bytes``
  (900,000 of Kubernetes' 1 MiB).
"""
from __future__ import annotations

import base64
import json
import logging
import math
import re
import threading
import zlib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np

from greenml.signals.base import CarbonSource, IntensitySeries, SignalError
from greenml.timeutil import ensure_utc, format_time, parse_time

log = logging.getLogger("greenml.signals.history")

RETENTION = timedelta(days=35)
MAX_GAP = timedelta(days=3)
MAX_STALE = timedelta(hours=24)
CONFIGMAP_MAX_BYTES = 900_000   # of the 1 MiB an object may take in etcd
SCALE = 10.0                    # stored unit: 0.1 gCO2e/kWh
FORMAT = 1
_DAY = 86400.0
_KEY = re.compile(r"[^-._a-zA-Z0-9]")


class HistoryStoreError(Exception):
    """The store could not be read or written (never fatal: the record is best-effort)."""


class HistoryStore(Protocol):
    """Where the record lives: one text value per key (``<provider>.<zone>``)."""

    def load(self, key: str) -> str | None:
        ...

    def save(self, key: str, text: str) -> None:
        ...


def record_key(provider: str, zone: str) -> str:
    """A ConfigMap data key for the provider's zone (``[-._a-zA-Z0-9]``)."""
    return _KEY.sub("_", f"{provider}.{zone}")


# ------------------------------------------------------------------------------- encoding
def encode(series: IntensitySeries) -> str:
    vals = np.rint(np.asarray(series.values) * SCALE)
    dtype = "<u2" if len(vals) == 0 or vals.max() <= np.iinfo(np.uint16).max else "<u4"
    packed = base64.b64encode(zlib.compress(vals.astype(dtype).tobytes(), 9)).decode("ascii")
    return json.dumps({"format": FORMAT, "start": format_time(series.start), "step": series.step.total_seconds(),
                       "kind": series.kind, "source": series.source, "dtype": dtype, "values": packed},
                      separators=(",", ":"))


def decode(text: str) -> IntensitySeries:
    """The series of :func:`encode`; ValueError when the text is not one."""
    try:
        d = json.loads(text)
        if d.get("format") != FORMAT or d.get("dtype") not in ("<u2", "<u4"):
            raise ValueError(f"unknown record format {d.get('format')!r}/{d.get('dtype')!r}")
        raw = zlib.decompress(base64.b64decode(d["values"], validate=True))
        vals = np.frombuffer(raw, dtype=d["dtype"]).astype(np.float64) / SCALE
        return IntensitySeries(parse_time(d["start"]), timedelta(seconds=float(d["step"])), vals,
                               source=str(d["source"]), kind=str(d["kind"]))
    except (KeyError, TypeError, AttributeError, zlib.error, base64.binascii.Error) as exc:  # type: ignore[attr-defined]
        raise ValueError(f"not a history record: {type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------------------- merging
def _fill_gaps(vals: np.ndarray, step: timedelta, max_gap: timedelta) -> tuple[int, np.ndarray, int]:
    """Drop leading/trailing NaN; fill inner NaN runs up to ``max_gap`` (the same slot a day
    earlier, else linear); cut everything before a longer run. Returns (index of the first
    kept value, the kept values, how many were filled)."""
    known = np.flatnonzero(~np.isnan(vals))
    if len(known) == 0:
        return 0, vals[:0], 0
    first = int(known[0])
    vals = vals[first:int(known[-1]) + 1].copy()
    gap = np.isnan(vals)
    edges = np.diff(np.concatenate(([0], gap.astype(np.int8), [0])))
    runs = list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))   # NaN runs [a, b)
    long = [int(b) for a, b in runs if (b - a) * step > max_gap]
    if long:   # keep what follows the last long gap (nothing in it is NaN any more)
        first, vals = first + long[-1], vals[long[-1]:]
        runs = [(a - long[-1], b - long[-1]) for a, b in runs if a >= long[-1]]
    per_day = _DAY / step.total_seconds()
    for a, b in runs if per_day == int(per_day) else ():
        for j in range(a, b):
            if j >= per_day and not np.isnan(vals[j - int(per_day)]):
                vals[j] = vals[j - int(per_day)]
    rest = np.isnan(vals)
    if rest.any():
        pos = np.arange(len(vals))
        vals[rest] = np.interp(pos[rest], pos[~rest], vals[~rest])
    return first, vals, sum(int(b - a) for a, b in runs)


def merge(old: IntensitySeries | None, new: IntensitySeries, *, retention: timedelta = RETENTION,
          max_gap: timedelta = MAX_GAP) -> IntensitySeries:
    """``new`` laid over ``old`` on new's grid (new wins where both have a value), gaps
    filled or cut (see the module docstring), the last ``retention`` kept. A record of
    another kind (the provider changed) is dropped, never mixed."""
    step = new.step
    sec = step.total_seconds()
    if old is None or len(old) == 0 or old.kind != new.kind:
        start, vals = new.start, np.array(new.values, dtype=np.float64)
    else:
        start = new.start + step * min(0, math.floor((old.start - new.start).total_seconds() / sec))
        n = int(math.ceil((max(old.end, new.end) - start).total_seconds() / sec))
        vals = old.resample(start, step, n, fill="nan")
        i = int(round((new.start - start).total_seconds() / sec))
        vals[i:i + len(new)] = new.values
    first, vals, filled = _fill_gaps(vals, step, max_gap)
    keep = max(1, int(retention.total_seconds() // sec))
    first += max(0, len(vals) - keep)
    vals = vals[-keep:]
    return IntensitySeries(start + step * first, step, vals, source=new.source, estimate=new.estimate,
                           kind=new.kind, meta={"filled": filled})


# ------------------------------------------------------------------------------- stores
class MemoryHistoryStore:
    """The record in this process only (gone on restart): for tests and the simulator."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def load(self, key: str) -> str | None:
        return self.data.get(key)

    def save(self, key: str, text: str) -> None:
        self.data[key] = text


class ConfigMapHistoryStore:
    """The record in one ConfigMap's ``data`` (a key per provider and zone), through the
    project's Kubernetes client (greenml.kube). Read once, on first use; each save patches
    its one key (a JSON merge patch; the ConfigMap is created when absent).
    ``kube``: a Kube, or a function making one on first use."""

    LABELS = {"app.kubernetes.io/managed-by": "greenml-operator", "greenml.io/record": "signal-history"}

    def __init__(self, namespace: str, name: str, kube: Any, *, max_bytes: int = CONFIGMAP_MAX_BYTES) -> None:
        self.namespace, self.name = namespace, name
        self._kube = kube
        self.max_bytes = max_bytes
        self._data: dict[str, str] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ConfigMapHistoryStore({self.namespace}/{self.name})"

    def _client(self) -> Any:
        if callable(self._kube) and not hasattr(self._kube, "request"):
            try:
                self._kube = self._kube()
            except Exception as exc:   # no in-cluster config nor kubeconfig: the record is off, nothing else
                raise HistoryStoreError(f"no Kubernetes client: {type(exc).__name__}: {exc}") from None
        return self._kube

    def _read(self) -> dict[str, str]:
        from greenml.kube.client import ApiError

        if self._data is None:
            try:
                cm = self._client().get("v1", "configmaps", self.namespace, self.name)
            except (ApiError, ValueError) as exc:
                raise HistoryStoreError(str(exc)) from None
            self._data = dict((cm or {}).get("data") or {})
        return self._data

    def load(self, key: str) -> str | None:
        with self._lock:
            return self._read().get(key)

    def save(self, key: str, text: str) -> None:
        from greenml.kube.client import ApiError

        with self._lock:
            data = self._read()
            size = sum(len(k) + len(v) for k, v in data.items() if k != key) + len(key) + len(text)
            if size > self.max_bytes:
                raise HistoryStoreError(f"ConfigMap {self.namespace}/{self.name} would hold {size} bytes "
                                        f"(limit {self.max_bytes}): {key} not recorded")
            try:
                self._client().merge_configmap_data(self.namespace, self.name, {key: text}, labels=self.LABELS)
            except (ApiError, ValueError) as exc:
                raise HistoryStoreError(str(exc)) from None
            data[key] = text


# ------------------------------------------------------------------------------- the source
@dataclass(frozen=True)
class RecordPolicy:
    retention: timedelta = RETENTION
    max_gap: timedelta = MAX_GAP
    max_stale: timedelta = MAX_STALE


class RecordedHistory:
    """``provider`` with a bounded, persistent record of its history (see the module docstring)."""

    def __init__(self, provider: CarbonSource, store: HistoryStore, policy: RecordPolicy = RecordPolicy()) -> None:
        self.provider = provider
        self.store = store
        self.policy = policy
        self.name = provider.name
        self.kind = getattr(provider, "kind", "average")
        self._records: dict[str, IntensitySeries | None] = {}
        self._locks: dict[str, threading.Lock] = {}   # one per key: zones do not wait on each other's requests
        self._guard = threading.Lock()
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"RecordedHistory({self.provider!r}, {self.store!r})"

    def current(self, zone: str, now: datetime) -> IntensitySeries:
        return self.provider.current(zone, now)

    def forecast(self, zone: str, now: datetime, horizon: timedelta) -> IntensitySeries:
        return self.provider.forecast(zone, now, horizon)

    def _warn(self, what: str, exc: Exception) -> None:
        if what not in self._warned:   # once per kind of failure: a missing RBAC rule must not flood the log
            self._warned.add(what)
            log.warning("signal history record (%r): %s: %s", self.store, what, exc)

    def _record(self, key: str) -> IntensitySeries | None:
        if key not in self._records:
            try:
                text = self.store.load(key)
                self._records[key] = decode(text) if text else None
            except (HistoryStoreError, ValueError) as exc:
                self._warn("read", exc)
                self._records[key] = None
        return self._records[key]

    def history(self, zone: str, start: datetime, end: datetime) -> IntensitySeries:
        start, end = ensure_utc(start), ensure_utc(end)
        key = record_key(self.name, zone)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            old = self._record(key)
            usable = old is not None and old.kind == self.kind and len(old) > 0
            if usable and old.start <= start and end <= old.end:   # all of it recorded: no request
                return self._serve(old, start, end, {})
            ask = start
            if usable and old.start <= start < old.end:   # only what the record lacks (its last slot is re-read)
                ask = max(start, old.end - old.step)
            try:
                fresh = self.provider.history(zone, ask, end)
            except SignalError as exc:
                if usable and old.end > start and end - old.end <= self.policy.max_stale:
                    return self._serve(old, start, end, {}, provider_error=exc.reason)
                raise
            if len(fresh) == 0:
                return self._serve(old, start, end, {}) if usable and old.end > start and old.start < end else fresh
            merged = merge(old if usable else None, fresh, retention=self.policy.retention,
                           max_gap=self.policy.max_gap)
            if old is None or (merged.start, merged.step, merged.kind) != (old.start, old.step, old.kind) \
                    or not np.array_equal(merged.values, old.values):
                try:
                    self.store.save(key, encode(merged))
                except HistoryStoreError as exc:
                    self._warn("write", exc)
                self._records[key] = merged
            return self._serve(merged, start, end, fresh.meta, estimate=fresh.estimate)

    def _serve(self, rec: IntensitySeries, start: datetime, end: datetime, meta: dict, *,
               estimate: bool = False, provider_error: str | None = None) -> IntensitySeries:
        out = rec.window(start, end)
        info: dict[str, Any] = {"from": format_time(rec.start), "to": format_time(rec.end), "points": len(rec)}
        if provider_error:
            info["provider_error"] = provider_error
        m = {k: v for k, v in meta.items() if k != "partial"}
        m.update(recorded=info, filled=int(rec.meta.get("filled", 0)) + int(meta.get("filled", 0) or 0))
        if len(out) and out.start > start + rec.step / 2:
            m["partial"] = True   # the record and the provider together do not reach back to start
        return replace(out, estimate=estimate, meta=m)


def history_store(namespace: str | None, name: str | None, kube: Any) -> ConfigMapHistoryStore | None:
    """The ConfigMap store, or None when it is switched off (no name) or has no namespace."""
    if not name:
        return None
    if not namespace:
        log.warning("signal history record off: no namespace for ConfigMap %s (set GREENML_HISTORY_NAMESPACE "
                    "outside a cluster)", name)
        return None
    return ConfigMapHistoryStore(namespace, name, kube)


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def own_namespace(path: str | None = None) -> str | None:
    """The pod's namespace (from its service-account mount), None outside a cluster."""
    try:
        with open(path or SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError:
        return None

