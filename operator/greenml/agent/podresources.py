"""Which GPUs a pod holds.

1. The kubelet PodResources API (``v1.PodResourcesLister/List`` over the unix socket
   /var/lib/kubelet/pod-resources/kubelet.sock): the device IDs the device plugin handed to
   each container (GPU UUIDs for NVIDIA's plugin; ``MIG-…`` for MIG instances). gRPC via
   grpcio (the ``agent`` extra) with a hand-written decoder of the few protobuf fields used
   (api/pod-resources v1: ListPodResourcesResponse.pod_resources = 1; PodResources name = 1,
   namespace = 2, containers = 3; ContainerResources devices = 2; ContainerDevices
   resource_name = 1, device_ids = 2), so no generated code is shipped.
2. Else the device plugin's ``NVIDIA_VISIBLE_DEVICES`` when the pod spec sets it in a
   container's env (indices or UUIDs; ``all``/``none``/``void`` hold no one GPU).
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

GPU_RESOURCE = "nvidia.com/gpu"
SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
LIST_METHOD = "/v1.PodResourcesLister/List"

PodKey = tuple[str, str]   # (namespace, name)


# ---------------------------------------------------------------- protobuf wire format

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; length-delimited values as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            v, i = buf[i:i + n], i + n
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, v


def decode_list_response(buf: bytes, resource: str = GPU_RESOURCE) -> dict[PodKey, tuple[str, ...]]:
    """ListPodResourcesResponse → {(namespace, pod): device IDs of ``resource``}."""
    out: dict[PodKey, list[str]] = {}
    for num, wt, pod in fields(buf):
        if num != 1 or wt != 2:
            continue
        name = ns = ""
        ids: list[str] = []
        for pn, pwt, pv in fields(pod):
            if pn == 1 and pwt == 2:
                name = pv.decode()
            elif pn == 2 and pwt == 2:
                ns = pv.decode()
            elif pn == 3 and pwt == 2:
                for cn, cwt, cv in fields(pv):
                    if cn != 2 or cwt != 2:
                        continue
                    rname, dev = "", []
                    for dn, dwt, dv in fields(cv):
                        if dn == 1 and dwt == 2:
                            rname = dv.decode()
                        elif dn == 2 and dwt == 2:
                            dev.append(dv.decode())
                    if rname == resource:
                        ids.extend(dev)
        if ids:
            out.setdefault((ns, name), []).extend(ids)
    return {k: tuple(v) for k, v in out.items()}


def list_devices(socket_path: str = SOCKET, timeout: float = 5.0) -> dict[PodKey, tuple[str, ...]]:
    """Ask the kubelet. Raises OSError when the socket is absent, RuntimeError on gRPC errors."""
    import os

    if not os.path.exists(socket_path):
        raise OSError(f"no PodResources socket at {socket_path}")
    try:
        import grpc  # type: ignore[import-not-found]
    except ModuleNotFoundError:
        raise RuntimeError("the PodResources API needs grpcio: pip install 'greenml-operator[agent]'") from None
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        call = channel.unary_unary(LIST_METHOD, request_serializer=lambda _: b"", response_deserializer=lambda b: b)
        try:
            raw = call(None, timeout=timeout)
        except grpc.RpcError as exc:
            raise RuntimeError(f"PodResources List: {exc.code().name} {exc.details()}") from None
    return decode_list_response(raw)


# ---------------------------------------------------------------- fallback: the pod spec

def env_devices(pod: Mapping[str, Any]) -> tuple[str, ...]:
    """NVIDIA_VISIBLE_DEVICES set in the pod spec's container env (indices or UUIDs)."""
    out: list[str] = []
    for c in ((pod.get("spec") or {}).get("containers") or []):
        for e in c.get("env") or []:
            if e.get("name") == "NVIDIA_VISIBLE_DEVICES" and isinstance(e.get("value"), str):
                v = e["value"].strip()
                if v.lower() in ("all", "none", "void", ""):
                    continue
                out.extend(x.strip() for x in v.split(",") if x.strip())
    return tuple(dict.fromkeys(out))
