"""status_changes: what the planning loop writes is only what the server would store differently."""
from greenml.controllers.loop import status_changes


def test_nulls_are_what_a_merge_patch_leaves_out():
    stored = {"progress": {"runSeconds": 0.0, "runs": 0}, "plan": {"windows": [], "computedAt": "t1"}}
    new = {"progress": {"runSeconds": 0.0, "runs": 0, "runningSince": None, "lastSeenRunning": None},
           "plan": {"windows": [], "plannedStart": None, "computedAt": "t2"}}
    assert status_changes(stored, new, {"plan": "computedAt"}) == {}


def test_a_real_change_is_written_whole():
    stored = {"progress": {"runSeconds": 0.0, "runs": 0}}
    new = {"progress": {"runSeconds": 0.0, "runs": 1, "runningSince": "2024-01-01T00:00:00Z"}}
    assert status_changes(stored, new) == new
    assert status_changes({"phase": "Waiting"}, {"phase": "Running"}) == {"phase": "Running"}
