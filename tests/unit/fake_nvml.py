"""A faithful fake of the pynvml functions greenml.agent.nvml uses (test helper, not shipped).

It raises the real ``pynvml.NVMLError`` (nvidia-ml-py, a test dependency) with NVML's real
codes, speaks milliwatts, refuses calls before nvmlInit (UNINITIALIZED), answers
INVALID_ARGUMENT for a limit outside the constraints (as the driver does), and can be told
per GPU to answer NO_PERMISSION / NOT_SUPPORTED / GPU_IS_LOST, or to be in MIG mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pynvml

NVMLError = pynvml.NVMLError


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA A100-SXM4-80GB"
    min_mw: int = 100_000
    max_mw: int = 400_000
    default_mw: int = 400_000
    limit_mw: int | None = None
    mig: bool = False
    set_error: int | None = None          # NVML code the set call answers (e.g. NO_PERMISSION)
    read_error: int | None = None         # NVML code the power reads answer (e.g. NOT_SUPPORTED)
    sets: list[int] = field(default_factory=list)
    busy: bool = False                    # under load: draws min(demand, limit), else idle
    demand_mw: int = 350_000
    idle_mw: int = 60_000

    def __post_init__(self) -> None:
        if self.limit_mw is None:
            self.limit_mw = self.default_mw


class FakeNvml:
    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.initialised = 0

    def _ready(self) -> None:
        if not self.initialised:
            raise NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle) -> FakeGpu:
        self._ready()
        if not isinstance(handle, FakeGpu):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle

    def nvmlInit(self) -> None:
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._ready()
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._ready()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        self._ready()
        if not 0 <= i < len(self.gpus):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[i]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        self._ready()
        for g in self.gpus:
            if g.uuid == uuid:
                return g
        raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, h) -> str:
        return self._gpu(h).uuid

    def nvmlDeviceGetName(self, h) -> str:
        return self._gpu(h).name

    def _read(self, g: FakeGpu):
        if g.read_error is not None:
            raise NVMLError(g.read_error)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h) -> list[int]:
        g = self._gpu(h)
        self._read(g)
        return [g.min_mw, g.max_mw]

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h) -> int:
        g = self._gpu(h)
        self._read(g)
        return g.default_mw

    def nvmlDeviceGetPowerManagementLimit(self, h) -> int:
        g = self._gpu(h)
        self._read(g)
        return g.limit_mw

    def nvmlDeviceGetMigMode(self, h) -> list[int]:
        g = self._gpu(h)
        return [int(g.mig), int(g.mig)]

    def nvmlDeviceSetPowerManagementLimit(self, h, limit_mw: int) -> None:
        g = self._gpu(h)
        if g.set_error is not None:
            raise NVMLError(g.set_error)
        if not isinstance(limit_mw, int) or not g.min_mw <= limit_mw <= g.max_mw:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        g.sets.append(limit_mw)
        g.limit_mw = limit_mw

    def nvmlDeviceGetPowerUsage(self, h) -> int:
        g = self._gpu(h)
        self._read(g)
        return min(g.demand_mw, g.limit_mw) if g.busy else g.idle_mw
