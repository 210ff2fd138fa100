"""Shared test fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GREENML_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data_file(relpath: str) -> Path:
    """Path of a file in ../shared/data; skips the test cleanly when it is absent."""
    p = SHARED_DATA / relpath
    if not p.is_file():
        pytest.skip(f"shared dataset not available: {p}")
    return p


@pytest.fixture
def shared_data():
    return shared_data_file
