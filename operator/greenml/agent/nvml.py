"""NVML behind a small interface: the few pynvml calls the agent makes, with NVML's errors
turned into reasons. ``Nvml(module)`` takes the pynvml module (nvidia-ml-py, the ``agent``
extra) or anything with the same functions and ``NVMLError`` (the tests' fake).

Units: NVML speaks milliwatts; this interface speaks watts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# NVML return codes (nvml.h), as pynvml exposes them
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_ARGUMENT = 2

REASONS = {NVML_ERROR_NOT_SUPPORTED: "NotSupported", NVML_ERROR_NO_PERMISSION: "NoPermission",
           NVML_ERROR_GPU_IS_LOST: "GpuLost", NVML_ERROR_ARGUMENT: "InvalidArgument"}


class DeviceError(Exception):
    """An NVML call failed; ``reason`` is one word (NotSupported, NoPermission, GpuLost, …)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Device:
    """What the agent knows of one GPU."""

    index: int
    uuid: str
    name: str
    min_w: float | None          # power limit constraints (None: not readable / not supported)
    max_w: float | None
    default_w: float | None
    limit_w: float | None        # the limit in force now
    mig: bool = False            # MIG mode on: a pod holds an instance, not the GPU


def load_pynvml() -> Any:
    """The real pynvml module (nvidia-ml-py), or a clear error when the extra is missing."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ModuleNotFoundError:
        raise SystemExit("greenml agent needs nvidia-ml-py: pip install 'greenml-operator[agent]'") from None
    return pynvml


class Nvml:
    def __init__(self, module: Any) -> None:
        self.m = module
        self._handles: dict[str, Any] = {}

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except self.m.NVMLError as exc:
            code = getattr(exc, "value", None)
            raise DeviceError(REASONS.get(code, f"NvmlError{code}" if code is not None else "NvmlError"),
                              f"{what}: {exc}") from None

    def init(self) -> None:
        self._call("nvmlInit", self.m.nvmlInit)

    def shutdown(self) -> None:
        try:
            self.m.nvmlShutdown()
        except self.m.NVMLError:
            pass

    def _text(self, v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    def _optional_w(self, what: str, fn, handle) -> Any:
        try:
            return self._call(what, fn, handle)
        except DeviceError as exc:
            if exc.reason in ("NotSupported", "NoPermission"):
                return None
            raise

    def devices(self) -> list[Device]:
        out = []
        for i in range(self._call("nvmlDeviceGetCount", self.m.nvmlDeviceGetCount)):
            h = self._call("nvmlDeviceGetHandleByIndex", self.m.nvmlDeviceGetHandleByIndex, i)
            uuid = self._text(self._call("nvmlDeviceGetUUID", self.m.nvmlDeviceGetUUID, h))
            self._handles[uuid] = h
            cons = self._optional_w("constraints", self.m.nvmlDeviceGetPowerManagementLimitConstraints, h)
            default = self._optional_w("default limit", self.m.nvmlDeviceGetPowerManagementDefaultLimit, h)
            limit = self._optional_w("limit", self.m.nvmlDeviceGetPowerManagementLimit, h)
            mig = self._optional_w("MIG mode", self.m.nvmlDeviceGetMigMode, h)
            out.append(Device(
                index=i, uuid=uuid, name=self._text(self._call("nvmlDeviceGetName", self.m.nvmlDeviceGetName, h)),
                min_w=cons[0] / 1000.0 if cons else None, max_w=cons[1] / 1000.0 if cons else None,
                default_w=default / 1000.0 if default is not None else None,
                limit_w=limit / 1000.0 if limit is not None else None,
                mig=bool(mig and mig[0])))
        return out

    def _handle(self, uuid: str) -> Any:
        handle = self._handles.get(uuid)
        if handle is None:
            handle = self._call("nvmlDeviceGetHandleByUUID", self.m.nvmlDeviceGetHandleByUUID, uuid)
            self._handles[uuid] = handle
        return handle

    def power_w(self, uuid: str) -> float:
        """The board's power draw now (W)."""
        return self._call("nvmlDeviceGetPowerUsage", self.m.nvmlDeviceGetPowerUsage, self._handle(uuid)) / 1000.0

    def set_limit(self, uuid: str, watts: float) -> None:
        self._call("nvmlDeviceSetPowerManagementLimit", self.m.nvmlDeviceSetPowerManagementLimit,
                   self._handle(uuid), int(round(watts * 1000)))


