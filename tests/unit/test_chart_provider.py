"""The chart's provider values, rendered with the real helm (tests/helmbin.py): provider=file
mounts a ConfigMap of intensity CSVs that the operator reads as it is mounted, and values
the operator would refuse at start (a crash-looping pod) are refused at render time."""
from __future__ import annotations

import os

import pytest
import yaml

from greenml.cli import main
from tests.helmbin import helm, run_tool  # noqa: F401  (helm is a fixture)
from tests.unit.test_chart import CHART, find, template, the
from tests.unit.test_signals_embedded_file import mounted_configmap

DE = "datetime_utc,gco2_per_kwh\n2026-01-01T00:00:00Z,310\n2026-01-01T01:00:00Z,290\n"
MOUNT = "/etc/greenml/intensity"


def render_files(helm_path, tmp_path, files: dict[str, str], *extra: str) -> list[dict]:
    args = ["--set", "provider.name=file"]
    for key, text in files.items():
        (tmp_path / key).write_text(text)
        args += ["--set-file", f"provider.intensity.files.{key.replace('.', chr(92) + '.')}={tmp_path / key}"]
    return [d for d in yaml.safe_load_all(template(helm_path, *args, *extra)) if d]


def pod_of(docs: list[dict]) -> dict:
    return the(docs, "Deployment")["spec"]["template"]


def env_of(docs: list[dict]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod_of(docs)["spec"]["containers"][0]["env"]}


def test_provider_file_mounts_a_configmap_of_the_files(helm, tmp_path):
    docs = render_files(helm, tmp_path, {"DE.csv": DE, "default.csv": DE.replace("310", "99")})
    cm = the(docs, "ConfigMap")
    assert cm["data"] == {"DE.csv": DE, "default.csv": DE.replace("310", "99")}
    pod = pod_of(docs)
    (c,) = pod["spec"]["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True          # hence a volume, not a file in the image
    assert {"name": "intensity", "mountPath": MOUNT, "readOnly": True} in c["volumeMounts"]
    assert {"name": "intensity", "configMap": {"name": cm["metadata"]["name"]}} in pod["spec"]["volumes"]
    assert env_of(docs)["GREENML_INTENSITY_FILE"] == MOUNT and env_of(docs)["GREENML_PROVIDER"] == "file"
    # the operator reads the files at start: other data, another pod template (a rollout)
    other = render_files(helm, tmp_path, {"DE.csv": DE.replace("290", "280")})
    checksum = pod["metadata"]["annotations"]["checksum/intensity"]
    assert checksum != pod_of(other)["metadata"]["annotations"]["checksum/intensity"]
    run_tool(helm, "lint", "--strict", str(CHART), "--set", "provider.name=file",
             "--set-file", f"provider.intensity.files.DE\\.csv={tmp_path / 'DE.csv'}")


def test_the_operator_reads_the_configmap_as_mounted(helm, tmp_path, monkeypatch, capsys):
    """The rendered ConfigMap, laid out as the kubelet mounts it, with the rendered env:
    `greenml run --check` (the operator's own start-up validation) accepts it and serves DE."""
    docs = render_files(helm, tmp_path, {"DE.csv": DE})
    mounted = mounted_configmap(tmp_path / "mnt", the(docs, "ConfigMap")["data"])
    for var in list(os.environ):
        if var.upper().startswith("GREENML_"):
            monkeypatch.delenv(var)
    for name, value in env_of(docs).items():
        if name.startswith("GREENML_") and value is not None:
            monkeypatch.setenv(name, str(mounted) if name == "GREENML_INTENSITY_FILE" else value)
    assert main(["run", "--check"]) == 0
    assert capsys.readouterr().out == "settings ok\n"

    from datetime import datetime, timezone

    from greenml.settings import load_settings
    from greenml.signals import build_provider

    src = build_provider(load_settings())
    assert src.current("DE", datetime(2026, 1, 1, 1, tzinfo=timezone.utc)).values[0] == 290


def test_an_existing_configmap_is_mounted_not_made(helm):
    docs = [d for d in yaml.safe_load_all(template(helm, "--set", "provider.name=file", "--set",
                                                   "provider.intensity.existingConfigMap=grid-ci")) if d]
    assert not find(docs, "ConfigMap")
    pod = pod_of(docs)
    assert {"name": "intensity", "configMap": {"name": "grid-ci"}} in pod["spec"]["volumes"]
    assert env_of(docs)["GREENML_INTENSITY_FILE"] == MOUNT
    assert "checksum/intensity" not in (pod["metadata"].get("annotations") or {})


def test_other_providers_mount_nothing(helm):
    docs = [d for d in yaml.safe_load_all(template(helm)) if d]
    assert "GREENML_INTENSITY_FILE" not in env_of(docs)
    assert [v["name"] for v in pod_of(docs)["spec"]["volumes"]] == ["tmp"]


@pytest.mark.parametrize("values, message", [
    (["provider.name=electricitymaps"], "provider.name=electricitymaps needs provider.existingSecret"),
    (["provider.name=watttime"], "provider.name=watttime needs provider.existingSecret"),
    (["provider.name=file"], "provider.name=file needs provider.intensity.files"),
    (["provider.name=prometheus"], "provider.name=prometheus needs provider.prometheusUrl"),
    (["provider.name=file", "provider.intensity.existingConfigMap=a", "provider.intensity.files.DE\\.csv=x"],
     "set files or existingConfigMap, not both"),
    (["provider.intensity.existingConfigMap=a"], "provider.intensity is read only with provider.name=file"),
    (["provider.name=file", "provider.intensity.files.notes=x"], "'notes' does not match pattern"),
])
def test_values_the_operator_would_refuse_fail_the_render(helm, values, message):
    args = [a for v in values for a in ("--set", v)]
    with pytest.raises(AssertionError) as err:
        template(helm, *args)
    assert message in str(err.value)


@pytest.mark.parametrize("values", [
    ["provider.name=electricitymaps", "provider.existingSecret=creds"],
    ["provider.name=watttime", "provider.existingSecret=creds"],
    ["provider.name=prometheus", "provider.prometheusUrl=http://prometheus.monitoring:9090"],
    ["provider.name=ukcarbon"],
])
def test_complete_provider_values_render(helm, values):
    docs = [d for d in yaml.safe_load_all(template(helm, *[a for v in values for a in ("--set", v)])) if d]
    assert env_of(docs)["GREENML_PROVIDER"] == values[0].split("=")[1]
