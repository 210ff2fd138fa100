"""The agent's reconcile: which limit each GPU should have, applying it, and the reports.

``plan_limits`` is pure (pods, devices → the limit each device should have and why);
``Agent.reconcile`` applies it through ``nvml.Nvml`` and returns one report per pod that
asked for a cap; the command (``greenml agent``) writes those reports to the pods and
serves the metrics. A failure is a report, never an exception out of the loop: a job whose
GPU cannot be capped just runs uncapped.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

from greenml.agent.nvml import Device, DeviceError, Nvml

from greenml.planning.power import APPLIED_ANNOTATION, CAP_ANNOTATION

FINISHED_PHASES = ("Succeeded", "Failed")

# report states
APPLIED, CLAMPED, FAILED, SHARED, RESTORED = "Applied", "Clamped", "Failed", "Shared", "Restored"


@dataclass(frozen=True)
class PodView:
    """A pod of this node as the agent needs it."""

    namespace: str
    name: str
    uid: str
    running: bool
    cap: float | None                 # the cap asked for (None: none)
    cap_error: str | None             # an unreadable annotation
    devices: tuple[str, ...]          # GPU UUIDs / indices / MIG ids it holds
    applied: str | None = None        # the current greenml.io/power-cap-applied value

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def parse_cap(raw: Any) -> tuple[float | None, str | None]:
    """The annotation's value: watts per GPU (e.g. "200" or "200W"); (None, error) when bad."""
    if raw is None or raw == "":
        return None, None
    text = str(raw).strip().removesuffix("W").removesuffix("w").strip()
    try:
        v = float(text)
    except ValueError:
        return None, f"{CAP_ANNOTATION}={raw!r} is not a number of watts"
    if not math.isfinite(v) or v <= 0:
        return None, f"{CAP_ANNOTATION}={raw!r} must be a positive number of watts"
    return v, None


def pod_view(pod: Mapping[str, Any], devices: Sequence[str]) -> PodView:
    meta = pod.get("metadata") or {}
    ann = meta.get("annotations") or {}
    cap, err = parse_cap(ann.get(CAP_ANNOTATION))
    phase = (pod.get("status") or {}).get("phase")
    deleting = bool(meta.get("deletionTimestamp"))
    return PodView(meta.get("namespace") or "default", meta.get("name") or "", meta.get("uid") or "",
                   running=phase not in FINISHED_PHASES and not deleting, cap=cap, cap_error=err,
                   devices=tuple(devices), applied=ann.get(APPLIED_ANNOTATION))


@dataclass(frozen=True)
class Target:
    """The limit one device should have, and for whom."""

    uuid: str
    watts: float | None               # None: the default limit (restore)
    asked: float | None               # what the pods asked for (before clamping)
    pods: tuple[tuple[str, str], ...]
    note: str = ""                    # why it differs from what was asked


def resolve_device(ident: str, devices: Sequence[Device]) -> Device | str:
    """A device plugin ID (UUID, index, MIG id) → the Device, or why it cannot be capped."""
    if ident.startswith("MIG-"):
        return "a MIG instance: power limits apply to the whole GPU, shared with other instances"
    for d in devices:
        if d.uuid == ident or (ident.isdigit() and d.index == int(ident)):
            return d
    return f"device {ident!r} not found on this node"


def clamp(watts: float, d: Device) -> tuple[float, str]:
    """Never outside the device's own constraints."""
    if d.min_w is not None and watts < d.min_w:
        return d.min_w, f"raised to the device minimum {d.min_w:g} W"
    if d.max_w is not None and watts > d.max_w:
        return d.max_w, f"lowered to the device maximum {d.max_w:g} W"
    return watts, ""


def plan_limits(pods: Iterable[PodView], devices: Sequence[Device]) -> tuple[dict[str, Target], dict[tuple[str, str], list[str]]]:
    """Pure: for every device, the limit it should have (a cap, or None: the default), and
    the per-pod problems found on the way (MIG, unknown device, bad annotation).

    A device held by several running pods (time-slicing) is capped only when every one asks
    for a cap, at the highest of them (no pod is slowed below what it asked for)."""
    problems: dict[tuple[str, str], list[str]] = {}
    holders: dict[str, list[PodView]] = {}
    for p in pods:
        if not p.running:
            continue
        if p.cap_error:
            problems.setdefault(p.key, []).append(p.cap_error)
        for ident in p.devices:
            d = resolve_device(ident, devices)
            if isinstance(d, str):
                if p.cap is not None:
                    problems.setdefault(p.key, []).append(d)
                continue
            holders.setdefault(d.uuid, []).append(p)
    targets: dict[str, Target] = {}
    for d in devices:
        held = holders.get(d.uuid, [])
        keys = tuple(p.key for p in held)
        asks = [p.cap for p in held]
        if not held or any(a is None for a in asks):
            note = "shared with a pod that asks for no cap" if held and any(a is not None for a in asks) else ""
            targets[d.uuid] = Target(d.uuid, None, None, keys, note)
            continue
        asked = max(a for a in asks if a is not None)
        if d.mig:
            targets[d.uuid] = Target(d.uuid, None, asked, keys, "MIG mode is on: the GPU is shared by instances")
            continue
        watts, note = clamp(asked, d)
        targets[d.uuid] = Target(d.uuid, watts, asked, keys, note)
    return targets, problems


@dataclass
class DeviceState:
    limit_w: float | None
    capped: bool = False              # the agent set a cap on it (restore when no longer asked)


@dataclass
class Result:
    """One pass: per pod the report, per device the limit in force, and the failures."""

    reports: dict[tuple[str, str], str] = field(default_factory=dict)
    limits: dict[str, float | None] = field(default_factory=dict)
    caps: dict[tuple[str, str, str], float] = field(default_factory=dict)     # (ns, pod, gpu) → W
    failures: list[str] = field(default_factory=list)                          # reasons, one per failed call


