"""TrainingJob service: the logic between a TrainingJob object and the planner.

Knows nothing of kopf or the Kubernetes client. The operator's handlers and the
simulator both call these functions, so every simulated figure measures the code
that runs in clusters:

- ``resolve(body, defaults)``       spec → ``JobRequirements`` (or ``InvalidSpec``)
- ``job_manifest(req, template)``    the batch/v1 Job the operator owns (suspended)
- ``decide(req, progress, job, windows, now, defaults)``  act now? (start/resume/pause/wait)
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Sequence

from pydantic import ValidationError

from greenml import API_VERSION
from greenml.api.trainingjob import TrainingJobSpec
from greenml.planning.power import CAP_ANNOTATION, CapCurve, CapPolicy, CurvePoint, curve_for
from greenml.services import status_fields as f
from greenml.timeutil import ensure_utc, format_time, parse_duration, parse_time

MANAGED_BY = "greenml-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_OWNER = "greenml.io/trainingjob"
GPU_RESOURCE = "nvidia.com/gpu"


class InvalidSpec(Exception):
    """A spec the schema accepted but the operator cannot run. ``field`` is a dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Defaults:
    """Operator-wide defaults the service needs (a slice of Settings)."""

    zone: str = "DE"
    safety_margin: timedelta = timedelta(minutes=15)
    min_run: timedelta = timedelta(minutes=30)
    watts_per_gpu: float = 300.0
    cpu_job_watts: float = 100.0
    gpu_watts: Callable[[str], float | None] | None = None  # model name → typical W (None: unknown)
    step: timedelta = timedelta(minutes=5)

    def __post_init__(self) -> None:
        if self.gpu_watts is None:
            object.__setattr__(self, "gpu_watts", typical_gpu_watts)

    @classmethod
    def from_settings(cls, settings: Any) -> "Defaults":
        return cls(
            zone=settings.default_zone,
            safety_margin=parse_duration(settings.safety_margin),
            min_run=parse_duration(settings.default_min_run),
            watts_per_gpu=settings.default_watts_per_gpu,
            step=parse_duration(settings.step),
        )


def typical_gpu_watts(model: str) -> float | None:
    """Typical training draw of a GPU model from the cited table in greenml.signals.gpus."""
    from greenml.signals.gpus import lookup

    spec = lookup(model)
    return spec.typical_w if spec else None


@dataclass(frozen=True)
class JobRequirements:
    """Everything the planner and the decision need, resolved from one TrainingJob."""

    namespace: str
    name: str
    uid: str
    created: datetime
    deadline: datetime
    duration: timedelta
    interruptible: bool
    min_run: timedelta
    gpus: int
    watts: float                      # total draw while running (W)
    power_source: str                 # "spec", "gpu-table", "default"
    zone: str
    max_intensity: float | None = None
    budget_grams: float | None = None
    power_query: str | None = None
    #: spec.power.cap resolved (None: no cap). With a cap, ``duration`` and ``watts`` are at
    #: maxWatts (static: at the cap): the estimate × the curve's time / power factor
    cap: CapPolicy | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def power_kw(self) -> float:
        return self.watts / 1000.0


@dataclass(frozen=True)
class Progress:
    """Accumulated run time, persisted in status so pauses and restarts lose nothing."""

    run_seconds: float = 0.0
    running_since: datetime | None = None
    runs: int = 0
    seen_running: datetime | None = None     # last time the operator saw a pod of the current run running (≤ one step old)

    def total(self, now: datetime) -> float:
        extra = (now - self.running_since).total_seconds() if self.running_since else 0.0
        return self.run_seconds + max(0.0, extra)

    def closed(self, end: datetime) -> "Progress":
        """The current run stopped at ``end`` (never before it started)."""
        if self.running_since is None:
            return replace(self, seen_running=None)
        return replace(self, run_seconds=self.total(max(end, self.running_since)), running_since=None, seen_running=None)

    def rebase(self, now: datetime, speed: float) -> "Progress":
        """Carbon-aware power caps: count the open run segment at ``speed`` (work per wall
        second at the cap it ran under, ``CapPolicy.level(cap).speed``; 1 uncapped) and open a
        new segment at ``now``. The controller calls it when the published cap changes and
        before closing a run, so run time stays in units of the job's estimate (see
        docs/power-caps.md)."""
        if self.running_since is None or now <= self.running_since:
            return self
        done = (now - self.running_since).total_seconds() * min(1.0, max(0.0, speed))
        return replace(self, run_seconds=min(MAX_RUN_SECONDS, self.run_seconds + done), running_since=now)

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> "Progress":
        p = f.mapping(f.mapping(status).get("progress"))
        run = f.number(p.get("runSeconds"), 0.0, minimum=0.0)
        return cls(min(run, MAX_RUN_SECONDS), f.time(p.get("runningSince")),
                   f.integer(p.get("runs"), 0, minimum=0), f.time(p.get("lastSeenRunning")))

    def to_status(self) -> dict[str, Any]:
        return {"runSeconds": round(self.run_seconds, 3),
                "runningSince": format_time(self.running_since) if self.running_since else None,
                "runs": self.runs,
                "lastSeenRunning": format_time(self.seen_running) if self.seen_running else None}


