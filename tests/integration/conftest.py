from __future__ import annotations

import pytest

from tests.integration.harness import Api, declare_resources, write_kubeconfig


@pytest.fixture
def api(kmock) -> Api:
    declare_resources(kmock)
    return Api(str(kmock.url), kmock)


@pytest.fixture
def kubeconfig(tmp_path, api):
    return write_kubeconfig(tmp_path / "kubeconfig", api.url)
