"""`greenml report`: per-namespace showback for a period.

    greenml report --from-sim RESULT.json --jobs JOBS.csv -o report.md      # a simulation
    greenml report --since 30d -n ml --format html -o report.html          # the cluster's CR statuses

Markdown (default) suits GitOps pipelines (job summaries, PR comments); HTML is one
self-contained file with inline SVG. Accounting options: --pue, --wue, --gpu-embodied-kg,
--gpu-lifetime-years, --server-embodied-kg, --server-lifetime-years, --intensity-kind.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from greenml.planning.accounting import AccountingError, AccountingPolicy, Hardware
from greenml.report import Report, ReportError, html_page, markdown, read_jobs_power, rows_from_cluster, rows_from_sim
from greenml.report.sources import sim_time_range
from greenml.timeutil import parse_duration, parse_time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="per-namespace showback: energy, carbon (operational + embodied), water, savings",
                       description="Showback report from the cluster's TrainingJob/InferenceBudget statuses "
                                   "(KUBECONFIG) or from a simulator RESULT.json.")
    p.add_argument("--from-sim", type=Path, default=None, metavar="RESULT.json",
                   help="a `greenml simulate shifting|inference` result instead of the cluster")
    p.add_argument("--jobs", type=Path, default=None, metavar="JOBS.csv",
                   help="the simulator's JOBS.csv (the jobs' GPUs and watts) for a shifting result")
    p.add_argument("--namespace", "-n", action="append", default=None, help="only these namespaces (repeatable)")
    p.add_argument("--since", default=None, help="period start: ISO time or a duration before now (e.g. 30d); "
                                                  "with --from-sim, before the simulation's end")
    p.add_argument("--until", default=None, help="period end: ISO time (default: now; with --from-sim, the "
                                                  "simulation's end)")
    p.add_argument("--format", choices=("markdown", "html", "json"), default="markdown")
    p.add_argument("--output", "-o", type=Path, default=None, help="file to write (default: stdout)")
    p.add_argument("--title", default="greenml showback report")
    d = Hardware()
    p.add_argument("--pue", type=float, default=1.0, help="facility PUE (default 1.0: IT energy only)")
    p.add_argument("--wue", type=float, default=None, help="water usage effectiveness, L/kWh (default: not reported)")
    p.add_argument("--intensity-kind", choices=("average", "marginal"), default="average")
    p.add_argument("--gpu-embodied-kg", type=float, default=d.gpu_embodied_kg)
    p.add_argument("--gpu-lifetime-years", type=float, default=d.gpu_lifetime_years)
    p.add_argument("--server-embodied-kg", type=float, default=d.server_embodied_kg)
    p.add_argument("--server-lifetime-years", type=float, default=d.server_lifetime_years)
    p.add_argument("--gpus-per-server", type=int, default=d.gpus_per_server)
    p.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"greenml report: error: {message}", file=sys.stderr)
    return 2


def policy_from_args(args: argparse.Namespace) -> AccountingPolicy:
    hw = Hardware(args.gpu_embodied_kg, args.gpu_lifetime_years, args.server_embodied_kg, args.server_lifetime_years,
                  args.gpus_per_server)
    return AccountingPolicy(pue=args.pue, wue_l_per_kwh=args.wue, kind=args.intensity_kind, hardware=hw)


def _period(args: argparse.Namespace, now: datetime) -> tuple[datetime | None, datetime | None]:
    def when(text: str | None, flag: str) -> datetime | None:
        if text is None:
            return None
        try:
            return parse_time(text)
        except ValueError:
            pass
        try:
            return now - parse_duration(text)
        except ValueError:
            raise ReportError(f"{flag}: expected an ISO time or a duration like 30d, got {text!r}") from None
    start, end = when(args.since, "--since"), when(args.until, "--until")
    if start and end and end <= start:
        raise ReportError(f"--until {args.until} is not after --since {args.since}")
    return start, end


def sim_period(args: argparse.Namespace, payload) -> tuple[datetime | None, datetime | None]:
    """A simulation's report period: the data's own time range, narrowed by --since/--until,
    whose durations count back from the data's end (the simulated "now"), not today."""
    data_start, data_end = sim_time_range(payload, str(args.from_sim))
    if data_end is None and args.since is not None and not _is_time(args.since):
        raise ReportError(f"--since {args.since}: {args.from_sim} states no end time to count back from; "
                          "give an ISO time")
    start, end = _period(args, data_end or datetime.now(timezone.utc))
    start = max(filter(None, (start, data_start)), default=None)
    end = min(filter(None, (end, data_end)), default=None)
    if start is not None and end is not None and end <= start:
        raise ReportError(f"--since/--until select nothing of {args.from_sim}, which covers "
                          f"{data_start.isoformat() if data_start else '…'} – {data_end.isoformat() if data_end else '…'}")
    return start, end


def _is_time(text: str) -> bool:
    try:
        parse_time(text)
    except ValueError:
        return False
    return True


