"""greenml estimate: energy, carbon and best window of manifests before they are applied."""
from __future__ import annotations

import sys
from datetime import datetime, timezone

PROVIDERS = ("embedded", "file", "electricitymaps", "watttime", "ukcarbon", "prometheus")


def register(sub) -> None:
    p = sub.add_parser(
        "estimate", help="estimate energy, carbon (operational + embodied) and the best window of greenml manifests",
        description="Design-phase estimate with the operator's own planner and cost models. "
                    "Exit 0: all estimated; 1: a manifest could not be estimated; 2: bad arguments or settings.",
    )
    p.add_argument("paths", nargs="+", metavar="FILE|DIR", help="YAML files or folders (searched recursively)")
    p.add_argument("--format", "-f", choices=["table", "json"], default="table", help="table (default) or json")
    p.add_argument("--now", metavar="TIME", help="as if applied at this RFC 3339 time (default: the clock)")
    p.add_argument("--provider", choices=PROVIDERS, default="embedded",
                   help="intensity source (default: embedded, offline); credentials and URLs come from the "
                        "GREENML_* settings, with the embedded profile as the operator's fallback")
    p.add_argument("--intensity-file", metavar="CSV", help="intensity CSV (implies --provider file)")
    p.add_argument("--load", type=float, metavar="RPS",
                   help="InferenceBudget load in requests/s (default: what fills policy.minReplicas "
                        "replicas of the best variant)")
    p.add_argument("--exclude", "-x", action="append", default=[], metavar="GLOB",
                   help="skip files and folders matching GLOB (repeatable), as greenml lint --exclude")
    p.add_argument("--pue", type=float, default=None, metavar="X",
                   help="data-centre PUE applied to TrainingJob grams (default 1.0: IT energy only)")
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"greenml estimate: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    from greenml.estimate import EstimatePolicy, estimate_paths
    from greenml.planning.accounting import AccountingError, AccountingPolicy
    from greenml.services.trainingjob import Defaults
    from greenml.settings import SettingsError, load_settings
    from greenml.signals import SignalError, build_source
    from greenml.timeutil import parse_time

    try:
        now = parse_time(args.now) if args.now else datetime.now(timezone.utc)
    except ValueError as exc:
        return _fail(f"--now: {exc}")
    overrides = {"provider": "file", "intensity_file": args.intensity_file} if args.intensity_file \
        else {"provider": args.provider}
    try:
        settings = load_settings(**overrides)
        source = build_source(settings)
        accounting = AccountingPolicy() if args.pue is None else AccountingPolicy(pue=args.pue)
        policy = EstimatePolicy(now, Defaults.from_settings(settings), accounting, args.load,
                                settings.duration("horizon"))
    except (SettingsError, SignalError) as exc:
        return _fail(str(exc))
    except AccountingError as exc:
        return _fail(f"--pue: {exc}")
    except ValueError as exc:
        return _fail(f"--load: {exc}")
    report = estimate_paths(args.paths, source, policy, exclude=args.exclude)
    print(report.render(args.format))
    return 0 if report.ok else 1
