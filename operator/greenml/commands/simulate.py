"""`greenml simulate`: what the operator would do, offline.

- ``greenml simulate``            the default scenario (the packaged copy of examples/
                                  over a week of the embedded profiles): a table and an HTML picture.
- ``greenml simulate shifting``   the stable shifting contract (CSV in, RESULT.json out).
- ``greenml simulate inference``  the InferenceBudget contract (greenml.sim.inference).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Sequence

from greenml.signals.base import SignalError
from greenml.signals.file import column_line
from greenml.sim.jobs import JobResult, SimInputError
from greenml.timeutil import parse_duration

STEPS = ("5m", "15m", "30m", "1h")
# `greenml simulate shifting` exit codes: 0 every deadline met (or missed only where no
# schedule could meet it: the exact offline check says infeasible, or the job is
# unplaceable); 2 bad input; 3 a deadline was missed that could have been met
EXIT_AVOIDABLE_MISS = 3
FORECASTERS = ("builtin", "perfect", "blended")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate the operator's decisions offline",
                       description="Simulate what the operator would do. Without a subcommand: the default "
                                   "scenario (the sample workloads shipped with greenml, a copy of examples/, over "
                                   "a week of the embedded carbon profile of each one's zone).")
    p.add_argument("--output-dir", type=Path, default=Path("."), help="where to write greenml-simulation.html")
    p.add_argument("--examples", type=Path, default=None,
                   help="directory of TrainingJob/InferenceBudget YAML (default: the scenario shipped with greenml, "
                        "a copy of the repository's examples/)")
    p.add_argument("--zone", default="DE",
                   help="default zone for jobs without spec.carbon.zone, and the picture's curve (embedded profiles: "
                        "DE, GB, FR, US-CAL-CISO, US-MIDA-PJM; default: %(default)s)")
    p.add_argument("--json", action="store_true", help="also write greenml-simulation.json")
    p.set_defaults(func=run_default)
    s = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    _register_shifting(s)
    _register_inference(s)
    _register_power_caps(s)


# ---------------------------------------------------------------- shifting contract

def _register_shifting(s: argparse._SubParsersAction) -> None:
    from greenml.sim.shifting import POLICIES

    p = s.add_parser("shifting", help="replay batch jobs against an intensity series (stable contract)")
    p.add_argument("--intensity", required=True, type=Path, help="INTENSITY.csv: datetime_utc + numeric g/kWh columns")
    p.add_argument("--jobs", required=True, type=Path,
                   help="JOBS.csv: name,submit_utc,duration_minutes,deadline_utc,gpus,watts_per_gpu,interruptible")
    p.add_argument("--column", default=None,
                   help="intensity column (default: actual, then life-cycle, … — see greenml.signals.file; "
                        "the chosen one is printed)")
    p.add_argument("--step", default="30m",
                   help=f"decision step ({'|'.join(STEPS)}; any duration works; default: %(default)s)")
    p.add_argument("--capacity-gpus", type=int, default=None, help="GPUs available to these jobs (default: unlimited)")
    # --forecast-error, --forecast and --forecaster exclude each other, except --forecaster blended,
    # which needs --forecast (checked in shifting_inputs: a clear error, exit status 2)
    p.add_argument("--forecast-error", type=float, default=None, metavar="FRACTION",
                   help="forecast = actual + N(0, FRACTION × mean(actual)) (with --seed)")
    p.add_argument("--forecast", type=Path, default=None,
                   help="FORECASTS.csv: issued_utc,target_utc,gco2_per_kwh (a provider's forecasts as issued; "
                        "served as issued unless --forecaster blended)")
    p.add_argument("--forecaster", choices=FORECASTERS, default=None,
                   help="builtin (from past actuals), perfect (the default when no forecast option is given) or "
                        "blended (the --forecast file's forecasts corrected by the latest actual and mixed with "
                        "builtin, as the operator serves a provider forecast with history: needs --forecast)")
    p.add_argument("--seed", type=int, default=0, help="noise seed for --forecast-error (default: %(default)s)")
    p.add_argument("--policy", choices=POLICIES, default="greenml", help="decision policy (default: %(default)s)")
    p.add_argument("--safety-margin", default="0s", help="the operator's safety margin (default 0s: no start-up latency)")
    p.add_argument("--min-run", default="30m", help="minRunDuration of interruptible jobs (default: %(default)s)")
    p.add_argument("--lwa-quirks", action="store_true", help="policy lwa: reproduce the original code's quirks")
    p.add_argument("--output", required=True, type=Path, help="RESULT.json")
    p.epilog = ("exit status: 0 when every deadline is met, or missed only where no schedule could meet it (jobs "
                "with more GPUs than --capacity-gpus are unplaceable: reported, never counted as savings); 2 bad "
                "input; 3 a deadline was missed that could have been met (RESULT.json is written either way)")
    p.set_defaults(func=run_shifting)


def _fail(message: str) -> int:
    print(f"greenml simulate: error: {message}", file=sys.stderr)
    return 2


def _progress(label: str):
    def report(fraction: float) -> None:
        print(f"\r{label}: {100 * fraction:5.1f}%", end="", file=sys.stderr, flush=True)
    return report


def check_forecast_options(args: argparse.Namespace) -> None:
    """One forecast option, or --forecaster blended with the --forecast it blends. Raises
    SimInputError (exit status 2) naming what is wrong."""
    given = [o for o, v in (("--forecast-error", args.forecast_error), ("--forecast", args.forecast),
                            ("--forecaster", args.forecaster)) if v is not None]
    if args.forecaster == "blended":
        if args.forecast is None:
            raise SimInputError("--forecaster blended needs --forecast FORECASTS.csv: the provider's forecasts as "
                                "issued, which it corrects by the latest actual and mixes with the builtin forecaster")
        if args.forecast_error is not None:
            raise SimInputError("--forecaster blended and --forecast-error exclude each other")
    elif len(given) > 1:
        raise SimInputError(f"{' and '.join(given)} exclude each other (only --forecaster blended goes with --forecast)")


def shifting_inputs(args: argparse.Namespace):
    """Parse the contract's inputs: (jobs, actual, forecaster, policy). Raises SimInputError/ValueError."""
    from greenml.signals.file import load_intensity_csv
    from greenml.sim import forecasts
    from greenml.sim.jobs import read_forecasts_csv, read_jobs_csv
    from greenml.sim.shifting import SimPolicy

    check_forecast_options(args)
    step = parse_duration(args.step)
    actual = load_intensity_csv(args.intensity, column=args.column, source=args.intensity.name)
    jobs = read_jobs_csv(args.jobs)
    if args.forecast_error is not None:
        forecaster, label = forecasts.noisy(actual, args.forecast_error, args.seed), f"noise {args.forecast_error:g} seed {args.seed}"
    elif args.forecaster == "blended":
        forecaster = forecasts.blended(read_forecasts_csv(args.forecast), actual)
        label = f"blended {args.forecast.name}"
    elif args.forecast is not None:
        forecaster, label = forecasts.snapshots(read_forecasts_csv(args.forecast)), f"snapshots {args.forecast.name}"
    elif args.forecaster == "builtin":
        forecaster, label = forecasts.builtin(actual), "builtin"
    else:
        forecaster, label = forecasts.perfect(actual), "perfect"
    policy = SimPolicy(name=args.policy, step=step, capacity_gpus=args.capacity_gpus,
                       safety_margin=parse_duration(args.safety_margin), min_run=parse_duration(args.min_run),
                       lwa_quirks=args.lwa_quirks, forecast_label=label)
    return jobs, actual, forecaster, policy