MAX_RUN_SECONDS = 10.0 * 365 * 86400   # longer than any job (resolve() bounds durations); keeps timedelta finite


@dataclass(frozen=True)
class JobObservation:
    """What the operator sees of the Job it owns."""

    exists: bool = True
    suspended: bool = True
    succeeded: bool = False
    failed: bool = False
    failure_message: str = ""
    #: does a pod of the Job run (``status.ready`` > 0)? None when the Job controller has
    #: written no such status (yet): then an un-suspended Job counts as running
    pods_running: bool | None = None
    #: when the Job finished, by the Job controller (completionTime / the Failed condition)
    finished_at: datetime | None = None

    @classmethod
    def from_job(cls, job: Mapping[str, Any] | None) -> "JobObservation":
        if not job:
            return cls(exists=False)
        spec = job.get("spec") or {}
        st = f.mapping(job.get("status"))
        conds = st.get("conditions") or []
        done = {c.get("type"): c for c in conds if isinstance(c, Mapping) and c.get("status") == "True"}
        failed = done.get("Failed")
        ready = st.get("ready")
        finished = st.get("completionTime") if "Complete" in done else (failed or {}).get("lastTransitionTime")
        return cls(
            exists=True,
            suspended=bool(spec.get("suspend", False)),
            succeeded="Complete" in done,
            failed=failed is not None,
            failure_message=(failed or {}).get("message") or (failed or {}).get("reason") or "",
            pods_running=(ready > 0) if isinstance(ready, int) and not isinstance(ready, bool) else None,
            finished_at=f.time(finished),
        )


# ---------------------------------------------------------------- resolving specs

def _spec_errors(exc: ValidationError) -> InvalidSpec:
    first = exc.errors()[0]
    path = ".".join(["spec", *[str(p) for p in first["loc"]]])
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return InvalidSpec(path, f"{first['msg']}{more}")


def template_gpus(template: Mapping[str, Any]) -> int:
    """GPUs the Job uses: nvidia.com/gpu limits of its containers × parallelism."""
    pod = ((template.get("spec") or {}).get("template") or {}).get("spec") or {}
    per_pod = 0
    for c in pod.get("containers") or []:
        limits = ((c.get("resources") or {}).get("limits") or {})
        raw = limits.get(GPU_RESOURCE, 0)
        try:
            per_pod += int(raw)
        except (TypeError, ValueError):
            raise InvalidSpec(f"spec.template.spec.template.spec.containers[{c.get('name')}].resources.limits",
                              f"{GPU_RESOURCE} must be an integer, got {raw!r}") from None
    parallelism = (template.get("spec") or {}).get("parallelism")
    try:
        total = per_pod * max(1, int(parallelism or 1))
    except (TypeError, ValueError, OverflowError):
        raise InvalidSpec("spec.template.spec.parallelism", f"must be an integer, got {parallelism!r}") from None
    if total > 2**31 - 1:   # Kubernetes counts are int32
        raise InvalidSpec("spec.template.spec", f"{total} GPUs (limits × parallelism) is out of range")
    return total


def _overflowing(spec: Any) -> str:
    """The schedule duration too large for a timedelta (else just "spec")."""
    schedule = spec.get("schedule") if isinstance(spec, Mapping) else None
    for key in ("estimatedDuration", "maxDelay", "minRunDuration"):
        try:
            parse_duration((schedule or {}).get(key))
        except OverflowError:
            return f"spec.schedule.{key}"
        except Exception:  # noqa: BLE001 - any other problem is not an overflow
            continue
    return "spec"


def _duration(value: str, field: str) -> timedelta:
    """parse_duration, with values beyond timedelta's range reported as InvalidSpec."""
    try:
        return parse_duration(value)
    except OverflowError:
        raise InvalidSpec(field, f"{value!r} is too large") from None


