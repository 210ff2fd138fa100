"""TrainingJob: a batch/v1 Job template run in the lowest-carbon window before a deadline."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from greenml.api.common import ApiModel, Condition, Decision, Duration, StatusModel


class Schedule(ApiModel):
    deadline: datetime | None = Field(default=None, description="Absolute time by which the job must finish (RFC 3339).")
    max_delay: Duration | None = Field(default=None, description="Deadline relative to creation: creation + maxDelay + estimatedDuration.")
    estimated_duration: Duration = Field(description="How long the job runs when it runs uninterrupted.")
    interruptible: bool = Field(default=False, description="May be suspended and resumed across windows. Suspending deletes pods: the job must checkpoint.")
    min_run_duration: Duration | None = Field(default=None, description="Interruptible jobs: shortest run between pauses (no thrashing). Default: operator setting.")

    @model_validator(mode="after")
    def _one_deadline(self) -> "Schedule":
        if (self.deadline is None) == (self.max_delay is None):
            raise ValueError("exactly one of schedule.deadline or schedule.maxDelay must be set")
        return self


Schedule.model_config["json_schema_extra"] = {
    "x-kubernetes-validations": [
        {"rule": "has(self.deadline) != has(self.maxDelay)",
         "message": "exactly one of schedule.deadline or schedule.maxDelay must be set"},
    ]
}


class CapCurvePoint(ApiModel):
    watts: float = Field(gt=0, le=5000, description="A power cap per GPU (W).")
    time_factor: float = Field(ge=1, le=100, description="Run time at this cap / run time uncapped (>= 1).")
    power_factor: float = Field(gt=0, le=1.5, description="Average draw at this cap / average draw uncapped.")


class CarbonAwareCap(ApiModel):
    min_watts: float = Field(gt=0, le=5000, description="Lowest cap per GPU the planner may choose (W).")
    max_watts: float = Field(gt=0, le=5000, description="Highest cap per GPU (W); at or above the GPU's limit: uncapped.")

    @model_validator(mode="after")
    def _range(self) -> "CarbonAwareCap":
        if self.min_watts > self.max_watts:
            raise ValueError("cap.carbonAware.minWatts must not exceed maxWatts")
        return self


CarbonAwareCap.model_config["json_schema_extra"] = {
    "x-kubernetes-validations": [
        {"rule": "self.minWatts <= self.maxWatts", "message": "cap.carbonAware.minWatts must not exceed maxWatts"},
    ]
}


class PowerCap(ApiModel):
    """GPU power cap, applied by the node agent (``greenml agent``). Absent or ``{}``: none."""

    watts: float | None = Field(default=None, gt=0, le=5000, description="Static cap per GPU (W) for the whole run.")
    carbon_aware: CarbonAwareCap | None = Field(
        default=None, description="The planner picks a cap per window in [minWatts, maxWatts] with the windows, "
                                  "at least carbon before the deadline (the slowdown counts against it).")
    curve: list[CapCurvePoint] | None = Field(
        default=None, min_length=2, max_length=32,
        description="Run time and draw against the cap for this job (default: from gpuModel, Zeus NSDI'23 sweeps). "
                    "The point with the most watts is the GPU uncapped.")

    @model_validator(mode="after")
    def _one_kind(self) -> "PowerCap":
        if self.watts is not None and self.carbon_aware is not None:
            raise ValueError("cap: set watts (static) or carbonAware, not both")
        return self


PowerCap.model_config["json_schema_extra"] = {
    "x-kubernetes-validations": [
        {"rule": "!(has(self.watts) && has(self.carbonAware))", "message": "cap: set watts (static) or carbonAware, not both"},
    ]
}


class Power(ApiModel):
    gpus: int | None = Field(default=None, ge=0, le=4096, description="GPUs the job uses. Default: the template's nvidia.com/gpu limits.")
    gpu_model: str | None = Field(default=None, max_length=64, description="GPU model for the default watts table, e.g. A100, H100.")
    watts_per_gpu: float | None = Field(default=None, gt=0, le=5000, description="Average draw per GPU while running. Default: from gpuModel.")
    query: str | None = Field(default=None, max_length=4096, description="PromQL returning this job's power in watts; overrides the model when it answers.")
    cap: PowerCap | None = Field(default=None, description="GPU power cap: none (default), static watts, or carbon-aware.")


class Carbon(ApiModel):
    zone: str | None = Field(default=None, max_length=64, description="Grid zone (e.g. DE, GB, US-CAL-CISO). Default: operator setting.")
    max_intensity: float | None = Field(default=None, ge=0, description="Run only when intensity (gCO2e/kWh) is below this, unless the deadline forces.")
    budget_grams: float | None = Field(default=None, gt=0, description="Carbon budget for the whole run (gCO2e); exceeding it is reported.")


GPU_RESOURCE = "nvidia.com/gpu"


class TrainingJobSpec(ApiModel):
    template: dict[str, Any] = Field(description="A batch/v1 JobTemplateSpec; the operator creates the Job from it, suspended.")
    schedule: Schedule
    power: Power | None = None
    carbon: Carbon | None = None

    @field_validator("template")
    @classmethod
    def _gpu_counts(cls, template: dict[str, Any]) -> dict[str, Any]:
        """A negative nvidia.com/gpu limit: the schema cannot see into the free-form
        template, and the Job would only be rejected when the operator creates it. Checked
        here, so lint, estimate, simulate and the operator's admission
        (services.trainingjob.resolve) reject it with this one message."""
        pod = ((template.get("spec") or {}).get("template") or {}).get("spec") if isinstance(template.get("spec"), dict) else None
        containers = pod.get("containers") if isinstance(pod, dict) else None
        for i, c in enumerate(containers if isinstance(containers, list) else []):
            for part in ("limits", "requests"):
                raw = ((c.get("resources") or {}).get(part) or {}).get(GPU_RESOURCE) if isinstance(c, dict) else None
                try:
                    count = int(raw) if raw is not None and not isinstance(raw, bool) else 0
                except (TypeError, ValueError):
                    continue   # not an integer: services.trainingjob.template_gpus reports it
                if count < 0:
                    raise PydanticCustomError(
                        "gpu_count", "container '{name}' (template.spec.template.spec.containers[{i}]): "
                        "resources.{part} {resource} must be a whole number >= 0, got {raw}",
                        {"i": i, "name": c.get("name") or "", "part": part, "resource": GPU_RESOURCE, "raw": raw})
        return template


class Window(StatusModel):
    start: datetime
    end: datetime
    cap_watts: float | None = Field(default=None, description="GPU power cap per GPU planned for this window (W); "
                                                                "absent: uncapped (spec.power.cap).")


class PlanStatus(StatusModel):
    windows: list[Window] = Field(default_factory=list)
    planned_start: datetime | None = None
    latest_start: datetime | None = None
    expected_grams: float | None = None
    run_now_grams: float | None = None
    savings_percent: float | None = None
    forecast_source: str | None = None
    computed_at: datetime | None = None


class Progress(StatusModel):
    run_seconds: float = 0.0
    running_since: datetime | None = None
    runs: int = 0
    last_seen_running: datetime | None = Field(
        default=None, description="When the operator last saw the current run's Job running (refreshed every step); "
                                  "a Job that vanishes is counted as run time only until one step after this.")


class Usage(StatusModel):
    energy_kwh: float = 0.0
    grams: float = 0.0
    source: str | None = None
    counted_run_seconds: float | None = Field(
        default=None, description="Carbon-aware power caps: the run time (at maxWatts, as progress counts it) "
                                  "that energyKwh accounts for; the energy accrues at the draw of each cap.")
    wall_seconds: float | None = Field(
        default=None, description="Carbon-aware power caps: the wall-clock time that run took at its caps "
                                  "(a capped stretch is slower); embodied carbon counts the GPUs held that long.")


Phase = Literal["Pending", "Waiting", "Running", "Paused", "Succeeded", "Failed"]


class TrainingJobStatus(StatusModel):
    phase: Phase | None = None
    job_name: str | None = None
    zone: str | None = Field(default=None, description="The grid zone planned for (spec, node regions or default).")
    deadline: datetime | None = None
    plan: PlanStatus | None = None
    progress: Progress | None = None
    usage: Usage | None = None
    conditions: list[Condition] = Field(default_factory=list)
    last_decision: Decision | None = None
    observed_generation: int | None = None


class TrainingJob(ApiModel):
    model_config = ApiModel.model_config | {"extra": "ignore"}
    api_version: Literal["greenml.io/v1alpha1"] = "greenml.io/v1alpha1"
    kind: Literal["TrainingJob"] = "TrainingJob"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None