def run_shifting(args: argparse.Namespace) -> int:
    from greenml.sim.shifting import simulate

    try:
        jobs, actual, forecaster, policy = shifting_inputs(args)
        print(column_line(actual))
        result = simulate(jobs, actual, forecaster, policy, on_progress=_progress("simulating"))
    except (SimInputError, SignalError, ValueError) as exc:
        return _fail(str(exc))
    payload = result.to_json()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2) + "\n")
    s = payload["summary"]
    extra = f"; unplaceable {s['unplaceable']} (not counted)" if s["unplaceable"] else ""
    print(f"\r{s['jobs']} jobs, policy {s['policy']}, forecast {s['forecast']}: {s['savings_percent']:.2f}% below "
          f"run-now (completed jobs); deadlines met {s['deadlines_met']}/{s['jobs']}{extra}; peak GPUs {s['peak_gpus']}; "
          f"wrote {args.output}")
    for note in s["notes"]:
        print(f"note: {note}")
    if s["oracle_basis"] is not None:
        print(f"oracle basis: {s['oracle_basis']}" + (
            f" ({s['oracle_fallback_reason']}): not an optimum, other policies may save more"
            if s["oracle_basis"] == "greedy-fallback" else ""))
    if s["avoidable_misses"]:
        print(f"greenml simulate: deadline missed that could have been met ({s['feasibility']} offline): "
              f"{', '.join(s['avoidable_misses'])}", file=sys.stderr)
        return EXIT_AVOIDABLE_MISS
    return 0


