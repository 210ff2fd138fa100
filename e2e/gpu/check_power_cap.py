"""The real-GPU check of issue 17: on a machine with an NVIDIA GPU, read one GPU's power-limit
constraints, set a cap, read it back, run a short load under the cap (sampling the board's
draw), restore the default limit and read that back — through the agent's own NVML code
(greenml.agent.nvml.self_check), so what is checked is what the node agent does.

    python e2e/gpu/check_power_cap.py [--gpu 0] [--watts W] [--seconds 20] [--out result.json]

Needs nvidia-ml-py (`pip install '.[agent]'`) and root (NVML's set-limit call); the load needs
PyTorch or CuPy with CUDA (without either, the cap is still set, read back and restored, and the
report says no load ran). Prints the report as JSON; exit 0 when every step read back (and the
mean draw under load stayed within the cap), 1 when a step failed, 2 when there is no GPU or
no NVML. The CI machine has no GPU: tests/unit/test_gpu_check.py runs this script's logic
against the faithful fake NVML.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def matmul_load(index: int, seconds: float) -> str:
    """Keep GPU ``index`` busy with large matrix products for ``seconds``; returns the tool used."""
    try:
        import torch  # type: ignore[import-not-found]
    except ModuleNotFoundError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        dev = torch.device(f"cuda:{index}")
        a = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
        b = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(20):
                a = (a @ b).clamp_(-1.0, 1.0)
            torch.cuda.synchronize(dev)
        return f"torch {torch.__version__} fp16 matmul 8192²"
    try:
        import cupy  # type: ignore[import-not-found]
    except ModuleNotFoundError:
        raise RuntimeError("no load tool: neither PyTorch with CUDA nor CuPy is installed") from None
    with cupy.cuda.Device(index):
        a = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)
        b = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(10):
                a = cupy.clip(a @ b, -1.0, 1.0)
            cupy.cuda.Device(index).synchronize()
    return f"cupy {cupy.__version__} fp32 matmul 8192²"


def main(argv: list[str] | None = None, *, module=None, load=matmul_load) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--watts", type=float, default=None, help="the cap (default: halfway between min and default)")
    ap.add_argument("--seconds", type=float, default=20.0, help="load duration under the cap (0: no load)")
    ap.add_argument("--out", default=None, help="also write the JSON report here")
    args = ap.parse_args(argv)
    from greenml.agent.nvml import DeviceError, Nvml, self_check

    if module is None:
        try:
            import pynvml  # type: ignore[import-not-found]
        except ModuleNotFoundError:
            print("check_power_cap: nvidia-ml-py is not installed (pip install '.[agent]')", file=sys.stderr)
            return 2
        module = pynvml
    try:
        report = self_check(Nvml(module), args.gpu, args.watts, load=load, load_seconds=args.seconds)
    except DeviceError as exc:
        print(f"check_power_cap: no usable NVML ({exc.reason}): {exc}", file=sys.stderr)
        return 2
    report["checked_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if "error" in report and not report["steps"]:
        return 2 if report["error"].startswith("no GPU") else 1
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
