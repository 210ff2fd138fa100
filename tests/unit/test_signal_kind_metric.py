"""A fallback of another kind (WattTime's marginal signal replaced by an average profile) is
never silent: a metric per zone (greenml_signal_kind_changed) from the board's zone signal."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np

from greenml.metrics import Metrics, record_board
from greenml.services.board import BoardStats, zone_signal
from greenml.signals.base import IntensitySeries

NOW = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


def _series(meta: dict) -> IntensitySeries:
    return IntensitySeries(NOW, timedelta(hours=1), np.full(24, 300.0), source="embedded", estimate=True,
                           kind="average", meta=meta)


def _value(m: Metrics, zone: str, kind: str, provider_kind: str) -> float | None:
    return m.registry.get_sample_value("greenml_signal_kind_changed",
                                       {"zone": zone, "kind": kind, "provider_kind": provider_kind})


def test_kind_changed_is_a_metric_and_clears_when_the_provider_serves_again():
    m = Metrics(version="test")
    changed = _series({"link": "embedded", "kind_changed": {"provider": "marginal", "served": "average"},
                       "fallback": [{"link": "provider", "reason": "Unauthorized"}]})
    board = SimpleNamespace(stats=BoardStats(replans=1, last_duration_s=0.1, last_jobs=1),
                            signals={"CAISO_NORTH": zone_signal(changed, changed.values, NOW)},
                            failures=lambda: {})
    record_board(m, board)
    assert _value(m, "CAISO_NORTH", "average", "marginal") == 1.0
    same = _series({"link": "provider"})
    board.signals = {"CAISO_NORTH": zone_signal(same, same.values, NOW)}
    board.stats = BoardStats(replans=2, last_duration_s=0.1, last_jobs=1)
    record_board(m, board)
    assert _value(m, "CAISO_NORTH", "average", "average") == 0.0
    assert _value(m, "CAISO_NORTH", "average", "marginal") is None       # the old series is gone
