"""Operator-wide handlers: start-up (settings → context in memo, kopf settings, the planning
loop and its leader election), node capacity, the periodic replan of the plan board."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from datetime import datetime, timedelta
from typing import Any

import kopf

from greenml.controllers.context import Context
from greenml.kube import Kube
from greenml.kube.client import connection_info, load_configuration, node_gpus
from greenml.metrics import Metrics, start_metrics_server
from greenml.planning.accounting import AccountingPolicy
from greenml.services.board import PlanBoard
from greenml.services.trainingjob import Defaults
from greenml.settings import Settings, load_settings

log = logging.getLogger("greenml.operator")

PREFIX = "greenml.io"


def build_context(settings: Settings, kube: Kube | None = None) -> Context:
    from greenml.signals import build_source

    defaults = Defaults.from_settings(settings)
    kube = kube or Kube()
    ctx_ref: dict[str, Context] = {}
    board = PlanBoard(
        defaults, build_source(settings, kube=kube),
        replan_interval=settings.duration("replan_interval"),
        horizon=settings.duration("horizon"),
        capacity=lambda: ctx_ref["ctx"].capacity(),
    )
    ctx = Context(settings=settings, kube=kube, defaults=defaults, board=board)
    ctx.extras["metrics"] = Metrics()
    ctx.extras["accounting"] = settings.accounting()
    ctx_ref["ctx"] = ctx
    return ctx


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff-base at all: with only event handlers (no create/update/resume handlers, no
    daemons), kopf uses the essence for nothing, yet built it for every watch event — a deep
    copy of the body, 9 % of the operator's Python time while 5,000 TrainingJobs start."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> None:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def configure_kopf(ks: kopf.OperatorSettings, settings: Settings) -> None:
    # kopf only watches (event handlers): no finalizer, no diff-base or progress annotations.
    # Its peering stays off: every replica watches (a warm store), and the Lease decides
    # which one's planning loop acts (controllers/loop.py).
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    ks.persistence.diffbase_storage = NoDiffBase()
    ks.persistence.finalizer = f"{PREFIX}/kopf-finalizer"    # never set: no handler needs one
    ks.posting.level = logging.WARNING        # our own Events are explicit; kopf posts only problems
    ks.watching.server_timeout = 300
    ks.watching.client_timeout = 330
    # backoff on API errors: no hot loops (kopf 1.45 renamed `batching` to `queueing`)
    queueing = ks.queueing if hasattr(ks, "queueing") else ks.batching
    queueing.error_delays = [1, 2, 5, 10, 30, 60]
    ks.execution.max_workers = 8
    ks.peering.standalone = True


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf's watches authenticate from the same configuration as the operator's own client
    (in-cluster, or a kubeconfig user: client certificate, token, tokenFile, exec plugin).
    kopf's implicit login sends the client library's token as read: a tokenFile ending in
    a newline made every request fail ("Forbidden control character detected in headers").
    Called again on a 401, so rotated tokens and exec credentials are re-read."""
    return kopf.ConnectionInfo(**connection_info(load_configuration()), trust_env=settings.networking.trust_env)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours: Settings = memo.get("greenml_settings") or load_settings()
    configure_kopf(settings, ours)
    if "ctx" not in memo:
        memo.ctx = build_context(ours)
    ctx: Context = memo.ctx
    serve_metrics(ctx)
    start_loop(ctx)
    log.info("greenml operator started", extra={"provider": ours.provider, "zone": ours.default_zone})


BOARD = ("Board", "", "")      # the loop's key for the periodic replan of the plan board