def build(args: argparse.Namespace, now: datetime) -> Report:
    policy = policy_from_args(args)
    start, end = _period(args, now)
    notes: list[str] = []
    if args.from_sim is not None:
        try:
            payload = json.loads(args.from_sim.read_text())
        except OSError as exc:
            raise ReportError(f"{args.from_sim}: cannot read: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise ReportError(f"{args.from_sim}: not JSON: {exc}") from None
        power = read_jobs_power(args.jobs) if args.jobs else None
        start, end = sim_period(args, payload)
        rows = rows_from_sim(payload, policy, path=str(args.from_sim), power=power, start=start, end=end)
        summary = payload.get("summary") if isinstance(payload, dict) and isinstance(payload.get("summary"), dict) else {}
        if summary.get("policy"):
            notes.append(f"simulated policy {summary['policy']}, forecast {summary.get('forecast', '?')}; "
                         f"deadlines met {summary.get('deadlines_met', '?')}/{summary.get('jobs', '?')}")
        source = f"simulation {args.from_sim}"
    else:
        tjs, ibs, server = fetch_cluster(args.namespace)
        rows = rows_from_cluster(tjs, ibs, policy, start=start, end=end or now,
                                 workloads=fetch_workloads(args.namespace, notes))
        end = end or now
        source = f"cluster {server} (CR statuses)"
        notes.append("usage.grams accrues IT energy at the planner's current-slot intensity; embodied carbon uses "
                     "status.progress.runSeconds (completed runs)")
    if args.namespace:
        rows = [r for r in rows if r.namespace in args.namespace]
    return Report(args.title, source, start, end, policy, tuple(rows), tuple(notes))


def fetch_cluster(namespaces: list[str] | None):
    """TrainingJobs and InferenceBudgets (all namespaces, or the given ones) through greenml.kube."""
    from greenml.kube import ApiError, Kube
    from greenml.kube.client import path_for
    from greenml.report.sources import list_items

    kube = Kube()
    out = {"trainingjobs": [], "inferencebudgets": []}
    for plural in out:
        for ns in namespaces or [None]:
            try:
                payload = kube.request("GET", path_for("greenml.io/v1alpha1", plural, ns), f"list {plural}")
            except ApiError as exc:
                raise ReportError(f"cannot list {plural}{' in ' + ns if ns else ''}: {exc}") from None
            out[plural].extend(list_items(payload, f"list {plural}"))
    return out["trainingjobs"], out["inferencebudgets"], kube.host


def fetch_workloads(namespaces: list[str] | None, notes: list[str]) -> list:
    """Kueue Workloads (those greenml's carbon-window check keeps a record on make rows); none
    where Kueue is not installed (404). Any other failure (no right to list them, Kueue's
    conversion webhook down) leaves them out with a line in ``notes``, not the whole report."""
    from greenml.kube import ApiError, Kube, NotFound
    from greenml.kube.client import path_for
    from greenml.report.sources import list_items
    from greenml.services.kueue import KUEUE_API

    kube, out = Kube(), []
    for ns in namespaces or [None]:
        try:
            out.extend(list_items(kube.request("GET", path_for(KUEUE_API, "workloads", ns), "list workloads"),
                                  "list workloads"))
        except NotFound:
            return []
        except (ApiError, ReportError) as exc:
            notes.append(f"Kueue Workloads left out: cannot list them{' in ' + ns if ns else ''}: {exc}")
            return []
    return out


def run(args: argparse.Namespace) -> int:
    try:
        report = build(args, datetime.now(timezone.utc))
    except (ReportError, AccountingError) as exc:
        return _fail(str(exc))
    except Exception as exc:  # no kubeconfig, unreachable API
        if args.from_sim is None:
            return _fail(f"cannot read the cluster: {exc}")
        raise
    if args.format == "html":
        text = html_page(report)
    elif args.format == "json":
        text = json.dumps(report_json(report), indent=2) + "\n"
    else:
        text = markdown(report)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        t = report.total()
        print(f"{len(report.rows)} workloads in {len(report.namespaces())} namespaces: {t.actual.total_g:,.1f} gCO2e "
              f"({t.actual.operational_g:,.1f} operational + {t.actual.embodied_g:,.1f} embodied); wrote {args.output}",
              file=sys.stderr)
    return 0


def report_json(report: Report) -> dict:
    return {"title": report.title, "source": report.source,
            "start": report.start.isoformat() if report.start else None,
            "end": report.end.isoformat() if report.end else None,
            "namespaces": [{"namespace": t.namespace, "workloads": t.workloads, "actual": t.actual.to_json(),
                            "counterfactual": t.counterfactual.to_json() if t.counterfactual else None,
                            "savedGrams": t.saved_g} for t in report.namespaces()],
            "workloads": [{"namespace": r.namespace, "name": r.name, "kind": r.kind, "basis": r.basis,
                           "actual": r.actual.to_json(), "savings": r.savings.to_json() if r.savings else None,
                           "note": r.note, "budget": _budget_json(r.budget)} for r in report.rows]}


def _budget_json(b) -> dict | None:
    if b is None:
        return None
    return {"period": b.period, "unit": b.unit, "limit": b.limit, "within": b.within,
            "periods": [{"start": p.start.isoformat() if p.start else None,
                         "end": p.end.isoformat() if p.end else None,
                         "spent": p.spent, "projected": p.projected, "complete": p.complete} for p in b.periods]}
