"""InferenceBudget: keep a serving workload inside a carbon/energy budget by choosing variants."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from greenml.api.common import ApiModel, Condition, Decision, Duration, StatusModel


class TargetRef(ApiModel):
    api_version: str = Field(default="apps/v1", max_length=253)
    kind: Literal["Deployment"] = "Deployment"
    name: str = Field(min_length=1, max_length=253)


class Budget(ApiModel):
    carbon_grams: float | None = Field(default=None, gt=0, description="gCO2e allowed per period.")
    energy_kwh: float | None = Field(default=None, gt=0, alias="energyKWh", description="kWh allowed per period.")
    period: Literal["hour", "day", "week", "month"] = "day"
    time_zone: str = Field(default="UTC", max_length=64, description="IANA zone the periods are aligned to.")

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {v!r}") from None
        return v

    @model_validator(mode="after")
    def _some_budget(self) -> "Budget":
        if self.carbon_grams is None and self.energy_kwh is None:
            raise ValueError("budget needs carbonGrams and/or energyKWh")
        return self


Budget.model_config["json_schema_extra"] = {
    "x-kubernetes-validations": [
        {"rule": "has(self.carbonGrams) || has(self.energyKWh)",
         "message": "budget needs carbonGrams and/or energyKWh"},
    ]
}


class PowerModel(ApiModel):
    watts_per_replica: float | None = Field(default=None, gt=0, description="Average draw of one replica at full load (W).")
    idle_watts_per_replica: float | None = Field(default=None, ge=0, description="Draw of an idle replica (W). Default: 30% of wattsPerReplica.")
    joules_per_request: float | None = Field(default=None, gt=0, description="Marginal energy per request (J).")

    @model_validator(mode="after")
    def _some_power(self) -> "PowerModel":
        if self.watts_per_replica is None and self.joules_per_request is None:
            raise ValueError("power needs wattsPerReplica and/or joulesPerRequest")
        if (self.idle_watts_per_replica is not None and self.watts_per_replica is not None
                and self.idle_watts_per_replica > self.watts_per_replica):
            raise ValueError("power.idleWattsPerReplica must not exceed power.wattsPerReplica")
        return self


PowerModel.model_config["json_schema_extra"] = {
    "x-kubernetes-validations": [
        {"rule": "has(self.wattsPerReplica) || has(self.joulesPerRequest)",
         "message": "power needs wattsPerReplica and/or joulesPerRequest"},
        {"rule": "!has(self.idleWattsPerReplica) || !has(self.wattsPerReplica) || "
                 "self.idleWattsPerReplica <= self.wattsPerReplica",
         "message": "power.idleWattsPerReplica must not exceed power.wattsPerReplica"},
    ]
}


class Variant(ApiModel):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    quality: float = Field(ge=0, le=1, description="Quality score in [0, 1] (e.g. accuracy relative to the full model).")
    power: PowerModel
    capacity_rps: float = Field(gt=0, description="Requests per second one replica serves.")
    patch: dict[str, Any] = Field(min_length=1, description="Strategic fields applied to the target for this variant (server-side apply).")
    power_cap_watts: float | None = Field(
        default=None, gt=0, le=5000,
        description="GPU power cap per GPU (W) for this variant's pods, applied by the node agent: a variant may be "
                    "the same model on a capped GPU (its power and capacityRps then describe the capped GPU).")


class Policy(ApiModel):
    quality_floor: float = Field(default=0.0, ge=0, le=1)
    # a Deployment's replicas are int32
    min_replicas: int = Field(default=1, ge=0, le=2**31 - 1)
    max_replicas: int = Field(default=10, ge=1, le=2**31 - 1)
    tier: Literal["premium", "eco"] = "premium"
    min_dwell: Duration = Field(default="15m", description="Minimum time between variant switches.")
    on_budget_breach: Literal["keepFloor", "throttle"] = "keepFloor"
    on_signal_loss: Literal["failClosed", "failCheap"] = "failClosed"

    @model_validator(mode="after")
    def _bounds(self) -> "Policy":
        if self.min_replicas > self.max_replicas:
            raise ValueError("policy.minReplicas must not exceed policy.maxReplicas")
        return self


Policy.model_config["json_schema_extra"] = {
    "x-kubernetes-validations": [
        {"rule": "self.minReplicas <= self.maxReplicas",
         "message": "policy.minReplicas must not exceed policy.maxReplicas"},
    ]
}


class InferenceBudgetSpec(ApiModel):
    target_ref: TargetRef
    budget: Budget
    variants: list[Variant] = Field(min_length=1, max_length=16)
    policy: Policy = Field(default_factory=Policy)
    zone: str | None = Field(default=None, max_length=64)
    load_query: str | None = Field(default=None, max_length=4096, description="PromQL returning requests/s for the target.")

    @model_validator(mode="after")
    def _unique_names(self) -> "InferenceBudgetSpec":
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        return self


InferenceBudgetSpec.model_config["json_schema_extra"] = {
    "x-kubernetes-validations": [
        {"rule": "self.variants.all(v, self.variants.exists_one(w, w.name == v.name))",
         "message": "variant names must be unique"},
        {"rule": "!has(self.policy) || !has(self.policy.qualityFloor) || "
                 "self.variants.exists(v, v.quality >= self.policy.qualityFloor)",
         "message": "no variant reaches policy.qualityFloor"},
    ]
}


class Spend(StatusModel):
    accounted_until: datetime | None = Field(default=None, description="Spend is counted up to this time.")
    source: str | None = Field(default=None, description="What measured the energy (prometheus, power-model).")
    period_start: datetime | None = None
    period_end: datetime | None = None
    grams: float = 0.0
    energy_kwh: float = 0.0
    remaining_grams: float | None = None
    remaining_kwh: float | None = None
    projected_grams: float | None = None
    projected_kwh: float | None = None


class InferenceBudgetStatus(StatusModel):
    phase: Literal["Pending", "Active", "Degraded", "Failed"] | None = None
    active_variant: str | None = None
    replicas: int | None = None
    owner_replicas: int | None = Field(
        default=None, ge=0,
        description="Replicas the workload's owner asked for (the Deployment's before greenml's, or its HPA's desired "
                    "or own maxReplicas): without a loadQuery the load is assumed to be these at full capacity.")
    owner_variant: str | None = Field(default=None, description="The variant ownerReplicas are replicas of.")
    owner_max_replicas: int | None = Field(
        default=None, ge=1, description="With an HPA: its maxReplicas as its owner set it, before greenml's cap.")
    applied_max_replicas: int | None = Field(
        default=None, ge=0, description="With an HPA: the maxReplicas (the cap) greenml last applied to it.")
    switched_at: datetime | None = None
    spend: Spend | None = None
    carbon_price: float | None = Field(default=None, description="λ: quality units given up per gram (the pacing price).")
    conditions: list[Condition] = Field(default_factory=list)
    last_decision: Decision | None = None
    observed_generation: int | None = None


class InferenceBudget(ApiModel):
    model_config = ApiModel.model_config | {"extra": "ignore"}
    api_version: Literal["greenml.io/v1alpha1"] = "greenml.io/v1alpha1"
    kind: Literal["InferenceBudget"] = "InferenceBudget"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: InferenceBudgetSpec
    status: InferenceBudgetStatus | None = None