def start_loop(ctx: Context) -> None:
    """The planning loop (and, with `peering` set, the Lease that says whether it may act)."""
    from greenml.controllers import inferencebudget, trainingjob
    from greenml.controllers.loop import LeaseElector, WorkerPool, own_identity, own_namespace

    loop = ctx.loop
    # the blocking calls (asyncio.to_thread) share one bounded pool: Python's default grows
    # with the node's CPUs (up to 32 threads, each with its own malloc arena), not with what
    # the loop can use — at most `concurrency` reconciles at a time; its shutdown is bounded
    asyncio.get_running_loop().set_default_executor(WorkerPool(loop.concurrency + 4))
    loop.max_sleep = timedelta(seconds=ctx.settings.tick_interval)
    loop.poll = min(30.0, max(0.05, ctx.settings.tick_interval))
    loop.handlers = {
        "TrainingJob": lambda key: trainingjob.reconcile_key(ctx, key),
        "InferenceBudget": lambda key: inferencebudget.reconcile_key(ctx, key),
        "Board": lambda key: replan_board(ctx),
    }
    if ctx.settings.kueue_enabled:
        from greenml.controllers import kueue

        kueue.install(ctx)          # its watches (kopf) and its keys in the loop
    loop.on_error = lambda key, exc: reconcile_failed(ctx, key, exc)
    tasks = ctx.extras.setdefault("tasks", [])
    if ctx.settings.peering:
        elector = LeaseElector(ctx.kube, own_namespace(ctx.settings.namespace), ctx.settings.peering, own_identity(),
                               duration=float(ctx.settings.peering_lifetime),
                               on_change=lambda leading: leadership_changed(ctx, leading))
        ctx.extras["elector"] = elector
        loop.set_leader_check(elector.is_leader)
        tasks.append(asyncio.create_task(elector.run(), name="greenml lease"))
    loop.schedule(BOARD, ctx.clock() + ctx.board.replan_interval)
    tasks.append(asyncio.create_task(loop.run(), name="greenml planning loop"))


def leadership_changed(ctx: Context, leading: bool) -> None:
    """Taking over: every stored object is reconciled now, its wake-ups recomputed from status."""
    if leading:
        for kind in ("TrainingJob", "InferenceBudget", "Workload"):
            for ns, name in ctx.store.keys(kind):
                ctx.loop.wake((kind, ns, name))
        ctx.loop.wake(BOARD)
        if ctx.settings.kueue_enabled:
            ctx.loop.wake(("Kueue", "", ""))
    ctx.loop.kick()


def reconcile_failed(ctx: Context, key: tuple[str, str, str], exc: BaseException) -> None:
    metrics_of(ctx).reconcile_error(key[0], type(exc).__name__)
    log.warning("reconcile of %s %s/%s failed (retried with backoff): %s", key[0], key[1], key[2], exc)


async def replan_board(ctx: Context, board: PlanBoard | None = None, kind: str = "TrainingJob",
                       label: str | None = None) -> datetime:
    """The periodic replan: every waiting job planned in one batch on fresh forecasts; the
    jobs whose plan changed are woken (the others keep sleeping until their next moment).
    ``board``: the TrainingJobs' (default) or a Kueue ClusterQueue's, whose jobs are ``kind``
    and whose metrics carry the board ``label``."""
    from greenml.metrics import TRAININGJOB_BOARD, record_board

    board = ctx.board if board is None else board
    now = ctx.clock()
    if len(board):
        await asyncio.to_thread(board.replan, now)
        record_board(metrics_of(ctx), board, label or TRAININGJOB_BOARD)
        for ns, name in board.take_changed():
            ctx.loop.wake((kind, ns, name))
    nxt = board.next_replan() or now + board.replan_interval
    if board.failures():
        nxt = min(nxt, now + timedelta(minutes=1))      # a zone without a forecast: try again soon
    return max(nxt, now + timedelta(seconds=1))


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """kopf's last step (after its watchers stopped): hand over, if the signal did not already."""
    ctx: Context | None = memo.get("ctx")
    if ctx is not None:
        await hand_over(ctx)