def _check_template(template: Mapping[str, Any]) -> None:
    spec = template.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec.template.spec", "a JobTemplateSpec needs a spec (batch/v1 JobSpec)")
    pod = (spec.get("template") or {}).get("spec")
    if not isinstance(pod, Mapping):
        raise InvalidSpec("spec.template.spec.template.spec", "the Job's pod template needs a spec")
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        raise InvalidSpec("spec.template.spec.template.spec.containers", "the pod template has no containers")
    for i, c in enumerate(containers):
        if not isinstance(c, Mapping) or not c.get("image"):
            raise InvalidSpec(f"spec.template.spec.template.spec.containers[{i}].image", "every container needs an image")
    policy = pod.get("restartPolicy")
    if policy not in (None, "Never", "OnFailure"):
        raise InvalidSpec("spec.template.spec.template.spec.restartPolicy", "a Job's restartPolicy must be Never or OnFailure")


def resolve(body: Mapping[str, Any], defaults: Defaults, *, known_zones: Sequence[str] | None = None) -> JobRequirements:
    """Validate a TrainingJob body and resolve every default. Raises InvalidSpec."""
    meta = body.get("metadata") or {}
    try:
        spec = TrainingJobSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise _spec_errors(exc) from None
    except OverflowError:   # a validator's parse beyond timedelta's range
        raise InvalidSpec(_overflowing(body.get("spec")), "value out of range") from None
    _check_template(spec.template)
    created_raw = meta.get("creationTimestamp")
    try:
        created = parse_time(created_raw) if created_raw else None
    except (TypeError, ValueError, AttributeError):
        raise InvalidSpec("metadata.creationTimestamp", f"not an RFC 3339 time: {created_raw!r}") from None
    duration = _duration(spec.schedule.estimated_duration, "spec.schedule.estimatedDuration")
    if duration.total_seconds() <= 0:
        raise InvalidSpec("spec.schedule.estimatedDuration", "must be longer than zero")
    if spec.schedule.deadline is not None:
        deadline = ensure_utc(spec.schedule.deadline)
    else:
        if created is None:
            raise InvalidSpec("metadata.creationTimestamp", "needed to resolve schedule.maxDelay")
        try:
            deadline = created + _duration(spec.schedule.max_delay, "spec.schedule.maxDelay") + duration
        except OverflowError:
            raise InvalidSpec("spec.schedule.maxDelay", "maxDelay + estimatedDuration lies beyond the year 9999") from None
    min_run = (_duration(spec.schedule.min_run_duration, "spec.schedule.minRunDuration")
               if spec.schedule.min_run_duration else defaults.min_run)
    if spec.schedule.min_run_duration and min_run > duration:
        raise InvalidSpec("spec.schedule.minRunDuration",
                          f"minRunDuration {spec.schedule.min_run_duration} exceeds estimatedDuration "
                          f"{spec.schedule.estimated_duration}")

    power = spec.power
    gpus = power.gpus if power and power.gpus is not None else template_gpus(spec.template)
    if power and power.watts_per_gpu is not None:
        per_gpu, src = power.watts_per_gpu, "spec"
    elif power and power.gpu_model:
        found = defaults.gpu_watts(power.gpu_model)
        if found is None:
            from greenml.signals.gpus import GPUS

            raise InvalidSpec("spec.power.gpuModel", f"unknown GPU model {power.gpu_model!r} "
                              f"(known: {', '.join(sorted(GPUS))}); or set spec.power.wattsPerGpu")
        per_gpu, src = found, "gpu-table"
    else:
        per_gpu, src = defaults.watts_per_gpu, "default"
    cap = resolve_cap(power, gpus)
    if cap is not None:
        time_factor, power_factor = cap.baseline()
        try:
            duration = timedelta(seconds=round(duration.total_seconds() * time_factor, 3))
        except OverflowError:
            raise InvalidSpec("spec.schedule.estimatedDuration", "too large once slowed by the power cap") from None
        per_gpu = round(per_gpu * power_factor, 1)   # the deadline stays: the slowdown counts against it
    watts = gpus * per_gpu if gpus > 0 else defaults.cpu_job_watts

    carbon = spec.carbon
    zone = (carbon.zone if carbon and carbon.zone else defaults.zone)
    if known_zones is not None and zone not in known_zones:
        raise InvalidSpec("spec.carbon.zone", f"unknown grid zone {zone!r}")
    return JobRequirements(
        namespace=meta.get("namespace") or "default",
        name=meta.get("name") or "",
        uid=meta.get("uid") or "",
        created=created or deadline - duration,
        deadline=deadline,
        duration=duration,
        interruptible=spec.schedule.interruptible,
        min_run=min_run,
        gpus=gpus,
        watts=watts,
        power_source=src,
        zone=zone,
        max_intensity=carbon.max_intensity if carbon else None,
        budget_grams=carbon.budget_grams if carbon else None,
        power_query=power.query if power else None,
        cap=cap,
    )


