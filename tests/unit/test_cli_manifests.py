"""lint, estimate, simulate and the operator's admission judge a manifest the same way:
as the API server receives it (YAML → JSON as kubectl converts it), through one
validation path (services.trainingjob.resolve) with one message per mistake."""
from __future__ import annotations

from pathlib import Path

import pytest

from greenml.cli import main
from greenml.lint import load_manifests
from greenml.services.trainingjob import Defaults, InvalidSpec, resolve

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BASIC = (EXAMPLES / "trainingjob-basic.yaml").read_text()
NOW = "2026-06-01T00:00:00Z"


def _variant(old: str, new: str) -> str:
    assert old in BASIC
    return BASIC.replace(old, new)


BAD = {
    "negative-gpus": _variant("nvidia.com/gpu: 4", "nvidia.com/gpu: -2"),
    "negative-gpu-request": _variant("limits:\n                  nvidia.com/gpu: 4",
                                     "requests:\n                  nvidia.com/gpu: \"-1\""),
    "gpus-not-a-number": _variant("nvidia.com/gpu: 4", "nvidia.com/gpu: two"),
    "restart-always": _variant("restartPolicy: Never", "restartPolicy: Always"),
    "min-run-too-long": _variant("estimatedDuration: 3h", "estimatedDuration: 3h\n    minRunDuration: 4h"),
}


def _admission_error(text: str) -> str:
    """What the operator's admission says (resolve(), as the controller calls it)."""
    (body,) = load_manifests(text)
    body["metadata"]["creationTimestamp"] = NOW
    with pytest.raises(InvalidSpec) as err:
        resolve(body, Defaults())
    return str(err.value)


@pytest.mark.parametrize("name", sorted(BAD))
def test_lint_estimate_simulate_and_admission_reject_alike(name, tmp_path, capsys):
    text = BAD[name]
    expected = _admission_error(text)        # "field: message"
    d = tmp_path / "m"
    d.mkdir()
    (d / "job.yaml").write_text(text)

    assert main(["lint", "--now", NOW, str(d)]) == 1
    lint_out = capsys.readouterr().out
    assert main(["estimate", "--now", NOW, str(d)]) == 1
    estimate_out = capsys.readouterr().out
    assert main(["simulate", "--examples", str(d), "--output-dir", str(tmp_path / "out")]) == 2
    simulate_err = capsys.readouterr().err

    for out in (lint_out, estimate_out, simulate_err):
        assert expected in out, out
    assert "1 error(s)" in lint_out and "1 error(s)" in estimate_out


def test_negative_gpus_message_names_the_container():
    msg = _admission_error(BAD["negative-gpus"])
    assert msg.startswith("spec.template: container 'train'") and "got -2" in msg


UNQUOTED_DEADLINE = _variant("maxDelay: 9h               # deadline = creation + maxDelay + estimatedDuration",
                             "deadline: 2027-01-01T00:00:00Z")


def test_unquoted_deadline_is_a_string_as_kubectl_sends_it(tmp_path, capsys):
    (doc,) = load_manifests(UNQUOTED_DEADLINE)
    assert doc["spec"]["schedule"]["deadline"] == "2027-01-01T00:00:00Z"
    f = tmp_path / "job.yaml"
    f.write_text(UNQUOTED_DEADLINE)
    assert main(["lint", "--now", NOW, str(f)]) == 0, capsys.readouterr().out
    assert main(["estimate", "--now", "2026-12-31T00:00:00Z", str(f)]) == 0, capsys.readouterr()


def test_other_scalars_resolve_as_before():
    (doc,) = load_manifests("a: 1\nb: true\nc: 1.5\nd: null\ne: 2024-01-01\nf: '2024-01-01'\n")
    assert doc == {"a": 1, "b": True, "c": 1.5, "d": None, "e": "2024-01-01", "f": "2024-01-01"}