def report_value(state: str, *, watts: float | None = None, asked: float | None = None,
                 gpus: Sequence[str] = (), reason: str = "", message: str = "", at: datetime | None = None) -> str:
    body: dict[str, Any] = {"state": state}
    if asked is not None:
        body["askedWatts"] = asked
    if watts is not None:
        body["watts"] = watts
    if gpus:
        body["gpus"] = list(gpus)
    if reason:
        body["reason"] = reason
    if message:
        body["message"] = message[:512]
    if at is not None:
        body["time"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


class Agent:
    """Applies ``plan_limits`` to the devices of this node through NVML."""

    def __init__(self, nvml: Nvml) -> None:
        self.nvml = nvml
        self.devices: list[Device] = []
        self.state: dict[str, DeviceState] = {}

    def start(self) -> list[str]:
        """Init NVML, read the devices, and restore every GPU's default limit (a cap left by a
        previous agent belongs to no pod the agent knows). Returns the failures' reasons."""
        self.nvml.init()
        self.devices = self.nvml.devices()
        failures = []
        for d in self.devices:
            self.state[d.uuid] = DeviceState(d.limit_w)
            if d.mig or d.default_w is None or d.limit_w is None or math.isclose(d.limit_w, d.default_w):
                continue
            try:
                self.nvml.set_limit(d.uuid, d.default_w)
                self.state[d.uuid].limit_w = d.default_w
            except DeviceError as exc:
                failures.append(exc.reason)
        return failures

    def stop(self) -> list[str]:
        """Restore the default limit of every GPU the agent capped."""
        failures = []
        for d in self.devices:
            st = self.state.get(d.uuid)
            if st and st.capped and d.default_w is not None:
                try:
                    self.nvml.set_limit(d.uuid, d.default_w)
                    st.capped, st.limit_w = False, d.default_w
                except DeviceError as exc:
                    failures.append(exc.reason)
        self.nvml.shutdown()
        return failures

    def reconcile(self, pods: Sequence[PodView], now: datetime) -> Result:
        targets, problems = plan_limits(pods, self.devices)
        by_uuid = {d.uuid: d for d in self.devices}
        res = Result()
        errors: dict[str, DeviceError] = {}
        for uuid, t in targets.items():
            d, st = by_uuid[uuid], self.state.setdefault(uuid, DeviceState(by_uuid[uuid].limit_w))
            want = t.watts if t.watts is not None else d.default_w
            if want is None or (st.limit_w is not None and math.isclose(st.limit_w, want)):
                st.capped = t.watts is not None
                res.limits[uuid] = st.limit_w
                continue
            if t.watts is None and not st.capped:
                res.limits[uuid] = st.limit_w        # not ours to restore (set before us, or by an admin)
                continue
            try:
                self.nvml.set_limit(uuid, want)
                st.limit_w, st.capped = want, t.watts is not None
            except DeviceError as exc:
                errors[uuid] = exc
                res.failures.append(exc.reason)
            res.limits[uuid] = st.limit_w
        for p in pods:
            if not p.running:
                if p.applied and f'"state":"{RESTORED}"' not in p.applied:
                    res.reports[p.key] = report_value(RESTORED, at=now)     # its GPUs are back at the default
                continue
            if p.cap is None and not p.cap_error:
                if p.applied and f'"state":"{RESTORED}"' not in p.applied:
                    res.reports[p.key] = report_value(RESTORED, at=now)     # the operator took the cap away
                continue
            mine = [t for t in targets.values() if p.key in t.pods]
            failed = [errors[t.uuid] for t in mine if t.uuid in errors]
            gpus = [t.uuid for t in mine]
            notes = problems.get(p.key, []) + [t.note for t in mine if t.note]
            if p.cap_error:
                res.reports[p.key] = report_value(FAILED, reason="InvalidAnnotation", message=p.cap_error, at=now)
                continue
            if failed:
                res.reports[p.key] = report_value(FAILED, asked=p.cap, gpus=gpus, reason=failed[0].reason,
                                                  message=str(failed[0]), at=now)
                continue
            if not mine:
                reason = "MIG" if any("MIG" in n for n in notes) else "NoDevice"
                res.reports[p.key] = report_value(FAILED, asked=p.cap, reason=reason,
                                                  message="; ".join(notes) or "no GPU of this pod found", at=now)
                continue
            uncapped = [t for t in mine if t.watts is None]
            if uncapped:
                reason = "MIG" if any("MIG" in t.note for t in uncapped) else "SharedDevice"
                state = FAILED if reason == "MIG" else SHARED
                res.reports[p.key] = report_value(state, asked=p.cap, gpus=gpus, reason=reason,
                                                  message="; ".join(notes), at=now)
                continue
            watts = max(t.watts for t in mine if t.watts is not None)
            for t in mine:
                res.caps[(p.namespace, p.name, t.uuid)] = t.watts   # type: ignore[assignment]
            res.reports[p.key] = report_value(CLAMPED if any(t.note for t in mine) else APPLIED, asked=p.cap,
                                              watts=watts, gpus=gpus, message="; ".join(notes), at=now)
        return res


def changed_reports(pods: Sequence[PodView], reports: Mapping[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    """The reports that differ from what the pods carry (ignoring the time stamp): what to write."""
    def strip(v: str | None) -> Any:
        try:
            body = json.loads(v) if v else None
        except ValueError:
            return v
        return {k: x for k, x in body.items() if k != "time"} if isinstance(body, dict) else body
    current = {p.key: p.applied for p in pods}
    return {k: v for k, v in reports.items() if strip(current.get(k)) != strip(v)}
