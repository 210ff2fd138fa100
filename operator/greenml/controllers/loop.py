"""The operator's one planning loop, and the plumbing it shares with the handlers.

kopf keeps the watches (event handlers: no finalizer, no per-object timer). What they see
goes into a ``Store`` (the latest body per object) and, when it matters for a decision,
wakes the object in the ``Loop``. The loop keeps, per object, the next moment at which its
decision can change — a window opens or closes, the latest safe start, a heartbeat, a
budget step, a replan — sleeps until the earliest, and reconciles only the objects that are
due, a bounded number at a time. A reconcile returns the object's next wake-up; an error
reschedules that object with backoff and never stops its future wake-ups.

Only the replica holding the Lease runs the loop (``LeaseElector``); the others keep their
watches (a warm store) and take over when the lease expires.
"""
from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import logging
import os
import random
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Mapping

from greenml.kube import ApiError, Conflict, Kube

log = logging.getLogger("greenml.loop")

Key = tuple[str, str, str]          # (kind, namespace, name)
LEGACY_FINALIZER = "greenml.io/finalizer"   # what kopf's timers put on every object before the loop
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)   # seconds before retry n of a failed object
JITTER = 0.2                                                 # ± this fraction, so that failures spread out
NEVER = datetime.max.replace(tzinfo=timezone.utc)   # a handler's answer: no wake-up until an event


# ------------------------------------------------------------------ status patch + events of one reconcile
@dataclass
class Patch:
    """What one reconcile decided to write: status fields (merge-patch semantics) and Events."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)   # (type, reason, message)


_current: contextvars.ContextVar[Patch | None] = contextvars.ContextVar("greenml_patch", default=None)


def post_event(body: Mapping[str, Any], warning: bool, reason: str, message: str) -> None:
    """Queue an Event about the object being reconciled (posted after its status write)."""
    patch = _current.get()
    if patch is not None:
        patch.events.append(("Warning" if warning else "Normal", reason, message))


def status_changes(stored: Mapping[str, Any], new: Mapping[str, Any], volatile: Mapping[str, str] = {}) -> dict:
    """The top-level status fields that differ from what is stored. ``volatile``: field →
    sub-key whose change alone is not a change (e.g. plan.computedAt: a replan that finds
    the same plan rewrites nothing; the stored value is kept)."""
    out: dict[str, Any] = {}
    for k, v in new.items():
        old = _pruned(stored.get(k))
        cmp = _pruned(v)
        sub = volatile.get(k)
        if sub and isinstance(cmp, dict) and isinstance(old, dict) and sub in old:
            if {**cmp, sub: old[sub]} == old:
                continue
        if old != cmp:
            out[k] = v
    return out


def _pruned(value: Any) -> Any:
    """A merge patch deletes null fields, so the stored status never holds them: compare
    without them (else every write of a ``runningSince: null`` looked like a change)."""
    if isinstance(value, dict):
        return {k: _pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


# ------------------------------------------------------------------ the latest body per object
def _rv(body: Mapping[str, Any]) -> int | None:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


class Store:
    """Latest body per (namespace, name), per kind — fed by the watches and by the operator's
    own writes (a PATCH answers with the object: the next reconcile sees what was written
    even when the watch lags). An older resourceVersion never replaces a newer one."""

    def __init__(self) -> None:
        self._by_kind: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}

    def kind(self, kind: str) -> dict[tuple[str, str], dict[str, Any]]:
        return self._by_kind.setdefault(kind, {})

    def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        return self._by_kind.get(kind, {}).get((ns, name))

    def put(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Store ``body``; returns the body it replaced (None: new). Ignored when older."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        table = self.kind(kind)
        old = table.get(key)
        if old is not None:
            a, b = _rv(old), _rv(body)
            if a is not None and b is not None and b < a and (old.get("metadata") or {}).get("uid") == meta.get("uid"):
                return old
        table[key] = lean(body)
        return old

    def pop(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        return self._by_kind.get(kind, {}).pop((ns, name), None)

    def keys(self, kind: str) -> list[tuple[str, str]]:
        return list(self._by_kind.get(kind, {}))

    def __len__(self) -> int:
        return sum(len(t) for t in self._by_kind.values())


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def lean(body: Mapping[str, Any]) -> dict[str, Any]:
    """A body as the store keeps it: without ``metadata.managedFields`` and kubectl's
    last-applied annotation (a second copy of the spec), which no decision reads — at 5,000
    objects of each kind they were a good part of the operator's memory — and ``compact``."""
    out = dict(body)
    if isinstance(out.get("metadata"), Mapping):
        out["metadata"] = lean_meta(out["metadata"])
    return compact(out)


INTERN_MAX = 64


