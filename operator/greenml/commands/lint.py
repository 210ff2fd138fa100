"""greenml lint: validate TrainingJob/InferenceBudget manifests offline (CI, GitOps)."""
from __future__ import annotations

import sys
from datetime import datetime, timezone


def register(sub) -> None:
    p = sub.add_parser(
        "lint", help="validate greenml manifests against the CRD schemas and the operator's rules",
        description="Exit 0: no errors; 1: errors found; 2: bad arguments or CRDs.",
    )
    p.add_argument("paths", nargs="+", metavar="FILE|DIR", help="YAML files or folders (searched recursively)")
    p.add_argument("--format", "-f", choices=["text", "github", "json"], default="text",
                   help="text (default), github (workflow annotations) or json")
    p.add_argument("--crds", metavar="DIR", help="validate against the CRDs in DIR (default: this greenml's own)")
    p.add_argument("--now", metavar="TIME", help="evaluate deadlines at this RFC 3339 time (default: the clock)")
    p.add_argument("--exclude", "-x", action="append", default=[], metavar="GLOB",
                   help="skip files and folders matching GLOB (repeatable), e.g. --exclude 'charts/*/templates' "
                        "for Helm templates, which are not YAML until rendered")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from greenml.lint import lint_paths, load_schemas
    from greenml.timeutil import parse_time

    try:
        now = parse_time(args.now) if args.now else datetime.now(timezone.utc)
    except ValueError as exc:
        print(f"greenml lint: --now: {exc}", file=sys.stderr)
        return 2
    try:
        schemas = load_schemas(Path(args.crds) if args.crds else None)
    except (OSError, ValueError, KeyError) as exc:
        print(f"greenml lint: --crds: {exc}", file=sys.stderr)
        return 2
    report = lint_paths(args.paths, now, schemas, exclude=args.exclude)
    print(report.render(args.format))
    return 0 if report.ok else 1