def resolve_cap(power: Any, gpus: int) -> CapPolicy | None:
    """spec.power.cap → a CapPolicy (None: no cap), or InvalidSpec. The GPU's maximum power
    limit and the curve come from ``cap.curve`` (its highest point is the GPU uncapped) or
    from ``gpuModel`` (the GPU table's TDP; the Zeus curve of that model, else the generic one)."""
    cap = power.cap if power else None
    if cap is None or (cap.watts is None and cap.carbon_aware is None):
        return None
    if gpus <= 0:
        raise InvalidSpec("spec.power.cap", "a GPU power cap needs GPUs (spec.power.gpus or nvidia.com/gpu limits)")
    if cap.curve:
        pts = sorted(cap.curve, key=lambda p: p.watts)
        ref = pts[-1]
        if len({p.watts for p in pts}) != len(pts):
            raise InvalidSpec("spec.power.cap.curve", "two points with the same watts")
        times = [p.time_factor / ref.time_factor for p in pts]
        if any(a < b for a, b in zip(times, times[1:])):
            raise InvalidSpec("spec.power.cap.curve", "timeFactor must not grow with the cap (a higher cap is never slower)")
        curve = CapCurve("spec", tuple(CurvePoint(p.watts / ref.watts, p.time_factor / ref.time_factor,
                                                  p.power_factor / ref.power_factor) for p in pts), "spec.power.cap.curve")
        reference, where = ref.watts, "the curve's highest point"
    elif power.gpu_model:
        from greenml.signals.gpus import lookup

        spec = lookup(power.gpu_model)
        if spec is None:
            raise InvalidSpec("spec.power.gpuModel", f"unknown GPU model {power.gpu_model!r}; a power cap needs a known "
                              "model or spec.power.cap.curve")
        curve, reference, where = curve_for(power.gpu_model), spec.tdp_w, f"{spec.model}'s power limit"
    else:
        raise InvalidSpec("spec.power.cap", "a power cap needs spec.power.gpuModel (the GPU's limit and curve) "
                          "or spec.power.cap.curve")
    lo, hi = (cap.watts, cap.watts) if cap.watts is not None else (cap.carbon_aware.min_watts, cap.carbon_aware.max_watts)
    field = "spec.power.cap.watts" if cap.watts is not None else "spec.power.cap.carbonAware"
    floor = round(curve.points[0].fraction * reference, 1)
    if lo < floor:
        raise InvalidSpec(field, f"{lo:g} W is below the lowest cap the curve knows ({floor:g} W); "
                          "the node agent never goes below the device's own minimum either")
    if cap.watts is not None and cap.watts > reference:
        raise InvalidSpec(field, f"{cap.watts:g} W is above {where} ({reference:g} W): not a cap")
    return CapPolicy("static" if cap.watts is not None else "carbonAware", lo, min(hi, reference) if cap.watts is None else hi,
                     reference, curve)


def check_feasible(req: JobRequirements, now: datetime, defaults: Defaults) -> None:
    """At admission (before any Job exists): the deadline must still be reachable."""
    earliest_finish = now + req.duration
    if req.deadline <= now:
        raise InvalidSpec("spec.schedule.deadline", f"deadline {format_time(req.deadline)} is in the past")
    if earliest_finish > req.deadline:
        raise InvalidSpec(
            "spec.schedule.deadline",
            f"deadline {format_time(req.deadline)} cannot be met: running now for "
            f"{req.duration} finishes at {format_time(earliest_finish)}",
        )


# ---------------------------------------------------------------- the Job it owns

def job_name(tj_name: str) -> str:
    """Deterministic, DNS-1123 label-safe (≤ 63 chars) name of the owned Job."""
    name = f"{tj_name}-run"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(tj_name.encode()).hexdigest()[:8]
    return f"{tj_name[:50].rstrip('-.')}-{digest}-run"


def job_manifest(req: JobRequirements, template: Mapping[str, Any], *,
                 power_cap_watts: float | None = None) -> dict[str, Any]:
    """The batch/v1 Job, created suspended, owned by the TrainingJob (garbage-collected with it).
    ``power_cap_watts``: the GPU power cap its pods carry for the node agent (PlanBoard.cap_for)."""
    tmeta = dict(template.get("metadata") or {})
    labels = {**(tmeta.get("labels") or {}), LABEL_MANAGED_BY: MANAGED_BY, LABEL_OWNER: req.name}
    spec = dict(template.get("spec") or {})
    spec["suspend"] = True
    if power_cap_watts is not None:
        pod = dict(spec.get("template") or {})
        pmeta = dict(pod.get("metadata") or {})
        pmeta["annotations"] = {**(pmeta.get("annotations") or {}), **power_cap_annotation(power_cap_watts)}
        pod["metadata"] = pmeta
        spec["template"] = pod
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(req.name),
            "namespace": req.namespace,
            "labels": labels,
            "annotations": dict(tmeta.get("annotations") or {}),
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": "TrainingJob", "name": req.name, "uid": req.uid,
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": spec,
    }


