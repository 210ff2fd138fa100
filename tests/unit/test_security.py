"""No credentials leak; provider URLs are https by default; TLS verification stays on.

The leak test runs the real operator (`greenml run`, DEBUG logs) with a provider token
against kmock and a fake Electricity Maps server that first serves, then answers 401
(so error paths run), with a zone no source knows (so a failure message reaches
status and Events). Then it greps for the token: the operator's output, every request
body it sent to the API server, every stored object, and the health/metrics endpoints.
The token must reach the provider only, in the ``auth-token`` header.

RBAC least privilege (no wildcards, no cluster-wide Secret access) is asserted by
tests/unit/test_chart.py; not repeated here.
"""
from __future__ import annotations

import inspect
import json
import urllib.request

import pytest

from greenml.settings import Settings
from greenml.signals import providers
from greenml.signals.base import SignalError
from greenml.signals.http import JsonClient, check_url
from tests.integration.harness import Api, declare_resources, run_operator, wait_for, write_kubeconfig
from tests.integration.test_faults import FakeProvider, _cond, _planned, provider_env
from tests.integration.test_trainingjob_operator import JOBS, NS, TJ, grid_start, training_job

TOKEN = "tok-SECRET-9f8e7d6c5b4a"


@pytest.fixture
def api(kmock) -> Api:
    declare_resources(kmock)
    return Api(str(kmock.url), kmock)


def _fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode(errors="replace")
    except OSError as exc:   # endpoint not served: nothing can leak through it
        return f"unreachable: {exc}"


@pytest.mark.timeout(120)
async def test_no_token_in_logs_status_events_requests_or_metrics(api, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    with FakeProvider(grid_start(), [400.0] * 5 + [40.0] * 3 + [400.0] * 400) as prov:
        env = provider_env(tmp_path, kubeconfig, prov, token=TOKEN, log_level="DEBUG")
        with run_operator(tmp_path, env) as op:
            await api.create(TJ, training_job("sec", max_delay="5m"))
            nozone = training_job("sec-zz", max_delay="5m")
            nozone["spec"]["carbon"] = {"zone": "ZZ-NOWHERE"}
            await api.create(TJ, nozone)
            await wait_for("a plan", lambda: _planned(api, "sec"), op=op)
            prov.mode = "401"
            await wait_for("ForecastUnavailable", lambda: _cond(api, "sec-zz", "ForecastUnavailable"), op=op)
            # the error paths ran and were logged (the Event is logged after the status write)
            await wait_for("the error in the log", lambda: any(s in op.logs() for s in ("401", "Unauthorized",
                                                                                        "ForecastUnavailable")), op=op)
            endpoints = [_fetch(f"http://127.0.0.1:{env['GREENML_HEALTH_PORT']}/healthz"),
                         _fetch(f"http://127.0.0.1:{env['GREENML_METRICS_PORT']}/metrics")]
            logs = op.logs()
        seen = list(prov.seen)

    assert seen, "the provider was called"
    assert all(h.get("auth-token") == TOKEN for _, _, h in seen), "the token travels in its header"
    assert not any(TOKEN in json.dumps(q) for _, q, _ in seen), "never in a query string"
    assert "401" in logs or "Unauthorized" in logs or "ForecastUnavailable" in logs, "the error paths ran"
    assert TOKEN not in logs, "token in the operator's logs"
    sent = [r.body.decode(errors="replace") for r in list(api.k) if r.body]
    assert sent and not [b for b in sent if TOKEN in b], "token in a request to the API server (status/Event/Job)"
    stored = [o for res in (TJ, JOBS, "v1/events") for o in await api.list(res, NS)]
    assert stored and TOKEN not in json.dumps(stored), "token in a stored object"
    assert not [e for e in endpoints if TOKEN in e], "token on the health/metrics endpoints"


def test_default_provider_urls_are_https():
    for url in (providers.ELECTRICITYMAPS_URL, providers.WATTTIME_URL, providers.UKCARBON_URL):
        assert url.startswith("https://"), url
    assert Settings().provider_url is None   # unset: the https default above applies


@pytest.mark.parametrize("url", ["http://api.example.com", "http://10.0.0.5:8080"])
def test_credentials_never_sent_over_plain_http_to_a_remote_host(url):
    with pytest.raises(SignalError) as exc:
        check_url(url, credentials=True, what="electricitymaps")
    assert exc.value.reason == "Misconfigured" and "https" in str(exc.value)
    with pytest.raises(SignalError):
        providers.ElectricityMapsSource(TOKEN, base_url=url)


def test_tls_verification_cannot_be_disabled():
    """No setting or client argument turns verification off: requests get verify=True or a CA path."""
    fields = {name.lower() for name in Settings.model_fields}
    assert not [f for f in fields if any(w in f for w in ("insecure", "verify", "skip_tls", "tls"))], fields
    assert "verify" not in inspect.signature(JsonClient).parameters

    class Recorder:
        def __init__(self) -> None:
            self.verify: list = []

        def get(self, *a, verify=None, **kw):
            self.verify.append(verify)
            raise __import__("requests").ConnectionError("offline")

    for bundle in (None, "", "/etc/ssl/custom.pem"):
        rec = Recorder()
        client = JsonClient("p", "https://api.example.com", ca_bundle=bundle, session=rec, sleep=lambda s: None)
        with pytest.raises(SignalError):
            client.get("/x")
        assert rec.verify and all(v is True or (isinstance(v, str) and v) for v in rec.verify), rec.verify


def test_settings_and_sources_never_show_secrets():
    s = Settings(provider="electricitymaps", provider_token=TOKEN, provider_password=TOKEN)
    assert TOKEN not in repr(s) and TOKEN not in str(s)
    src = providers.ElectricityMapsSource(TOKEN, base_url="http://127.0.0.1:9")
    assert TOKEN not in repr(src)