# ---------------------------------------------------------------- power caps

def _register_power_caps(s: argparse._SubParsersAction) -> None:
    p = s.add_parser("power-caps", help="shifting alone, capping alone and both, on the same jobs (GPU power caps)",
                     description="Run now; a carbon-aware cap without shifting (planned at submit); shifting "
                                 "uncapped and windows with caps jointly, both replayed through the operator's own "
                                 "loop tick by tick (and planned once at submit, for comparison); accounted on the "
                                 "actual series. See docs/power-caps.md.")
    p.add_argument("--intensity", required=True, type=Path, help="INTENSITY.csv: datetime_utc + numeric g/kWh columns")
    p.add_argument("--jobs", required=True, type=Path,
                   help="JOBS.csv: name,submit_utc,duration_minutes,deadline_utc,gpus,watts_per_gpu,interruptible")
    p.add_argument("--column", default=None, help="intensity column (default: the file's preferred column)")
    p.add_argument("--gpu-model", default="A40", help="GPU model: its limit and power-cap curve (default: %(default)s)")
    p.add_argument("--step", default="30m", help="planning step (default: %(default)s)")
    p.add_argument("--forecast-error", type=float, default=None, metavar="FRACTION",
                   help="forecast = actual + N(0, FRACTION × mean(actual)) (default: perfect foresight)")
    p.add_argument("--seed", type=int, default=0, help="noise seed for --forecast-error (default: %(default)s)")
    p.add_argument("--output", type=Path, default=None, help="RESULT.json (optional)")
    p.set_defaults(func=run_power_caps)


def run_power_caps(args: argparse.Namespace) -> int:
    from greenml.signals.file import load_intensity_csv
    from greenml.sim import forecasts
    from greenml.sim.jobs import read_jobs_csv
    from greenml.sim.power import CapSimConfig, simulate_caps

    try:
        actual = load_intensity_csv(args.intensity, column=args.column, source=args.intensity.name)
        jobs = read_jobs_csv(args.jobs)
        if args.forecast_error is not None:
            forecaster, label = forecasts.noisy(actual, args.forecast_error, args.seed), f"noise {args.forecast_error:g}"
        else:
            forecaster, label = forecasts.perfect(actual), "perfect"
        result = simulate_caps(jobs, actual, forecaster, CapSimConfig(step=parse_duration(args.step),
                                                                      gpu_model=args.gpu_model, forecast_label=label))
    except (SimInputError, SignalError, ValueError) as exc:
        return _fail(str(exc))
    summary = result.summary()
    rows = [[name, f"{v['grams']:,.0f}", f"{v['savings_percent']:.1f}%", f"{v['energy_change_percent']:+.1f}%",
             f"{v['mean_stretch']:.3f}", f"{v['deadlines_met']}/{summary['jobs']}"]
            for name, v in summary["strategies"].items()]
    print(f"{summary['jobs']} jobs, GPU curve {args.gpu_model}, forecast {label}")
    print(_table(("strategy", "grams", "savings", "energy", "run time ×", "deadlines met"), rows))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"summary": summary}, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


# ---------------------------------------------------------------- inference contract

def _inference_module():
    try:
        return importlib.import_module("greenml.sim.inference")
    except ModuleNotFoundError as exc:
        if exc.name == "greenml.sim.inference":
            return None
        raise


