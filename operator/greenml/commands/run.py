"""greenml run: start the operator (kopf) against KUBECONFIG or the in-cluster config."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("run", help="run the operator (settings from GREENML_* env or GREENML_CONFIG file)")
    p.add_argument("--namespace", "-n", action="append", help="watch only these namespaces (default: all)")
    p.add_argument("--liveness", default=None, help="kopf liveness endpoint (default http://0.0.0.0:<health_port>/healthz)")
    p.add_argument("--check", action="store_true", help="validate settings and exit")
    p.set_defaults(func=run)


def checked_settings():
    """The settings `greenml run` starts with, validated as it needs them: the fields
    (load_settings) and the configured provider as the operator builds it (build_provider:
    a token for electricitymaps, a readable intensity file for provider=file, https for
    credentials). `--check` and the real start both go through here. Raises SettingsError."""
    from greenml.settings import SettingsError, load_settings
    from greenml.signals import SignalError, build_provider

    settings = load_settings()
    try:
        build_provider(settings)
    except SignalError as exc:
        raise SettingsError(f"invalid provider settings (provider={settings.provider}): {exc}") from None
    return settings


def run(args) -> int:
    from greenml.settings import SettingsError

    try:
        settings = checked_settings()
    except SettingsError as exc:
        print(f"greenml: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print("settings ok")
        return 0
    import asyncio

    import kopf

    from greenml import logs
    from greenml.controllers import operator as op  # registers all handlers
    import greenml.controllers  # noqa: F401

    logs.configure(settings.log_level, settings.log_format)
    try:
        ctx = op.build_context(settings)
    except Exception as exc:  # bad provider settings, unreadable file, no kubeconfig
        print(f"greenml: cannot start: {exc}", file=sys.stderr)
        return 2
    memo = kopf.Memo(ctx=ctx, greenml_settings=settings)
    namespaces = args.namespace or ([settings.namespace] if settings.namespace else None)
    liveness = args.liveness or f"http://0.0.0.0:{settings.health_port}/healthz"

    async def main() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        operator = asyncio.create_task(kopf.operator(
            clusterwide=namespaces is None,
            namespaces=namespaces or (),
            liveness_endpoint=liveness,
            memo=memo,
            standalone=True,  # kopf's peering stays off: the Lease (GREENML_PEERING) elects the acting replica
            stop_flag=stop,
            ready_flag=ready,
        ))
        started = asyncio.create_task(ready.wait())
        await asyncio.wait({operator, started}, return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():       # kopf's signal handlers are in place: ours replace them
            op.stop_on_signals(ctx, stop)
        started.cancel()
        await operator

    asyncio.run(main())
    from greenml.controllers.loop import busy_workers

    busy = busy_workers()
    if busy:
        # calls still in flight after the pool's grace: Python would wait for them at exit
        # (threads are joined); their work is redone from status on the next start
        op.exit_now(f"{len(busy)} call(s) still in flight; left to the next start")
    return 0
