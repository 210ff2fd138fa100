"""e2e/gpu/check_power_cap.py — the real-GPU check — run against the faithful fake NVML (the CI
machine has no GPU): set, read back, the draw under load sampled and judged against the cap,
the default restored even when the load fails, exit codes."""
from __future__ import annotations

import json
import time

import pynvml
import pytest

from e2e.gpu.check_power_cap import main
from tests.unit.fake_nvml import FakeGpu, FakeNvml


def fake_load(gpu: FakeGpu, *, fail: bool = False):
    def load(index: int, seconds: float) -> str:
        gpu.busy = True
        try:
            time.sleep(seconds)
            if fail:
                raise RuntimeError("CUDA out of memory")
        finally:
            gpu.busy = False
        return "fake busy loop"
    return load


def run(capsys, gpu: FakeGpu, *args: str, **kw) -> tuple[int, dict]:
    fake = FakeNvml([gpu])
    code = main(["--seconds", "0.6", *args], module=fake, **kw)
    assert fake.initialised == 0                          # nvmlShutdown after every run
    return code, json.loads(capsys.readouterr().out)


def test_cap_set_read_back_held_under_load_and_restored(capsys, tmp_path):
    gpu = FakeGpu("GPU-a")                                # 100–400 W, default 400, the load wants 350
    code, rep = run(capsys, gpu, "--out", str(tmp_path / "r.json"), load=fake_load(gpu))
    assert code == 0 and rep["ok"]
    assert [(s["step"], s["watts"], s["read_back_w"]) for s in rep["steps"]] == [("set", 250, 250), ("restore", 400, 400)]
    assert rep["load"]["tool"] == "fake busy loop" and rep["load"]["samples"] >= 2
    assert rep["load"]["mean_w"] == rep["load"]["max_w"] == 250.0 and rep["load"]["within_cap"]
    assert gpu.limit_mw == 400_000 and gpu.sets == [250_000, 400_000]
    assert json.loads((tmp_path / "r.json").read_text())["ok"]


def test_a_draw_above_the_cap_fails_the_check(capsys):
    gpu = FakeGpu("GPU-a")
    gpu_limit_ignored = fake_load(gpu)

    def over(index, seconds):                           # a board that does not honour its limit
        gpu.demand_mw, real = 390_000, gpu.limit_mw
        gpu.limit_mw = 400_000
        try:
            return gpu_limit_ignored(index, seconds)
        finally:
            gpu.limit_mw = real
    code, rep = run(capsys, gpu, load=over)
    assert code == 1 and not rep["ok"] and rep["load"]["mean_w"] == 390.0 and not rep["load"]["within_cap"]
    assert gpu.limit_mw == 400_000


def test_a_failing_load_still_restores_the_default(capsys):
    gpu = FakeGpu("GPU-a")
    code, rep = run(capsys, gpu, load=fake_load(gpu, fail=True))
    assert code == 1 and "CUDA out of memory" in rep["load"]["error"]
    assert rep["steps"][-1]["step"] == "restore" and rep["steps"][-1]["ok"] and gpu.limit_mw == 400_000


def test_no_load_no_sampling(capsys):
    gpu = FakeGpu("GPU-a")
    code, rep = run(capsys, gpu, "--seconds", "0", "--watts", "150", load=fake_load(gpu))
    assert code == 0 and "load" not in rep and rep["steps"][0]["read_back_w"] == 150


@pytest.mark.parametrize("gpu, code, reason", [
    (FakeGpu("GPU-a", set_error=pynvml.NVML_ERROR_NO_PERMISSION), 1, "NoPermission"),
    (FakeGpu("GPU-a", read_error=pynvml.NVML_ERROR_NOT_SUPPORTED), 1, None),
])
def test_refusals_are_reported(capsys, gpu, code, reason):
    got, rep = run(capsys, gpu, load=fake_load(gpu))
    assert got == code and not rep["ok"]
    if reason:
        assert rep["steps"][0]["error"] == reason and "load" not in rep
    else:
        assert "not readable" in rep["error"]


def test_no_gpu_exits_2(capsys):
    fake = FakeNvml([])
    assert main(["--gpu", "0"], module=fake) == 2
    assert json.loads(capsys.readouterr().out)["error"].startswith("no GPU 0")