async def hand_over(ctx: Context) -> None:
    """Stop the loop at once (a reconcile in flight finishes its API call in its thread) and
    hand the lease over, so that a standby takes over without waiting for it to expire.
    Idempotent: the signal runs it first (`stop_on_signals`), kopf's cleanup again."""
    for t in ctx.extras.pop("tasks", []):
        t.cancel()
    elector = ctx.extras.pop("elector", None)
    if elector is not None:
        await asyncio.to_thread(elector.release)


EXIT_DEADLINE = 4.0     # seconds from SIGTERM to exit, whatever kopf's shutdown still does


def stop_on_signals(ctx: Context, stop: asyncio.Event, deadline: float = EXIT_DEADLINE) -> None:
    """SIGTERM / SIGINT (replacing kopf's handlers, installed once kopf is ready): hand over at
    once — not after kopf has stopped its watchers, which with 20,000 objects' workers took
    over 10 s — raise kopf's stop flag, and exit at ``deadline`` even if kopf's shutdown has
    not finished (what it leaves undone is redone from status on the next start, as after a
    crash). A second signal exits at once."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            exit_now(f"a second {sig.name}")
            return
        log.info("%s: stopping (exit within %.0f s)", sig.name, deadline)
        stop.set()
        # (held: the event loop keeps only a weak reference to a task)
        ctx.extras["handing_over"] = loop.create_task(hand_over(ctx), name="greenml hand-over")
        loop.call_later(deadline, exit_now, f"kopf's shutdown still running {deadline:.0f} s after {sig.name}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):     # not the main thread
            log.warning("cannot handle %s: kopf's own handling stays", sig.name)


def exit_now(why: str) -> None:
    """Leave the process now (logs flushed), exit status 0: termination was asked for."""
    log.warning("exiting now: %s", why)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _once(ctx: Context, key: str, make):
    """ctx.extras[key], made on first use (not ``setdefault(key, make())``, which would build
    — and throw away — a new one on every call: a whole Prometheus registry per reconcile)."""
    value = ctx.extras.get(key)
    if value is None:
        value = ctx.extras[key] = make()
    return value


def metrics_of(ctx: Context) -> Metrics:
    """The operator's metrics (one registry per context)."""
    return _once(ctx, "metrics", Metrics)


def accounting_of(ctx: Context) -> AccountingPolicy:
    """How usage is accounted (PUE, embodied hardware, WUE, intensity kind)."""
    return _once(ctx, "accounting", AccountingPolicy)


def serve_metrics(ctx: Context) -> None:
    """Start /metrics on settings.metrics_port once per process (0: off). A busy port is logged, not fatal."""
    if ctx.extras.get("metrics_server") is not None or ctx.settings.metrics_port == 0:
        return
    try:
        ctx.extras["metrics_server"] = start_metrics_server(metrics_of(ctx), ctx.settings.metrics_port)
        log.info("metrics on :%d/metrics", ctx.settings.metrics_port)
    except OSError as exc:
        log.error("cannot serve metrics on port %d: %s", ctx.settings.metrics_port, exc)


@kopf.on.event("", "v1", "nodes")
async def node_capacity(body: kopf.Body, type: str, memo: kopf.Memo, **_: Any) -> None:
    """Track each node's allocatable GPUs (the capacity for shifted jobs) and its region
    label (mapped to a grid zone by the `zone_map` setting)."""
    ctx: Context = memo.ctx
    name = body.get("metadata", {}).get("name", "")
    before = (ctx.node_gpus.get(name), ctx.node_regions.get(name))
    if type == "DELETED":
        ctx.node_gpus.pop(name, None)
        ctx.node_regions.pop(name, None)
    else:
        ctx.node_gpus[name] = node_gpus(body)
        region = (body.get("metadata", {}).get("labels") or {}).get(ctx.settings.zone_label)
        if region:
            ctx.node_regions[name] = region
    if (ctx.node_gpus.get(name), ctx.node_regions.get(name)) != before and ctx.settings.gpu_capacity is None:
        # the capacity (or the cluster's zone) changed — not a heartbeat: replan now
        ctx.board.invalidate()
        ctx.loop.wake(BOARD)