def power_cap_annotation(watts: float | None) -> dict[str, str | None]:
    """The pod annotation that asks the node agent for a cap (None: remove it, i.e. uncapped);
    as a merge patch: ``{"metadata": {"annotations": power_cap_annotation(w)}}`` on each pod."""
    return {CAP_ANNOTATION: None if watts is None else f"{watts:g}"}


#: the labels the Job controller puts on a Job's pods (both today; ``job-name`` is the older)
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")


def job_pods(pods: Sequence[Mapping[str, Any]], job: str) -> list[Mapping[str, Any]]:
    """The live pods of the Job named ``job`` among ``pods`` (a list of one namespace's pods),
    by their job-name label — the list may hold others: the emulator ignores label selectors;
    finished pods and pods being deleted are left out."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if not any(labels.get(k) == job for k in JOB_NAME_LABELS) or meta.get("deletionTimestamp"):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        out.append(pod)
    return out


def pods_to_cap(pods: Sequence[Mapping[str, Any]], job: str, watts: float | None) -> list[str]:
    """Names of the Job's live pods whose cap annotation is not the one to publish (``watts``,
    None: no annotation): each gets ``{"metadata": {"annotations": power_cap_annotation(watts)}}``."""
    want = power_cap_annotation(watts)[CAP_ANNOTATION]
    return [(p.get("metadata") or {}).get("name") for p in job_pods(pods, job)
            if ((p.get("metadata") or {}).get("annotations") or {}).get(CAP_ANNOTATION) != want]


def parse_cap(value: Any) -> float | None:
    """A cap annotation's watts (None: absent or not a positive number, i.e. uncapped)."""
    try:
        watts = float(value)
    except (TypeError, ValueError):
        return None
    return watts if math.isfinite(watts) and watts > 0 else None


def carried_cap(pods: Sequence[Mapping[str, Any]], job: str, job_obj: Mapping[str, Any] | None) -> float | None:
    """The cap a Job's pods carry — what was published for the run now open, read back after a
    restart: the first live pod's annotation, else the Job's pod template's (None: uncapped)."""
    live = job_pods(pods, job)
    if live:
        return parse_cap(((live[0].get("metadata") or {}).get("annotations") or {}).get(CAP_ANNOTATION))
    template = ((job_obj or {}).get("spec") or {}).get("template") or {}
    return parse_cap(((template.get("metadata") or {}).get("annotations") or {}).get(CAP_ANNOTATION))


def pods_signature(job: Mapping[str, Any] | None, runs: int) -> tuple:
    """What of the Job tells that it may have pods a published cap has not reached: its uid,
    the run (a resumed Job makes new pods from its template) and its pod counts (a replaced
    pod) — a change means listing its pods again."""
    meta, st = (job or {}).get("metadata") or {}, f.mapping((job or {}).get("status"))
    return (meta.get("uid"), runs, st.get("active"), st.get("ready"), st.get("failed"), st.get("succeeded"))


def carbon_aware(req: JobRequirements) -> bool:
    """A carbon-aware power cap: its progress counts at the speed of the cap it runs under."""
    return req.cap is not None and req.cap.mode == "carbonAware"


def capped_view(progress: Progress, speed: float, now: datetime, run_start: datetime | None = None) -> Progress:
    """A carbon-aware job's progress as ``decide()`` and the board are to see it: the open run
    segment counted at ``speed`` (work per wall second at the cap it runs under:
    ``CapPolicy.level(cap).speed``) and, when the segment was opened by a rebase (its cap
    changed) after the run began at ``run_start``, the run's start as ``running_since`` —
    minRunDuration counts from there, the work done stays the same. So the remaining work and
    the latest safe start stay true under a cap. Never persisted (``run_seconds`` may be below
    zero); ``persist_capped`` turns ``decide()``'s answer back."""
    rs = progress.running_since
    if rs is None:
        return progress
    deficit = (now - rs).total_seconds() * (1.0 - min(1.0, max(0.0, speed))) if now > rs else 0.0
    shift = (rs - run_start).total_seconds() if run_start is not None and run_start < rs else 0.0
    if deficit <= 0 and shift <= 0:
        return progress
    return replace(progress, run_seconds=progress.run_seconds - deficit - shift,
                   running_since=rs - timedelta(seconds=shift))


