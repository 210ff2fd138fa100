"""GPU table, power-model fallback, and the PromQL intensity source on a fake Prometheus API."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from greenml.signals import SignalError
from greenml.signals.energy import EnergyMeter, PowerModel
from greenml.signals.gpus import GPUS, lookup, watts_table
from greenml.signals.promql import Prometheus, PromQLSource
from tests.conftest import shared_data_file

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("label, model", [("NVIDIA-A100-SXM4-80GB", "A100-SXM"), ("NVIDIA H100 80GB HBM3", "H100-SXM"),
                                          ("H100-PCIe", "H100-PCIE"), ("Tesla V100-PCIE-16GB", "V100"),
                                          ("NVIDIA A10", "A10"), ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"),
                                          ("Quadro RTX 6000", "RTX6000"), ("Tesla T4", "T4")])
def test_gpu_lookup(label, model):
    assert lookup(label).model == model


def test_gpu_table_sane():
    assert lookup("TPU-v5") is None
    assert all(0 < s.typical_w <= s.tdp_w for s in GPUS.values())
    assert watts_table()["A40"] == 184.3


def test_gpu_table_matches_zeus_measurements():
    import csv
    rows = list(csv.DictReader(shared_data_file("gpu_power/zeus_nsdi23_power_limit_sweep.csv").open()))
    at_max = [float(r["avg_gpu_power_w"]) for r in rows if r["gpu"] == "NVIDIA A40" and float(r["power_limit_w"]) == 300]
    assert GPUS["A40"].typical_w == pytest.approx(sum(at_max) / len(at_max), abs=0.1)


def test_power_model_without_prometheus():
    m = EnergyMeter(None)
    r = m.energy_joules("ml", "x-.*", NOW, NOW + timedelta(hours=1), model=PowerModel(4, 250))
    assert r.source == "model" and r.estimate and r.value == 4 * 250 * 3600
    assert r.fallback[0]["reason"] == "NotConfigured"
    with pytest.raises(SignalError, match="no power model"):
        m.power_watts_now("ml", "x")
    with pytest.raises(ValueError, match="positive"):
        m.energy_joules("ml", "x", NOW, NOW)


def test_prometheus_down_falls_back():
    m = EnergyMeter("http://127.0.0.1:9")  # nothing listens on the discard port
    r = m.power_watts_now("ml", "x", model=PowerModel(1, 300))
    assert r.source == "model" and r.value == 300
    assert {f["reason"] for f in r.fallback} == {"Unavailable"}


class FakePromAPI:
    def __init__(self):
        self.queries: list[dict] = []
        api = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                u = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                api.queries.append({"path": u.path, **q})
                if u.path.endswith("/query_range"):
                    t0 = float(q["start"])
                    res = [{"metric": {"zone": "DE"}, "values": [[t0 + 300 * i, str(100 + i)] for i in range(4)]}]
                    data = {"resultType": "matrix", "result": res}
                elif 'zone="XX"' in q["query"]:
                    data = {"resultType": "vector", "result": []}
                else:
                    data = {"resultType": "vector", "result": [{"metric": {}, "value": [float(q.get("time", 0)), "321.5"]}]}
                body = json.dumps({"status": "success", "data": data}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()


def test_promql_source_instant_range_and_errors():
    api = FakePromAPI()
    try:
        src = PromQLSource(api.url)
        cur = src.current("DE", NOW)
        assert cur.values[0] == 321.5 and cur.start == NOW and cur.source == "prometheus"
        assert api.queries[-1]["query"] == 'carbon_intensity_gco2_per_kwh{zone="DE"}'
        h = src.history("DE", NOW - timedelta(minutes=20), NOW)
        assert h.values.tolist() == [100, 101, 102, 103] and h.step == timedelta(minutes=5)
        with pytest.raises(SignalError) as exc:
            src.current("XX", NOW)
        assert exc.value.reason == "UnknownZone"
        with pytest.raises(SignalError) as exc:
            src.forecast("DE", NOW, timedelta(hours=1))
        assert exc.value.reason == "Unavailable"
        src.current('a"b', NOW)
        assert api.queries[-1]["query"] == 'carbon_intensity_gco2_per_kwh{zone="a\\"b"}'  # quoted, no injection
    finally:
        api.httpd.shutdown()
        api.httpd.server_close()
    assert repr(Prometheus("https://prom.example")) == "Prometheus(url='https://prom.example')"