def compact(obj: Any) -> Any:
    """A deep copy of a decoded JSON body whose keys and short strings are interned: every
    watch event decodes its own copy of each key ("lastTransitionTime", "observedGeneration",
    …), a third of a stored TrainingJob's or Job's Python size; interned, all stored bodies
    share one. Short values repeat too (condition types and reasons, the namespace, a
    timestamp written to several fields at once). The copy also lets the decoded event go."""
    t = type(obj)
    if t is str:
        return sys.intern(obj) if len(obj) <= INTERN_MAX else obj
    if t is dict or isinstance(obj, Mapping):
        return {(sys.intern(k) if type(k) is str else k): compact(v) for k, v in obj.items()}
    if t is list or t is tuple:
        return [compact(v) for v in obj]
    return obj


def lean_meta(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    """``meta`` without managedFields and the last-applied annotation (itself when it has neither)."""
    ann = meta.get("annotations")
    has_applied = isinstance(ann, Mapping) and LAST_APPLIED in ann
    if "managedFields" not in meta and not has_applied:
        return meta
    out = {k: v for k, v in meta.items() if k != "managedFields"}
    if has_applied:
        out["annotations"] = {k: v for k, v in ann.items() if k != LAST_APPLIED}
    return out


# ------------------------------------------------------------------ the worker threads
THREAD_PREFIX = "greenml"
EXIT_GRACE = 2.0        # seconds a call in flight gets to finish on the way out


class WorkerPool(ThreadPoolExecutor):
    """The operator's one pool for blocking calls (API requests, replans): on shutdown —
    asyncio.run's last step, after kopf's cleanup — queued calls are dropped and those in
    flight get ``EXIT_GRACE`` seconds, not as long as they take (a 20,000-job replan or a
    request to an overloaded API server held the exit for seconds). What they leave undone is
    redone from status on the next start (the same as a crash at that point)."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=THREAD_PREFIX)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)
        if wait:
            deadline = time.monotonic() + EXIT_GRACE
            for t in list(self._threads):
                t.join(max(0.0, deadline - time.monotonic()))


def busy_workers() -> list[str]:
    """Names of the pool's threads still running a call (after ``WorkerPool.shutdown``)."""
    return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX + "_") and t.is_alive()]


# ------------------------------------------------------------------ wake-ups
Handler = Callable[[Key], Awaitable[datetime | None]]


class Loop:
    """Per-object wake-ups in a heap; reconciles of due objects, at most ``concurrency`` at a time.

    ``schedule(key, when)`` sets the object's next wake-up (``wake`` = now, never later than
    one already due); a key is never reconciled twice at once — woken while in flight, it runs
    again right after. ``max_sleep``: the longest an object waits with nothing due (a safety
    net, jittered so that objects spread out)."""

    def __init__(self, clock: Callable[[], datetime], *, concurrency: int = 8,
                 max_sleep: timedelta = timedelta(minutes=10), poll: float = 30.0,
                 on_error: Callable[[Key, BaseException], None] | None = None) -> None:
        self.clock = clock
        self.handlers: dict[str, Handler] = {}
        self.concurrency = concurrency
        self.max_sleep = max_sleep
        self.poll = poll                         # the longest the loop sleeps (clock jumps noticed)
        self.on_error = on_error
        self._heap: list[tuple[float, int, Key]] = []
        self._due: dict[Key, float] = {}
        self._seq = itertools.count()
        self._inflight: set[Key] = set()
        self._again: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._wakeup = asyncio.Event()
        self._leading: Callable[[], bool] = lambda: True

    # ---------------------------------------------------------- scheduling
    def schedule(self, key: Key, when: datetime | None) -> None:
        if when is None:
            self._due.pop(key, None)
            return
        ts = when.timestamp()
        self._due[key] = ts
        heapq.heappush(self._heap, (ts, next(self._seq), key))
        self._wakeup.set()

    def wake(self, key: Key, when: datetime | None = None) -> None:
        """Reconcile ``key`` at ``when`` (default: now), unless it is already due earlier."""
        when = when or self.clock()
        if key in self._inflight:
            self._again.add(key)
            return
        cur = self._due.get(key)
        if cur is None or when.timestamp() < cur:
            self.schedule(key, when)

    def forget(self, key: Key) -> None:
        self._due.pop(key, None)
        self._failures.pop(key, None)
        self._again.discard(key)

    def is_leading(self) -> bool:
        return self._leading()

    def set_leader_check(self, leading: Callable[[], bool]) -> None:
        self._leading = leading

    def kick(self) -> None:
        self._wakeup.set()

    def _pop_due(self, now_ts: float, limit: int) -> list[Key]:
        out: list[Key] = []
        while self._heap and len(out) < limit:
            ts, _, key = self._heap[0]
            if self._due.get(key) != ts:          # superseded entry
                heapq.heappop(self._heap)
                continue
            if ts > now_ts:
                break
            heapq.heappop(self._heap)
            del self._due[key]
            out.append(key)
        return out

    def _next_ts(self) -> float | None:
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    # ---------------------------------------------------------- running
    async def run(self) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task] = set()
        while True:
            self._wakeup.clear()
            if not self._leading():
                await self._sleep(self.poll)
                continue
            now = self.clock()
            free = self.concurrency - len(tasks)
            for key in self._pop_due(now.timestamp(), max(0, free)):
                await sem.acquire()
                self._inflight.add(key)
                t = asyncio.create_task(self._one(key, sem), name=f"reconcile {key}")
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            nxt = self._next_ts()
            if len(tasks) >= self.concurrency:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            delay = self.poll if nxt is None else min(self.poll, max(0.0, nxt - self.clock().timestamp()))
            if delay > 0:
                await self._sleep(delay)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def _one(self, key: Key, sem: asyncio.Semaphore) -> None:
        handler = self.handlers.get(key[0])
        try:
            if handler is None:
                return
            nxt = await handler(key)
            self._failures.pop(key, None)
            if nxt == NEVER:               # gone, or final: only an event wakes it again
                if key in self._again:
                    self._again.discard(key)
                    self.schedule(key, self.clock())
                return
            cap = self.clock() + self.max_sleep * (0.8 + 0.4 * random.random())
            self._reschedule(key, min(nxt, cap) if nxt is not None else cap)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:   # noqa: BLE001 — one object's failure never stops the loop
            n = self._failures.get(key, 0) + 1
            self._failures[key] = n
            delay = BACKOFF[min(n, len(BACKOFF)) - 1] * (1.0 + JITTER * (2 * random.random() - 1))
            if self.on_error:
                self.on_error(key, exc)
            else:
                log.warning("reconcile of %s failed (attempt %d, retry in %.0f s): %s", key, n, delay, exc)
            self._reschedule(key, self.clock() + timedelta(seconds=delay))
        finally:
            self._inflight.discard(key)
            sem.release()
            self._wakeup.set()

    def _reschedule(self, key: Key, when: datetime) -> None:
        if key in self._again:
            self._again.discard(key)
            when = self.clock()
        cur = self._due.get(key)       # woken by an event while this reconcile ran: keep the earlier
        if cur is None or when.timestamp() < cur:
            self.schedule(key, when)


