"""`greenml lint --exclude GLOB`: a folder with Helm templates (not YAML until rendered)
can be linted without them."""
from __future__ import annotations

from pathlib import Path

import pytest

from greenml.cli import main
from greenml.lint import excluded

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "chart" / "templates").mkdir(parents=True)
    (tmp_path / "chart" / "templates" / "job.yaml").write_text("{{- if .Values.x }}\nkind: {{ .Values.kind }}\n{{- end }}\n")
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "job.yaml").write_text((REPO / "examples" / "trainingjob-basic.yaml").read_text())
    return tmp_path


def test_templates_fail_without_exclude(tree, capsys):
    assert main(["lint", "--now", "2026-06-01T00:00:00Z", str(tree)]) == 1
    assert "invalid YAML" in capsys.readouterr().out


@pytest.mark.parametrize("pattern", ["templates", "*/templates/*", "chart/templates/*.yaml", "*/chart/*"])
def test_exclude_leaves_them_out(tree, capsys, pattern):
    assert main(["lint", "--now", "2026-06-01T00:00:00Z", "--exclude", pattern, str(tree)]) == 0
    assert "1 file(s), 1 greenml object(s), 0 error(s)" in capsys.readouterr().out


def test_exclude_is_repeatable_and_applies_to_estimate(tree, capsys):
    assert main(["estimate", "--now", "2026-06-01T00:00:00Z", "-x", "nothing", "-x", "templates", str(tree)]) == 0
    assert "1 file(s), 1 estimate(s), 0 error(s)" in capsys.readouterr().out


def test_excluded_matches_parts_not_substrings():
    assert excluded(Path("a/templates/x.yaml"), ["templates"])
    assert not excluded(Path("a/mytemplates/x.yaml"), ["templates"])
    assert not excluded(Path("a/b.yaml"), [])
