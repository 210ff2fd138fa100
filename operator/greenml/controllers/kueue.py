"""Kueue's carbon-window AdmissionCheck (``greenml.io/carbon-window``): thin. Decisions come
from greenml.services.kueue; this is the planning loop's periodic step for it.

Off unless ``kueue_enabled`` (the chart's ``kueue.enabled``). Each step lists the
AdmissionChecks whose controllerName is ours (marks them Active), the ClusterQueues, their
flavors and LocalQueues, and every Workload that carries one of our checks; each Workload is
planned on the board of its ClusterQueue (capacity: the queue's nominal GPU quota) exactly as
a TrainingJob is, and its check set Pending / Ready / Retry when that changes. The step
runs again at the earliest moment a decision can change, at the latest after
``kueue_interval`` (new Workloads are seen then).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from greenml.controllers.context import Context
from greenml.controllers.loop import own_namespace
from greenml.controllers.operator import accounting_of, metrics_of
from greenml.kube import ApiError, Conflict, Transient
from greenml.metrics import kueue_board, record_board, record_workload
from greenml.services import kueue as kq
from greenml.services.board import PlanBoard
from greenml.services.trainingjob import InvalidSpec

log = logging.getLogger("greenml.kueue")
KEY = ("Kueue", "", "")
KIND = "Workload"         # the metrics' kind label


def _by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {(i.get("metadata") or {}).get("name"): i for i in items}


def step(ctx: Context) -> datetime:
    """One pass over every Workload with our check (blocking: run in a thread)."""
    now = ctx.clock()
    interval = timedelta(seconds=ctx.settings.kueue_interval)
    kube, s = ctx.kube, ctx.settings
    checks = kube.list_objects(kq.KUEUE_API, "admissionchecks")
    names = kq.our_checks(checks)
    boards: dict[str, PlanBoard] = ctx.extras.setdefault("kueue_boards", {})
    quotas: dict[str, int | None] = ctx.extras.setdefault("kueue_quotas", {})
    if not names:
        return now + interval
    defaults: dict[str, kq.CheckDefaults] = {}
    ns = own_namespace(s.namespace)
    for ac in checks:
        name = (ac.get("metadata") or {}).get("name")
        if name not in names:
            continue
        problem = None
        try:
            cm = kube.get("v1", "configmaps", ns, name)
            defaults[name] = kq.CheckDefaults.from_mapping((cm or {}).get("data"))
        except InvalidSpec as exc:
            defaults[name], problem = kq.CheckDefaults(), f"ConfigMap {ns}/{name}: {exc.field}: {exc.message}"
        status = kq.admission_check_status(now, problem, ac)
        if status is not None:
            kube.set_admission_check_status(name, status)
    cqs = _by_name(kube.list_objects(kq.KUEUE_API, "clusterqueues"))
    flavors = _by_name(kube.list_objects(kq.KUEUE_API, "resourceflavors"))
    lqs = {((q.get("metadata") or {}).get("namespace"), (q.get("metadata") or {}).get("name")): q
           for q in kube.list_objects(kq.KUEUE_API, "localqueues")}
    seen: dict[str, set[tuple[str, str]]] = {}
    nxt = now + interval
    for wl in kube.list_workloads():
        ours = [c.get("name") for c in (wl.get("status") or {}).get("admissionChecks") or [] if c.get("name") in names]
        cq_name = kq.cluster_queue_of(wl, lqs)
        cq = cqs.get(cq_name)
        if not cq:
            continue
        ours = ours or sorted(kq.queue_checks(cq) & names)      # Kueue adds the entry a moment later
        if not ours:
            continue
        quotas[cq_name] = kq.queue_capacity(cq)                 # read each pass: the quota may change
        board = boards.get(cq_name)
        if board is None:
            board = boards[cq_name] = PlanBoard(ctx.defaults, ctx.board.source, replan_interval=ctx.board.replan_interval,
                                                horizon=ctx.board.horizon,
                                                capacity=lambda q=cq_name: quotas.get(q))
        meta = wl.get("metadata") or {}
        ns, name = meta.get("namespace"), meta.get("name")
        owner, problem = None, None
        ref = kq.owner_of(wl)
        if ref is not None:
            api, plural, owner_name = ref
            try:
                owner = kube.get(api, plural, ns, owner_name)
            except Transient:
                continue          # the next pass reads it again
            except ApiError as exc:
                problem = kq.owner_read_problem(ref, exc.status, str(exc))
        assigned = kq.assigned_flavors(wl)
        zone = kq.flavor_zone(flavors.get(assigned[0]) if assigned else None, s.zone_label, s.zone_map)
        ev = kq.evaluate(wl, owner, ours[0], board, now, ctx.defaults, defaults.get(ours[0], kq.CheckDefaults()),
                         zone=zone, owner_problem=problem)
        seen.setdefault(cq_name, set()).add((ns, name))
        if ev.patch is not None:
            try:
                kube.apply_workload_check(ev.patch)
            except Conflict:
                continue          # the Workload was recreated: the next pass sees the new one
        account(ctx, wl, ev, board, now)
        if ev.decision.next_check is not None and ev.decision.next_check > now:
            nxt = min(nxt, ev.decision.next_check)
    for cq_name, board in boards.items():        # Workloads gone: off their board
        keep = seen.get(cq_name, set())
        for key in [k for k in board.keys() if k not in keep]:
            board.forget(key)
        record_board(metrics_of(ctx), board, kueue_board(cq_name))   # its replans, told apart by the board label
    known: set[tuple[str, str]] = ctx.extras.setdefault("kueue_workloads", set())
    everywhere = set().union(*seen.values()) if seen else set()
    for ns, name in known - everywhere:          # and out of the metrics
        metrics_of(ctx).forget(ns, name, KIND)
    known.intersection_update(everywhere)
    known.update(everywhere)
    return max(nxt, now + timedelta(seconds=1))


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
            ctx.kube.annotate_workload(ns, name, {kq.ANN_RECORD: text})
        except ApiError as exc:
            log.warning("could not write the record of Workload %s/%s: %s", ns, name, exc)
    record_workload(m, ns, name, record, accounting_of(ctx))
