"""Operator-wide handlers: start-up (settings → context in memo, kopf settings), node capacity."""
from __future__ import annotations

import logging
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
        defaults, build_source(settings),
        replan_interval=settings.duration("replan_interval"),
        horizon=settings.duration("horizon"),
        capacity=lambda: ctx_ref["ctx"].capacity(),
    )
    ctx = Context(settings=settings, kube=kube, defaults=defaults, board=board)
    ctx.extras["metrics"] = Metrics()
    ctx.extras["accounting"] = settings.accounting()
    ctx_ref["ctx"] = ctx
    return ctx


def configure_kopf(ks: kopf.OperatorSettings, settings: Settings) -> None:
    # kopf's own bookkeeping lives in annotations, so status holds only our declared schema
    ks.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    ks.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX)
    ks.persistence.finalizer = f"{PREFIX}/finalizer"
    ks.posting.level = logging.WARNING        # our own Events are explicit; kopf posts only problems
    ks.watching.server_timeout = 300
    ks.watching.client_timeout = 330
    ks.batching.error_delays = [1, 2, 5, 10, 30, 60]   # backoff on API errors: no hot loops
    ks.execution.max_workers = 8
    if settings.peering:
        ks.peering.name = settings.peering
        ks.peering.standalone = False
        ks.peering.mandatory = True
        # kopf pauses *every* peer when priorities tie, so each replica needs its own
        ks.peering.priority = peering_priority(settings)
        ks.peering.lifetime = settings.peering_lifetime
    else:
        ks.peering.standalone = True


def peering_priority(settings: Settings) -> int:
    """Configured, else a stable hash of the pod name (distinct per replica, same across restarts)."""
    if settings.peering_priority is not None:
        return settings.peering_priority
    import os
    import zlib

    pod = os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or "greenml"
    return 1 + zlib.crc32(pod.encode()) % 32767


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf's watches authenticate from the same configuration as the operator's own client
    (in-cluster, or a kubeconfig user: client certificate, token, tokenFile, exec plugin).
    kopf's implicit login sends the client library's token as read: a tokenFile ending in
    a newline made every request fail ("Forbidden control character detected in headers").
    Called again on a 401, so rotated tokens and exec credentials are re-read."""
    return kopf.ConnectionInfo(**connection_info(load_configuration()), trust_env=settings.networking.trust_env)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours: Settings = memo.get("greenml_settings") or load_settings()
    configure_kopf(settings, ours)
    if "ctx" not in memo:
        memo.ctx = build_context(ours)
    serve_metrics(memo.ctx)
    log.info("greenml operator started", extra={"provider": ours.provider, "zone": ours.default_zone})


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
def node_capacity(body: kopf.Body, type: str, memo: kopf.Memo, **_: Any) -> None:
    """Track each node's allocatable GPUs (the capacity for shifted jobs) and its region
    label (mapped to a grid zone by the `zone_map` setting)."""
    ctx: Context = memo.ctx
    name = body.get("metadata", {}).get("name", "")
    if type == "DELETED":
        ctx.node_gpus.pop(name, None)
        ctx.node_regions.pop(name, None)
    else:
        ctx.node_gpus[name] = node_gpus(body)
        region = (body.get("metadata", {}).get("labels") or {}).get(ctx.settings.zone_label)
        if region:
            ctx.node_regions[name] = region
