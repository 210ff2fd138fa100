"""What handlers share (kopf's memo): settings, the API wrapper, the plan board, the clock."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

from greenml.controllers.loop import Loop, Store
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
    node_regions: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    store: Store = field(default_factory=Store)
    loop: Loop = None            # type: ignore[assignment]   (made in __post_init__ on the context's clock)

    def __post_init__(self) -> None:
        if self.loop is None:
            self.loop = Loop(lambda: self.clock())

    def cluster_zone(self) -> str:
        """The grid zone holding most GPUs, from nodes' region labels through `zone_map`;
        the configured default zone when no node maps to a zone."""
        weights: dict[str, int] = {}
        for node, region in self.node_regions.items():
            zone = self.settings.zone_map.get(region)
            if zone:
                weights[zone] = weights.get(zone, 0) + max(1, self.node_gpus.get(node, 0))
        if not weights:
            return self.settings.default_zone
        return max(sorted(weights), key=lambda z: weights[z])

    def defaults_now(self) -> Defaults:
        """Defaults with the zone the cluster's nodes say (specs naming a zone win)."""
        zone = self.cluster_zone()
        return self.defaults if zone == self.defaults.zone else replace(self.defaults, zone=zone)

    def capacity(self) -> float | None:
        """Configured GPU capacity, else the sum of nodes' allocatable GPUs (None: unknown)."""
        if self.settings.gpu_capacity is not None:
            return float(self.settings.gpu_capacity)
        total = sum(self.node_gpus.values())
        return float(total) if total > 0 else None