def _register_inference(s: argparse._SubParsersAction) -> None:
    mod = _inference_module()
    p = s.add_parser("inference", help="replay an InferenceBudget against intensity and load")
    if mod is None:
        p.set_defaults(func=lambda a: _fail("the inference simulator (greenml.sim.inference) is not available in this build"))
        return
    mod.add_arguments(p)
    p.set_defaults(func=mod.run_cli)


# ---------------------------------------------------------------- default scenario

def _clock(t: datetime) -> str:
    return f"{t:%a %H:%M}"


def plan_text(r: JobResult, limit: int = 3) -> str:
    if not r.runs:
        return "not run"
    parts = [f"{_clock(s)}–{e:%H:%M}" if s.date() == e.date() else f"{_clock(s)}–{_clock(e)}" for s, e in r.runs[:limit]]
    more = f" +{len(r.runs) - limit} more" if len(r.runs) > limit else ""
    return ", ".join(parts) + more


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


TABLE_HEADER = ("workload", "kind", "plan (UTC)", "grams", "run-now g", "savings", "deadline met", "variant mix")


def job_rows(results: Sequence[JobResult]) -> list[list[str]]:
    rows = [[r.name, "TrainingJob", plan_text(r), f"{r.grams:,.0f}", f"{r.run_now_grams:,.0f}",
             f"{100 * r.savings_fraction:.1f}%", "yes" if r.deadline_met else "NO", "—"] for r in results]
    done = [r for r in results if r.completed]      # work never done is no saving
    g, rn = sum(r.grams for r in done), sum(r.run_now_grams for r in done)
    rows.append(["all TrainingJobs", "", "", f"{g:,.0f}", f"{rn:,.0f}", f"{100 * (rn - g) / rn if rn else 0:.1f}%",
                 f"{sum(r.deadline_met for r in results)}/{len(results)}", ""])
    return rows


def run_default(args: argparse.Namespace) -> int:
    from greenml.sim import plot, scenario

    cfg = scenario.ScenarioConfig(zone=args.zone, **({"examples": args.examples} if args.examples else {}))
    try:
        run = scenario.run_default(cfg, on_progress=_progress("simulating"))
        extra_rows, extra_picture, extra_notes, spends, curves = _inference_part(cfg, run)
    except (SimInputError, SignalError, ValueError) as exc:
        return _fail(str(exc))
    rows = job_rows(run.result.jobs) + extra_rows
    print(f"\rgreenml simulate: {len(run.jobs)} TrainingJobs from {cfg.examples}, zone {cfg.zone}, "
          f"{cfg.start:%Y-%m-%d} + {cfg.days} days (operator defaults: 5m slots, 15m safety margin)")
    print(_table(TABLE_HEADER, rows))
    notes = run.notes + extra_notes
    for n in notes:
        print(f"note: {n}")
    by_name = {j.name: j for j in run.jobs}
    zones = {**run.intensities, **{z: c for z, c in curves.items() if z not in run.intensities}}
    pic = plot.Picture(
        title=f"greenml simulate — week of {cfg.start:%Y-%m-%d} ({', '.join(zones)})", intensity=zones,
        start=cfg.start, end=cfg.start + timedelta(days=cfg.days),
        rows=[plot.Row(r.name, tuple(plot.Segment(s, e) for s, e in r.runs), by_name[r.name].submit,
                       by_name[r.name].deadline, zone=by_name[r.name].zone or cfg.zone)
              for r in run.result.jobs] + extra_picture,
        budgets=spends, table_html=plot.html_table(TABLE_HEADER, rows), notes=list(notes))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    out = args.output_dir / "greenml-simulation.html"
    out.write_text(plot.render_html(pic), encoding="utf-8")
    if args.json:
        (args.output_dir / "greenml-simulation.json").write_text(json.dumps(run.result.to_json(), indent=2) + "\n")
    print(f"picture: {out.resolve()}")
    return 0


def _inference_part(cfg, run):
    """InferenceBudget rows for the default scenario, when greenml.sim.inference provides them."""
    mod = _inference_module()
    hook = getattr(mod, "scenario_rows", None) if mod else None
    if hook is None:
        return [], [], ["InferenceBudgets skipped: the inference simulator is not available in this build."], [], {}
    return hook(cfg, run.result.intensity)
