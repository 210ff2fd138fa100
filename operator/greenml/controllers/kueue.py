"""Kueue's carbon-window AdmissionCheck (``greenml.io/carbon-window``): thin. Decisions come
from greenml.services.kueue; this feeds the planning loop with Kueue's objects and reconciles
one Workload at a time.

Off unless ``kueue_enabled`` (the chart's ``kueue.enabled``): ``install`` then registers kopf
watches on Workloads, AdmissionChecks, ClusterQueues, LocalQueues and ResourceFlavors (before
kopf starts watching; Kueue not installed: kopf warns once that they are unresolved and
watches them when the CRDs appear). Watch events go into the store (Workloads lean:
``kq.lean_workload``) and wake, in the loop:

- a Workload (``("Workload", ns, name)``) when its ``kq.decision_inputs`` changed — not for
  Kueue's bookkeeping churn nor for the echo of our own writes (their answers are stored);
- every Workload when a queue, flavor or check changed its spec (rare); a ClusterQueue whose
  quota alone changed replans its board instead (``("KueueBoard", "", queue)``, which wakes
  the Workloads whose plan moved, and replans periodically like the TrainingJobs' board);
- the slow pass (``KEY``) when an AdmissionCheck changed: it marks ours ``Active`` and reads
  their defaults ConfigMaps (not watched: a watch of every ConfigMap would cost more), again
  every ``kueue_interval``, waking every Workload when the defaults changed.

A Workload's reconcile reads its owner (annotations), plans it on its ClusterQueue's board
(capacity: the queue's nominal GPU quota) exactly as a TrainingJob, writes the check when its
state changes and the record; it sleeps until its decision can change
(``CheckDecision.next_check``; the loop's ``tick_interval`` at the latest).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any, Mapping

import kopf

from greenml.controllers.context import Context
from greenml.controllers.loop import NEVER, own_namespace
from greenml.controllers.operator import accounting_of, metrics_of, replan_board
from greenml.kube import ApiError, Conflict, Transient
from greenml.metrics import kueue_board, record_board, record_workload
from greenml.services import kueue as kq
from greenml.services.board import PlanBoard
from greenml.services.trainingjob import InvalidSpec

log = logging.getLogger("greenml.kueue")
KEY = ("Kueue", "", "")   # the slow pass: our AdmissionChecks' Active and their defaults
KIND = "Workload"         # the loop's and the store's kind, the metrics' kind label
BOARD = "KueueBoard"      # ("KueueBoard", "", ClusterQueue): the periodic replan of its board
GROUP, VERSION = kq.KUEUE_API.split("/")
#: the objects a Workload's decision reads besides itself: plural → the store's kind
CATALOGUE = {"admissionchecks": "AdmissionCheck", "clusterqueues": "ClusterQueue",
             "localqueues": "LocalQueue", "resourceflavors": "ResourceFlavor"}
_REGISTERED: list[Any] = []      # kopf registries holding our handlers (registered once each)


# ------------------------------------------------------------------ watches → store → loop
async def on_workload(body: kopf.Body, type: str, memo: kopf.Memo, **_: Any) -> None:
    workload_event(memo.ctx, type, body)


async def on_catalogue(body: kopf.Body, type: str, resource: kopf.Resource, memo: kopf.Memo, **_: Any) -> None:
    catalogue_event(memo.ctx, CATALOGUE[resource.plural], type, body)


def register_watches(registry: Any = None) -> bool:
    """The kopf event handlers for Kueue's objects, in ``registry`` (kopf's default): called
    from the startup handler, before kopf discovers what to watch. False: already there."""
    registry = registry if registry is not None else kopf.get_default_registry()
    if any(r is registry for r in _REGISTERED):
        return False
    kopf.on.event(GROUP, VERSION, "workloads", id="kueue-workloads", registry=registry)(on_workload)
    for plural in CATALOGUE:
        kopf.on.event(GROUP, VERSION, plural, id=f"kueue-{plural}", registry=registry)(on_catalogue)
    _REGISTERED.append(registry)
    return True


def install(ctx: Context, registry: Any = None) -> None:
    """With ``kueue_enabled``: the watches, and the loop's handlers for Workloads, the boards
    and the slow pass (due now)."""
    register_watches(registry)
    ctx.loop.handlers[KIND] = lambda key: asyncio.to_thread(reconcile, ctx, key[1], key[2])
    ctx.loop.handlers[BOARD] = lambda key: replan_board(ctx, board_of(ctx, key[2]), KIND, kueue_board(key[2]))
    ctx.loop.handlers[KEY[0]] = lambda key: asyncio.to_thread(check_pass, ctx)
    ctx.loop.schedule(KEY, ctx.clock())


def workload_event(ctx: Context, type: str, body: Mapping[str, Any]) -> None:
    """Store the Workload (lean); wake it when its decision inputs changed, or it went."""
    meta = body.get("metadata") or {}
    ns, name = meta.get("namespace") or "", meta.get("name") or ""
    if type == "DELETED":
        old = ctx.store.get(KIND, ns, name)
        if old is not None and (old.get("metadata") or {}).get("uid") == meta.get("uid"):
            ctx.store.pop(KIND, ns, name)
            ctx.loop.wake((KIND, ns, name))     # its reconcile takes it off its board and the metrics
        return
    lean = kq.lean_workload(body)
    old = ctx.store.put(KIND, lean)
    if old is None or kq.decision_inputs(old) != kq.decision_inputs(lean):
        ctx.loop.wake((KIND, ns, name))


def catalogue_event(ctx: Context, kind: str, type: str, body: Mapping[str, Any]) -> None:
    """A queue, flavor or AdmissionCheck: stored; a change of its spec wakes every Workload (a
    ClusterQueue whose quota alone changed: its board replans, waking the plans that moved).
    Status churn (a ClusterQueue's usage, our own Active) wakes nothing."""
    meta = body.get("metadata") or {}
    ns, name = meta.get("namespace") or "", meta.get("name") or ""
    if type == "DELETED":
        old, new = ctx.store.pop(kind, ns, name), None
    else:
        old = ctx.store.put(kind, body)
        new = ctx.store.get(kind, ns, name)
    same_object = old is not None and new is not None and \
        (old.get("metadata") or {}).get("uid") == (new.get("metadata") or {}).get("uid")
    if same_object and old.get("spec") == new.get("spec"):
        return
    if kind == "AdmissionCheck":
        ctx.loop.wake(KEY)
    if kind == "ClusterQueue" and same_object and kq.queue_checks(old) == kq.queue_checks(new):
        board = ctx.extras.get("kueue_boards", {}).get(name)
        if board is not None and kq.queue_capacity(old) != kq.queue_capacity(new):
            board.invalidate()
            ctx.loop.wake((BOARD, "", name))
        return
    for wns, wname in ctx.store.keys(KIND):
        ctx.loop.wake((KIND, wns, wname))


def board_of(ctx: Context, cq_name: str) -> PlanBoard:
    """The ClusterQueue's board (made on first use, its periodic replan scheduled); capacity:
    the stored queue's nominal GPU quota, as it is now."""
    boards: dict[str, PlanBoard] = ctx.extras.setdefault("kueue_boards", {})
    board = boards.get(cq_name)
    if board is None:
        board = boards[cq_name] = PlanBoard(
            ctx.defaults, ctx.board.source, replan_interval=ctx.board.replan_interval, horizon=ctx.board.horizon,
            capacity=lambda: kq.queue_capacity(ctx.store.get("ClusterQueue", "", cq_name) or {}))
        ctx.loop.schedule((BOARD, "", cq_name), ctx.clock() + ctx.board.replan_interval)
    return board


# ------------------------------------------------------------------ the slow pass: our checks' Active and defaults
def check_defaults(ctx: Context, name: str, *, fresh: bool = False) -> tuple[kq.CheckDefaults, str | None]:
    """The defaults of our check ``name`` (its ConfigMap; read once, then by the slow pass),
    and what is wrong with them (None: nothing)."""
    cache: dict[str, tuple[kq.CheckDefaults, str | None]] = ctx.extras.setdefault("kueue_defaults", {})
    if not fresh and name in cache:
        return cache[name]
    ns = own_namespace(ctx.settings.namespace)
    try:
        cm = ctx.kube.get("v1", "configmaps", ns, name)
        cache[name] = kq.CheckDefaults.from_mapping((cm or {}).get("data")), None
    except InvalidSpec as exc:
        cache[name] = kq.CheckDefaults(), f"ConfigMap {ns}/{name}: {exc.field}: {exc.message}"
    return cache[name]


def check_pass(ctx: Context) -> datetime:
    """Our AdmissionChecks (from the store) marked Active — or not, with what is wrong with
    their defaults — and the defaults read again: every Workload woken when they changed.
    Again after ``kueue_interval`` (a ConfigMap is not watched), or when a check changes."""
    now = ctx.clock()
    checks = list(ctx.store.kind("AdmissionCheck").values())
    changed = False
    for name in sorted(kq.our_checks(checks)):
        before = ctx.extras.get("kueue_defaults", {}).get(name)
        defaults, problem = check_defaults(ctx, name, fresh=True)
        changed |= before is not None and before != (defaults, problem)
        status = kq.admission_check_status(now, problem, ctx.store.get("AdmissionCheck", "", name))
        if status is not None:
            keep(ctx, "AdmissionCheck", ctx.kube.set_admission_check_status(name, status))
    if changed:
        for ns, name in ctx.store.keys(KIND):
            ctx.loop.wake((KIND, ns, name))
    return now + timedelta(seconds=ctx.settings.kueue_interval)


def keep(ctx: Context, kind: str, answer: Any) -> None:
    """What a write answered (the object as written) into the store: its watch event then
    changes nothing and wakes nothing."""
    if isinstance(answer, Mapping) and answer.get("metadata"):
        ctx.store.put(kind, kq.lean_workload(answer) if kind == KIND else answer)


# ------------------------------------------------------------------ one Workload
def reconcile(ctx: Context, ns: str, name: str) -> datetime | None:
    """One Workload's turn (blocking: run in a thread); returns its next wake-up."""
    now = ctx.clock()
    wl = ctx.store.get(KIND, ns, name)
    if wl is None:
        forget(ctx, ns, name)
        return NEVER
    names = kq.our_checks(ctx.store.kind("AdmissionCheck").values())
    ours = [c.get("name") for c in (wl.get("status") or {}).get("admissionChecks") or [] if c.get("name") in names]
    cq_name = kq.cluster_queue_of(wl, ctx.store.kind("LocalQueue"))
    cq = ctx.store.get("ClusterQueue", "", cq_name) if cq_name else None
    ours = ours or sorted(kq.queue_checks(cq or {}) & names)      # Kueue adds the entry a moment later
    if cq is None or not ours:
        forget(ctx, ns, name)       # not ours (yet): a change of it or of the queues wakes it
        return NEVER
    board = board_of(ctx, cq_name)
    for other_cq, other in ctx.extras["kueue_boards"].items():    # moved to another queue: off the old board
        if other_cq != cq_name:
            other.forget((ns, name))
    owner, problem = None, None
    ref = kq.owner_of(wl)
    if ref is not None:
        api, plural, owner_name = ref
        try:
            owner = ctx.kube.get(api, plural, ns, owner_name)
        except Transient:
            raise                     # the loop retries it with backoff
        except ApiError as exc:
            problem = kq.owner_read_problem(ref, exc.status, str(exc))
    assigned = kq.assigned_flavors(wl)
    zone = kq.flavor_zone(ctx.store.get("ResourceFlavor", "", assigned[0]) if assigned else None,
                          ctx.settings.zone_label, ctx.settings.zone_map)
    ev = kq.evaluate(wl, owner, ours[0], board, now, ctx.defaults, check_defaults(ctx, ours[0])[0],
                     zone=zone, owner_problem=problem)
    if ev.patch is not None:
        try:
            keep(ctx, KIND, ctx.kube.apply_workload_check(ev.patch))
        except Conflict:
            return NEVER              # the Workload was recreated: the new one's event wakes it
    account(ctx, wl, ev, board, now)
    ctx.extras.setdefault("kueue_workloads", set()).add((ns, name))
    record_board(metrics_of(ctx), board, kueue_board(cq_name))    # its replans, told apart by the board label
    for other in board.take_changed():          # a replan moved other Workloads' plans: tell them
        if other != (ns, name):
            ctx.loop.wake((KIND, *other))
    if ev.obs is not None and ev.obs.finished:
        return NEVER
    nxt = ev.decision.next_check
    return max(nxt, now + timedelta(seconds=1)) if nxt is not None else None


def forget(ctx: Context, ns: str, name: str) -> None:
    """A Workload gone (or not ours): off every board, out of the metrics."""
    for board in ctx.extras.get("kueue_boards", {}).values():
        board.forget((ns, name))
    known: set[tuple[str, str]] = ctx.extras.setdefault("kueue_workloads", set())
    if (ns, name) in known:
        known.discard((ns, name))
        metrics_of(ctx).forget(ns, name, KIND)


#: reasons that are news in themselves; the others (Planned, RunNow, MinRunDuration, Running, …
#: — the decision's wording while nothing changes for Kueue) are said once per state
_NEWS = frozenset({"DeadlineForced", "InvalidAnnotations", "ForecastUnavailable", "WindowClosed"})


def event_key(state: str | None, reason: str | None) -> tuple[str | None, str]:
    """What an Event is posted for: a new state of the check, or a reason in ``_NEWS``."""
    return state, reason if reason in _NEWS else ""


def account(ctx: Context, wl: dict[str, Any], ev: kq.Evaluation, board: PlanBoard, now: datetime) -> None:
    """After a Workload's turn: its record (``kq.ANN_RECORD``: state, plan, usage) written when it
    changed, an Event and a log line when its state changed or a reason that is news came
    (``event_key``; the record says what they were, so a restarted operator does not repeat
    them), and its metrics (a decision counted with each Event)."""
    meta = wl.get("metadata") or {}
    ns, name = meta.get("namespace"), meta.get("name")
    d = ev.decision
    m = metrics_of(ctx)
    if ev.obs is not None:
        m.phase(ns, name, KIND, kq.workload_phase(ev.obs))
    if ev.patch is None and ev.obs is not None and ev.obs.check_state != d.state:
        return         # not written (Kueue has not added the check yet, or our Retry stands): not said
    previous = kq.read_record(wl)
    signal = board.signals.get(ev.req.zone) if ev.req is not None else None
    record = kq.build_record(ev, previous, now, ctx.defaults, signal.now if signal else None)
    # the Event before the record: an operator stopped in between says it again, never not at all
    if event_key(previous.get("state"), previous.get("reason")) != event_key(d.state, d.reason) and d.reason != "Finished":
        m.decision(KIND, d.reason)
        try:
            ctx.kube.post_event(wl, "Warning" if ev.invalid or d.reason == "DeadlineForced" else "Normal",
                                d.reason, d.message)
        except ApiError as exc:
            log.warning("could not post Event %s for Workload %s/%s: %s", d.reason, ns, name, exc)
        log.info("Workload %s/%s: check %s (%s): %s", ns, name, d.state, d.reason, d.message)
    text = kq.record_patch(previous, record, now)
    if text is not None:
        try:
            keep(ctx, KIND, ctx.kube.annotate_workload(ns, name, {kq.ANN_RECORD: text}))
        except ApiError as exc:
            log.warning("could not write the record of Workload %s/%s: %s", ns, name, exc)
    record_workload(m, ns, name, record, accounting_of(ctx))