def capped_usage(req: JobRequirements, progress: Progress, now: datetime, used: Mapping[str, Any],
                 cap_watts: float | None) -> tuple[float, float, float]:
    """A carbon-aware job's IT energy so far (kWh), the run time it accounts for, and the
    wall time that run took at its caps (for embodied carbon: the GPUs are held that long).

    Each stretch of run counts at the draw of the cap it ran under: work (run time at
    maxWatts, as progress counts it) done at a cap of level ``lv`` took ``work / lv.speed``
    wall seconds at ``lv.power × req.watts`` — ``req.watts × lv.power / lv.speed`` joules per
    second of work. Status cannot say which cap each closed segment ran under, so the energy
    accrues: ``used`` (the last status's usage) holds the energy and ``countedRunSeconds``,
    the work it covers; the work since then ran at ``cap_watts`` (the open segment's cap — a
    change of cap rebases the segment and writes status, so one stretch has one cap).
    Work below ``countedRunSeconds`` is a run closed a moment before the last status's
    ``now`` (the Job's completionTime and a stall's heartbeat are whole seconds): that
    sliver was counted at this same cap, and is taken back at it. ``progress`` is in
    status's terms (the open segment in wall time). ``wallSeconds`` accrues the same way, at
    ``work / lv.speed`` (a status without it: the work counted so far taken as uncapped).
    Returns (energyKwh, countedRunSeconds, wallSeconds)."""
    lv = req.cap.level(cap_watts) if req.cap is not None else None
    speed = lv.speed if lv is not None and lv.speed > 0 else 1.0
    rate = req.watts * (lv.power / speed if lv is not None else 1.0)            # J per second of work
    open_s = (now - progress.running_since).total_seconds() if progress.running_since else 0.0
    work = progress.run_seconds + max(0.0, open_s) * min(1.0, speed)
    counted = used.get("countedRunSeconds")
    before_kwh = f.number(used.get("energyKwh"), 0.0, minimum=0.0)
    if not isinstance(counted, (int, float)) or isinstance(counted, bool) or counted < 0 or work <= 0:
        return work * rate / 3.6e6, work, work / speed      # nothing counted yet (or no work): all of it at this cap
    before_wall = f.number(used.get("wallSeconds"), float(counted), minimum=0.0)
    return (max(0.0, before_kwh + (work - counted) * rate / 3.6e6), work,
            max(work, before_wall + (work - counted) / speed))


def persist_capped(req: JobRequirements, before: Progress, view: Progress, outcome: "Outcome", speed: float,
                   now: datetime) -> "Outcome":
    """``decide()``'s answer on ``capped_view(before, …)`` in the terms status keeps: a segment
    still open stays as it was (counted in wall time from its own start; the controller
    rebases it when its cap changes, ``Progress.rebase``); one that ``decide()`` closed
    (paused, finished, stalled, vanished) counts at ``speed`` up to where it closed —
    ``before.rebase(end, speed).closed(end)``."""
    if view is before:
        return outcome
    after = outcome.progress
    if after.running_since == view.running_since:
        kept = replace(after, running_since=before.running_since,
                       run_seconds=after.run_seconds + before.run_seconds - view.run_seconds)
        return replace(outcome, progress=kept)
    # wall time of the closed segment: from its own start (not the run's) to where decide() closed it
    ahead = (before.running_since - view.running_since).total_seconds()
    wall = max(0.0, after.run_seconds - view.run_seconds - ahead)
    prog = replace(after, run_seconds=min(MAX_RUN_SECONDS, before.run_seconds + wall * min(1.0, max(0.0, speed))))
    return replace(outcome, progress=prog, remaining=remaining_work(req, prog, now))


def capped_segment(before: Progress, outcome: "Outcome", ran: float | None, run_start: datetime | None,
                   want: float | None, speed: float, at: datetime) -> tuple["Outcome", datetime | None]:
    """The cap to publish now (``want``: ``PlanBoard.cap_for``) against the one the open run
    segment ran under (``ran``), on ``persist_capped``'s answer: when the same run goes on
    under another cap, its segment is rebased at ``at`` (``Progress.rebase``: counted at
    ``speed`` up to then; a new segment opens). Returns the outcome and when the run began
    (minRunDuration counts from there): the run's own when it goes on, else the outcome's
    (a run — or, after a stall, its count — begins now). The controller and the simulator's
    replay both call it."""
    prog = outcome.progress
    if before.running_since is not None and prog.running_since == before.running_since:
        if want != ran:
            outcome = replace(outcome, progress=prog.rebase(at, speed))
        return outcome, run_start or before.running_since
    return outcome, prog.running_since


