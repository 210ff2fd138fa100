"""What handlers share (kopf's memo): settings, the API wrapper, the plan board, the clock."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from greenml.kube import Kube
from greenml.services.board import PlanBoard
from greenml.services.trainingjob import Defaults
from greenml.settings import Settings


def utc_now() -> datetime:
    """The operator's one clock read: every decision below takes `now` as a parameter."""
    return datetime.now(timezone.utc)


@dataclass
class Context:
    settings: Settings
    kube: Kube
    defaults: Defaults
    board: PlanBoard
    clock: Callable[[], datetime] = utc_now
    node_gpus: dict[str, int] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def capacity(self) -> float | None:
        """Configured GPU capacity, else the sum of nodes' allocatable GPUs (None: unknown)."""
        if self.settings.gpu_capacity is not None:
            return float(self.settings.gpu_capacity)
        total = sum(self.node_gpus.values())
        return float(total) if total > 0 else None
