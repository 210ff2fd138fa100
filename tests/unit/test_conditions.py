"""Status conditions must pass the API server's validation, whatever text feeds them."""
from __future__ import annotations

import re
from datetime import datetime, timezone

from hypothesis import given, strategies as st

from greenml.api.common import Condition
from greenml.controllers.trainingjob import condition, condition_reason, merge_conditions

REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")   # metav1.Condition.reason
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@given(st.text(max_size=200))
def test_any_text_becomes_a_valid_reason(text):
    r = condition_reason(text)
    assert REASON.match(r) and len(r) <= 1024


def test_reasons_keep_their_words():
    assert condition_reason("UnknownZone") == "UnknownZone"
    assert condition_reason("Fallback:forecaster(ukcarbon)") == "Fallback:forecasterUkcarbon"


def test_last_transition_time_moves_only_when_status_changes():
    first = condition("Ready", True, "Planned", "m", NOW, 1, None)
    later = datetime(2026, 1, 2, tzinfo=timezone.utc)
    same = condition("Ready", True, "Running", "m2", later, 2, [first])
    flipped = condition("Ready", False, "Failed", "m3", later, 2, [first])
    assert same["lastTransitionTime"] == first["lastTransitionTime"]
    assert flipped["lastTransitionTime"] != first["lastTransitionTime"]
    merged = merge_conditions([first], [flipped])
    assert [c["status"] for c in merged] == ["False"]
    Condition.model_validate(flipped)   # the API model (and so the CRD schema) accepts it