def owned_by(job: Mapping[str, Any], req: JobRequirements) -> bool:
    refs = (job.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("kind") == "TrainingJob" and r.get("name") == req.name
               and (not req.uid or not r.get("uid") or r.get("uid") == req.uid) for r in refs)


# ---------------------------------------------------------------- deciding

@dataclass(frozen=True)
class Outcome:
    """What to do now and what to record."""

    action: str        # "create" | "start" | "resume" | "pause" | "none"
    phase: str         # Pending | Waiting | Running | Paused | Succeeded | Failed
    reason: str        # CamelCase, also the Event reason
    message: str
    progress: Progress
    remaining: timedelta
    latest_start: datetime
    #: what was done on the way, said in the Event and lastDecision before ``message`` (the
    #: Ready condition carries ``message`` alone, so the next reconcile finds it unchanged)
    done: str = ""

    @property
    def said(self) -> str:
        return f"{self.done}; {self.message}" if self.done else self.message

    @property
    def changes_job(self) -> bool:
        return self.action in ("create", "start", "resume", "pause")


def remaining_work(req: JobRequirements, progress: Progress, now: datetime) -> timedelta:
    return max(timedelta(0), req.duration - timedelta(seconds=progress.total(now)))


def latest_start(req: JobRequirements, progress: Progress, now: datetime, defaults: Defaults) -> datetime:
    return req.deadline - defaults.safety_margin - remaining_work(req, progress, now)


def in_windows(now: datetime, windows: Sequence[tuple[datetime, datetime]] | None) -> bool:
    return bool(windows) and any(s <= now < e for s, e in windows)


def decide(req: JobRequirements, progress: Progress, job: JobObservation,
           windows: Sequence[tuple[datetime, datetime]] | None, now: datetime,
           defaults: Defaults, *, plan_reason: str | None = None) -> Outcome:
    """Act now? A pure function of (requirements, progress, the Job, the plan, now).

    ``windows``: the planned run windows (absolute), or None when no forecast could be
    had — then the job waits until its latest safe start and runs regardless (fail open).
    """
    running = job.exists and not job.suspended
    # un-suspended, but no pod runs (Pending on a full cluster, being scheduled, evicted, a
    # failed pod not yet replaced): not run time. What this run ran so far is kept — counted,
    # as for a vanished Job, to one step past the heartbeat of a pod seen running, which is
    # within one reconcile of the stall — and it is counted afresh once a pod runs again.
    # A finished Job (ready 0 too) is counted to its completionTime below instead.
    stalled = running and job.pods_running is False and not (job.succeeded or job.failed)
    if stalled and progress.running_since and progress.running_since < now:
        if progress.seen_running is not None:
            progress = progress.closed(min(now, progress.seen_running + defaults.step))
        progress = replace(progress, running_since=now, seen_running=None)
    remaining = remaining_work(req, progress, now)
    latest = latest_start(req, progress, now, defaults)

    def out(action: str, phase: str, reason: str, message: str, prog: Progress = progress) -> Outcome:
        return Outcome(action, phase, reason, message, prog, remaining_work(req, prog, now), latest)

    if job.exists and (job.succeeded or job.failed):
        # run time from the real Job: up to when it finished, not when the operator noticed
        stopped = progress.closed(min(now, job.finished_at) if job.finished_at else now)
        if job.succeeded:
            return out("none", "Succeeded", "JobSucceeded", f"Job {job_name(req.name)} completed", stopped)
        return out("none", "Failed", "JobFailed", f"Job {job_name(req.name)} failed: {job.failure_message}".rstrip(": "), stopped)
    if not job.exists:
        # Pending until a plan exists; a recreated Job keeps the progress made so far, and
        # a run whose Job vanished (deleted by someone else) is counted only until one step
        # after the operator last saw it running — also when the operator was down in
        # between (else hours without a Job would count as run time and make the job late).
        # The new Job is created suspended, so time without a Job is never run time.
        seen = progress.seen_running or progress.running_since or now
        stopped = progress.closed(min(now, seen + defaults.step))
        phase = "Pending" if windows is None else ("Paused" if stopped.run_seconds > 0 else "Waiting")
        return out("create", phase, "Created", f"creating Job {job_name(req.name)} suspended", stopped)

    # Should the job be running now?
    current_run = (now - progress.running_since).total_seconds() if running and progress.running_since else 0.0
    if running and not req.interruptible:
        run, reason, why = True, "Running", "a running non-interruptible job is never stopped"
    elif running and remaining <= timedelta(0):
        run, reason, why = True, "RunningPastEstimate", "estimated duration reached; letting the Job finish"
    elif running and not stalled and current_run < req.min_run.total_seconds():
        run, reason, why = True, "MinRunDuration", f"run continues until minRunDuration ({req.min_run}) is reached"
    elif plan_reason == "Unplaceable" and not running:
        # more GPUs than the capacity: starting it would only leave pods Pending for ever
        run, reason, why = False, "Unplaceable", "needs more GPUs than the capacity; not started"
    elif now >= latest and plan_reason != "DeadlineAtRisk":
        # (at risk: the plan is the job's earliest room within the capacity, past its deadline;
        # starting it at its latest start anyway would take GPUs promised to other jobs)
        run, reason, why = True, "DeadlineForced", f"latest safe start {format_time(latest)} reached"
    elif windows is None:
        run, reason, why = False, "ForecastUnavailable", f"no forecast; will start by the latest safe start {format_time(latest)}"
    elif in_windows(now, windows):
        run, reason, why = True, plan_reason or "Planned", "inside a planned low-carbon window"
    elif running and any(now < s < now + defaults.step for s, _ in windows):
        # the next window starts in less than one slot: a pause that short only thrashes the pods
        run, reason, why = True, plan_reason or "Planned", "next planned window starts within one slot"
    else:
        nxt = min((s for s, _ in windows if s > now), default=None)
        when = format_time(nxt) if nxt else format_time(latest)
        run, reason, why = False, "Planned", f"waiting for the planned window at {when}"

    if run and not running:
        first = progress.runs == 0
        # no pod runs yet: the heartbeat starts once one does (see `stalled`)
        prog = replace(progress, running_since=now, runs=progress.runs + 1, seen_running=None)
        return out("start" if first else "resume", "Running", reason,
                   f"{'starting' if first else 'resuming'}: {why}", prog)
    if not run and running:
        prog = progress.closed(now)
        return out("pause", "Paused", reason, f"pausing after {timedelta(seconds=round(current_run))}: {why}", prog)
    if run:
        # a heartbeat in status at most every step while a pod runs: what a vanished Job's or a
        # stalled run is counted to
        stale = running and not stalled and (progress.seen_running is None
                                             or now - progress.seen_running >= defaults.step)
        if stalled:
            why += "; no pod of the Job runs yet (not counted as run time)"
        return out("none", "Running", reason, why, replace(progress, seen_running=now) if stale else progress)
    phase = "Paused" if progress.run_seconds > 0 else "Waiting"
    return out("none", phase, reason, why)


