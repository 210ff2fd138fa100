"""`greenml run --check` validates exactly what `greenml run` needs (one path), names
unknown GREENML_* variables, and turns bad settings sources into one line, exit 2."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from greenml.cli import main
from greenml.settings import NON_SETTING_ENV, NON_SETTING_PREFIXES, Settings, unknown_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in list(os.environ):
        if var.upper().startswith("GREENML_"):
            monkeypatch.delenv(var)


def check(monkeypatch, capsys, **env) -> tuple[int, str]:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = main(["run", "--check"])
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.mark.parametrize("env, expected", [
    ({"GREENML_PROVIDER": "electricitymaps"}, "needs provider_token"),
    ({"GREENML_PROVIDER": "file"}, "needs intensity_file"),
    ({"GREENML_PROVIDER": "file", "GREENML_INTENSITY_FILE": "/nonexistent/ci.csv"}, "cannot read"),
    ({"GREENML_PROVIDER": "electricitymaps", "GREENML_PROVIDER_TOKEN": "t",
      "GREENML_PROVIDER_URL": "http://example.com"}, "plain http"),
    ({"GREENML_PROVIDER": "watttime", "GREENML_PROVIDER_USERNAME": "u"}, "provider_password"),
])
def test_check_refuses_what_run_refuses(monkeypatch, capsys, env, expected):
    rc, text = check(monkeypatch, capsys, **env)
    assert rc == 2 and expected in text and "settings ok" not in text


def test_check_accepts_good_provider_settings(monkeypatch, capsys, tmp_path):
    csv = tmp_path / "ci.csv"
    csv.write_text("datetime_utc,ci\n2024-01-01T00:00:00Z,100\n2024-01-01T01:00:00Z,120\n")
    assert check(monkeypatch, capsys, GREENML_PROVIDER="file", GREENML_INTENSITY_FILE=str(csv)) == (0, "settings ok\n")


def test_unknown_variable_is_named_with_the_likely_one(monkeypatch, capsys):
    rc, text = check(monkeypatch, capsys, GREENML_PROVDER="file")
    assert rc == 2
    assert "GREENML_PROVDER: not a greenml setting (did you mean GREENML_PROVIDER?)" in text
    monkeypatch.delenv("GREENML_PROVDER")
    rc, text = check(monkeypatch, capsys, GREENML_WHATEVER_ELSE="1")
    assert rc == 2 and "GREENML_WHATEVER_ELSE: not a greenml setting" in text and "did you mean" not in text


def test_test_and_nested_variables_are_not_reported():
    env = {v: "x" for v in NON_SETTING_ENV} | {"GREENML_TEST_ANYTHING": "1", "GREENML_E2E_FOO": "1",
                                               "GREENML_ZONE_MAP__europe-west3": "DE", "greenml_provider": "file",
                                               "PATH": "/bin"}
    assert unknown_env(env) == []


def test_kubernetes_service_links_are_not_reported():
    """The kubelet injects these for a Service named greenml-operator-metrics in the pod's namespace."""
    env = {"GREENML_OPERATOR_METRICS_SERVICE_HOST": "10.0.0.7", "GREENML_OPERATOR_METRICS_SERVICE_PORT": "9090",
           "GREENML_OPERATOR_METRICS_SERVICE_PORT_METRICS": "9090",
           "GREENML_OPERATOR_METRICS_PORT": "tcp://10.0.0.7:9090",
           "GREENML_OPERATOR_METRICS_PORT_9090_TCP": "tcp://10.0.0.7:9090",
           "GREENML_OPERATOR_METRICS_PORT_9090_TCP_PROTO": "tcp", "GREENML_OPERATOR_METRICS_PORT_9090_TCP_PORT": "9090",
           "GREENML_OPERATOR_METRICS_PORT_9090_TCP_ADDR": "10.0.0.7"}
    assert unknown_env(env) == []
    assert unknown_env({"GREENML_HEALT_PORT": "8080"}) != []   # a typo of a port setting is still caught


def test_every_greenml_variable_the_repository_sets_is_known():
    """The chart, deploy/, the test harness, e2e/ and bench/ set only settings or documented non-settings."""
    names: set[str] = set()
    for top in ("charts", "deploy", "tests", "e2e", "bench", "docs", "README.md", "Dockerfile"):
        base = REPO / top
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file() and p.suffix in
                                                 (".py", ".yaml", ".yml", ".md", ".tpl", ".sh", "")]
        for f in files:
            if f.resolve() == Path(__file__).resolve():
                continue   # this file's own made-up names
            try:
                names |= set(re.findall(r"GREENML_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_])", f.read_text(errors="ignore")))
            except OSError:
                continue
    assert {"GREENML_PROVIDER", "GREENML_SHARED_DATA", "GREENML_E2E_KUBECONFIG"} <= names   # the scan works
    names.discard("GREENML_PROVDER")   # the documented typo example (docs/install.md)
    fields = {"GREENML_" + f.upper() for f in Settings.model_fields}
    # GREENML_PROVIDER_<secret key> in the chart: the secret's keys are settings fields too
    assert unknown_env({n: "x" for n in names}) == [], names - fields
    assert all(p.endswith("_") for p in NON_SETTING_PREFIXES)


@pytest.mark.parametrize("env, expected", [
    ({"GREENML_ZONE_MAP": "{bad"}, "GREENML_ZONE_MAP must be a JSON object"),
    ({"GREENML_CONFIG": "/nonexistent/greenml.yaml"}, "GREENML_CONFIG=/nonexistent/greenml.yaml: cannot read"),
])
def test_bad_sources_are_one_line_exit_2(monkeypatch, capsys, env, expected):
    rc, text = check(monkeypatch, capsys, **env)
    assert rc == 2 and expected in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1


@pytest.mark.parametrize("content, expected", [(": [", "not valid YAML"), ("- a\n- b\n", "expected a mapping"),
                                               ("provder: file\n", "provder")])
def test_bad_config_file(monkeypatch, capsys, tmp_path, content, expected):
    cfg = tmp_path / "greenml.yaml"
    cfg.write_text(content)
    rc, text = check(monkeypatch, capsys, GREENML_CONFIG=str(cfg))
    assert rc == 2 and expected in text


def test_estimate_reports_bad_settings_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("GREENML_ZONE_MAP", "[1")
    assert main(["estimate", str(REPO / "examples")]) == 2
    err = capsys.readouterr().err
    assert "GREENML_ZONE_MAP" in err and len(err.strip().splitlines()) == 1