# ------------------------------------------------------------------ leader election (coordination.k8s.io Lease)
def own_namespace(default: str | None = None) -> str:
    """The operator's namespace: POD_NAMESPACE (the chart sets it), the in-cluster service
    account's, the watched namespace, else ``default``."""
    ns = os.environ.get("POD_NAMESPACE")
    if ns:
        return ns
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as fh:
            return fh.read().strip() or (default or "default")
    except OSError:
        return default or "default"


def own_identity() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


def _micro(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Leader election on a Lease, as client-go does it: the holder renews every
    ``duration / 3``; another replica takes over when it has seen the same record unchanged
    for ``duration`` (its own clock, never the holder's: no clock-skew trouble). The holder
    steps down when it could not renew within ``duration`` − a margin, and releases the lease
    on a graceful exit so that a standby takes over at once."""

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, duration: float = 15.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.duration = float(duration)
        self.on_change = on_change
        self.leading = False
        self._renewed = 0.0                               # monotonic time of our last renew
        self._observed: tuple[Any, ...] | None = None     # the other holder's record as last seen
        self._observed_at = 0.0

    def is_leader(self) -> bool:
        if self.leading and time.monotonic() - self._renewed > self.duration * 0.8:
            self._set(False)          # could not renew in time: another replica may take over
        return self.leading

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info("leader election: %s the lease %s/%s", "holding" if leading else "not holding",
                     self.namespace, self.name)
            if self.on_change:
                self.on_change(leading)

    def try_once(self) -> bool:
        """One acquire-or-renew round (blocking; run in a thread)."""
        now = datetime.now(timezone.utc)
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(round(self.duration)),
                "acquireTime": _micro(now), "renewTime": _micro(now), "leaseTransitions": 0}
        lease = self.kube.get_lease(self.namespace, self.name)
        if lease is None:
            try:
                self.kube.create_lease(self.namespace, self.name, spec)
            except Conflict:
                return False
            self._renewed = time.monotonic()
            return True
        cur = lease.get("spec") or {}
        holder = cur.get("holderIdentity")
        if holder and holder != self.identity:
            record = (holder, cur.get("renewTime"), cur.get("leaseDurationSeconds"))
            if record != self._observed:
                self._observed, self._observed_at = record, time.monotonic()
            held_for = float(cur.get("leaseDurationSeconds") or self.duration)
            if time.monotonic() - self._observed_at < held_for:
                return False
        new = dict(cur)
        if holder != self.identity:
            new.update(acquireTime=_micro(now), leaseTransitions=int(cur.get("leaseTransitions") or 0) + 1)
        new.update(holderIdentity=self.identity, leaseDurationSeconds=int(round(self.duration)), renewTime=_micro(now))
        try:
            self.kube.replace_lease({**lease, "spec": new})
        except Conflict:
            return False
        self._renewed = time.monotonic()
        return True

    async def run(self) -> None:
        while True:
            try:
                ok = await asyncio.to_thread(self.try_once)
            except ApiError as exc:
                log.warning("leader election: %s", exc)
                ok = False
            if ok:
                self._set(True)
            else:
                self.is_leader()          # steps down once the last renew is too old
            await asyncio.sleep(self.duration / 3 if self.leading else self.duration / 4)

    def release(self) -> None:
        """Give the lease up (graceful exit): the standby need not wait for it to expire."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = self.kube.get_lease(self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = dict(lease["spec"])
                spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=_micro(datetime.now(timezone.utc)))
                self.kube.replace_lease({**lease, "spec": spec})
        except ApiError as exc:
            log.warning("leader election: could not release the lease: %s", exc)


# ------------------------------------------------------------------ what every kind's handlers share
def watch_event(ctx: Any, kind: str, body: Mapping[str, Any]) -> None:
    """A watch event of one of our objects: store it; wake it when a decision may change —
    first seen, a new generation (spec), deletion, or the legacy finalizer to remove. Our own
    status writes come back as events too: they only refresh the store."""
    old = ctx.store.put(kind, body)
    meta = body.get("metadata") or {}
    key = (kind, meta.get("namespace") or "", meta.get("name") or "")
    if old is None:
        ctx.loop.wake(key)
        return
    o = old.get("metadata") or {}
    if (o.get("generation") != meta.get("generation") or o.get("uid") != meta.get("uid")
            or bool(o.get("deletionTimestamp")) != bool(meta.get("deletionTimestamp"))
            or LEGACY_FINALIZER in (meta.get("finalizers") or [])):
        ctx.loop.wake(key)


async def reconcile_object(ctx: Any, kind: str, api_version: str, plural: str, key: Key,
                           fn: Callable[[Any, Mapping[str, Any], Mapping[str, Any], Patch], Awaitable[datetime | None]],
                           volatile: Mapping[str, str] = {}) -> datetime | None:
    """The shell around one kind's reconcile: the stored body, the legacy finalizer dropped,
    ``fn`` run with a fresh Patch, the status fields that changed written (the answer goes
    back into the store), Events posted, the decision recorded in the metrics."""
    from greenml.kube import NotFound
    from greenml.metrics import record_decision

    _, ns, name = key
    body = ctx.store.get(kind, ns, name)
    if body is None:
        return NEVER
    meta = body.get("metadata") or {}
    if LEGACY_FINALIZER in (meta.get("finalizers") or []):
        await asyncio.to_thread(ctx.kube.remove_finalizer, api_version, plural, body, LEGACY_FINALIZER)
    if meta.get("deletionTimestamp"):
        return NEVER
    metrics = ctx.extras.get("metrics")
    patch = Patch()
    token = _current.set(patch)
    try:
        if metrics is not None:
            with metrics.reconcile_timer(kind):
                nxt = await fn(ctx, body, dict(body.get("status") or {}), patch)
        else:
            nxt = await fn(ctx, body, dict(body.get("status") or {}), patch)
    finally:
        _current.reset(token)
    changes = status_changes(body.get("status") or {}, patch.status, volatile)
    if changes:
        try:
            stored = await asyncio.to_thread(ctx.kube.patch_status, api_version, plural, ns, name, changes)
        except NotFound:
            return NEVER
        if (stored or {}).get("metadata"):
            ctx.store.put(kind, stored)
        ctx.extras["status_writes"] = ctx.extras.get("status_writes", 0) + 1
    for type_, reason, message in patch.events:
        # each Event in the log too (what `kubectl describe` shows, for log-based operations)
        log.log(logging.WARNING if type_ == "Warning" else logging.INFO, "%s %s/%s: %s: %s", kind, ns, name, reason,
                message, extra={"k8s_ref": {"kind": kind, "namespace": ns, "name": name}, "reason": reason})
        try:
            await asyncio.to_thread(ctx.kube.post_event, body, type_, reason, message)
        except ApiError as exc:       # an Event is not worth a retry of the reconcile
            log.warning("could not post Event %s for %s/%s: %s", reason, ns, name, exc)
    if metrics is not None:
        record_decision(metrics, kind, ns, name, patch.status)
    return nxt