def after_create(req: JobRequirements, progress: Progress, view: Progress, created: Outcome,
                 windows: Sequence[tuple[datetime, datetime]] | None, plan_reason: str | None, speed: float,
                 now: datetime, defaults: Defaults) -> Outcome:
    """The Job was just created (suspended): what the next reconcile would decide, said now.
    When that is to wait, the status and the one Event say both (action ``create``, the plan's
    reason, the wait's message; the creation in ``done``), so the Job's watch event that
    follows changes nothing — else every new
    TrainingJob cost two status writes and two Events (measured at 5,000 on the real control
    plane: 10,000 PATCHes, half of them in what should have been a quiet window)."""
    then = decide(req, view, JobObservation(exists=True, suspended=True), windows, now, defaults,
                  plan_reason=plan_reason)
    if then.action != "none" or then.reason != "Planned":
        # a start follows at once (the Job's watch event wakes it); a wait without a plan
        # (ForecastUnavailable) or that cannot be placed keeps its own Event and reason
        return created
    then = persist_capped(req, progress, view, then, speed, now)
    return replace(then, action="create", done=created.message)


def next_wakeup(req: JobRequirements, outcome: Outcome, windows: Sequence[tuple[datetime, datetime]] | None,
                now: datetime, defaults: Defaults, *, retry: timedelta = timedelta(minutes=1)) -> datetime | None:
    """The next moment at which ``decide`` can answer differently without anything being
    observed in between: a planned window opens or closes, the latest safe start, the end of
    minRunDuration, the estimate running out, the next heartbeat of a running job; without a
    forecast, a retry. None: nothing time-driven (final, or waiting for an event: a Job that
    is being created, a pod that is to start)."""
    if outcome.phase in ("Succeeded", "Failed"):
        return None
    prog = outcome.progress
    times = [outcome.latest_start]
    for s, e in windows or ():
        times += [s, e]
    if prog.running_since is not None:
        times.append(prog.running_since + req.min_run)
        times.append(now + outcome.remaining)
        if prog.seen_running is not None:
            times.append(prog.seen_running + defaults.step)
    if windows is None:
        times.append(now + retry)
    future = [t for t in times if t > now]
    return min(future) if future else None