def self_check(nvml: Nvml, index: int = 0, watts: float | None = None, *,
               load: Callable[[int, float], str] | None = None, load_seconds: float = 0.0,
               sample_s: float = 0.5) -> dict[str, Any]:
    """The real-device check (``greenml agent --self-check``, ``e2e/gpu/check_power_cap.py``):
    read one GPU's constraints, set a cap (``watts``, default halfway between the minimum and
    the default limit), read it back; with ``load`` (``load(index, seconds)`` keeps the GPU
    busy and returns what it ran) sample the board power every ``sample_s`` while it runs;
    then restore the default — always, even when the load fails — and read that back.
    Returns what happened; ``ok`` only when the cap and the restore both read back as set and,
    with a load, the mean draw under load stayed within the cap (NVML enforces the limit as an
    average: single samples may overshoot briefly, so their maximum is reported, not judged)."""
    out: dict[str, Any] = {"gpu": index, "ok": False, "steps": []}
    nvml.init()
    try:
        devices = nvml.devices()
        if not 0 <= index < len(devices):
            out["error"] = f"no GPU {index} (found {len(devices)})"
            return out
        d = devices[index]
        out.update(uuid=d.uuid, name=d.name, min_w=d.min_w, max_w=d.max_w, default_w=d.default_w,
                   limit_before_w=d.limit_w, mig=d.mig)
        if d.min_w is None or d.default_w is None:
            out["error"] = "power management not readable on this GPU (NotSupported/NoPermission)"
            return out
        target = watts if watts is not None else round((d.min_w + d.default_w) / 2)
        target = min(max(target, d.min_w), d.max_w if d.max_w is not None else target)

        def step(name: str, value: float) -> bool:
            try:
                nvml.set_limit(d.uuid, value)
                got = nvml.devices()[index].limit_w
                ok = got is not None and abs(got - value) < 0.5
                out["steps"].append({"step": name, "watts": value, "read_back_w": got, "ok": ok})
                return ok
            except DeviceError as exc:
                out["steps"].append({"step": name, "watts": value, "error": exc.reason, "message": str(exc)})
                return False

        try:
            if step("set", target) and load is not None and load_seconds > 0:
                out["load"] = _under_load(nvml, d.uuid, index, target, load, load_seconds, sample_s)
        finally:
            step("restore", d.default_w)
        out["ok"] = all(s.get("ok") for s in out["steps"]) and out.get("load", {}).get("within_cap", True)
        return out
    finally:
        nvml.shutdown()


def _under_load(nvml: Nvml, uuid: str, index: int, cap_w: float, load: Callable[[int, float], str],
                seconds: float, sample_s: float) -> dict[str, Any]:
    """Run ``load`` in a thread and sample the draw until it ends (see self_check)."""
    import threading
    import time

    got: dict[str, Any] = {}

    def work() -> None:
        try:
            got["tool"] = load(index, seconds)
        except Exception as exc:  # noqa: BLE001 — reported, never raised: the restore must follow
            got["error"] = f"{type(exc).__name__}: {exc}"

    samples: list[float] = []
    t = threading.Thread(target=work, name="gpu-load", daemon=True)
    t0 = time.monotonic()
    t.start()
    while t.is_alive() and time.monotonic() - t0 < seconds + 60:
        try:
            samples.append(nvml.power_w(uuid))
        except DeviceError as exc:
            got.setdefault("sample_error", exc.reason)
        t.join(sample_s)
    out: dict[str, Any] = {"seconds": round(time.monotonic() - t0, 1), "cap_w": cap_w, **got,
                           "samples": len(samples)}
    if "error" in got or not samples:
        out["within_cap"] = False
        out.setdefault("error", "no power sample under load")
        return out
    busy = samples[len(samples) // 5:] or samples       # the first fifth ramps up
    mean = sum(busy) / len(busy)
    out.update(mean_w=round(mean, 1), max_w=round(max(samples), 1), min_w=round(min(samples), 1),
               within_cap=mean <= cap_w * 1.02)
    return out
