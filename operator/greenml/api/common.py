"""Shared API building blocks: base model, conditions, decisions, durations."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from greenml.timeutil import DURATION_PATTERN, parse_duration


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(ApiModel):
    # Statuses are written by the operator; tolerate fields from newer versions.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def _check_duration(v: str) -> str:
    parse_duration(v)
    return v


Duration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, json_schema_extra={"example": "1h30m"}),
    AfterValidator(_check_duration),
]


def duration_of(v: str | None) -> timedelta | None:
    return None if v is None else parse_duration(v)


class Condition(StatusModel):
    """Kubernetes API conventions: type/status/reason/message/lastTransitionTime/observedGeneration."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime
    observed_generation: int | None = Field(default=None, ge=0)


class Decision(StatusModel):
    """The last thing the operator decided, and why (also sent as an Event)."""

    time: datetime
    action: str
    reason: str
    message: str = ""
