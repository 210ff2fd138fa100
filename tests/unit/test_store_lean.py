"""What the planning loop's store keeps of a body: all a decision reads, not the bulk no one reads."""
from greenml.controllers.loop import LAST_APPLIED, Store
from greenml.controllers.trainingjob import lean_job
from greenml.services.trainingjob import CAP_ANNOTATION, JobObservation, carried_cap, pods_signature

MANAGED = [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {"f:x": {}}}}]


def _job():
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "tj-a-job", "namespace": "ml", "uid": "u1", "resourceVersion": "7",
                     "labels": {"greenml.io/trainingjob": "tj-a"}, "managedFields": MANAGED,
                     "ownerReferences": [{"apiVersion": "greenml.io/v1alpha1", "kind": "TrainingJob",
                                          "name": "tj-a", "uid": "tj-uid", "controller": True}]},
        "spec": {"suspend": True, "parallelism": 2, "template": {
            "metadata": {"annotations": {CAP_ANNOTATION: "250"}},
            "spec": {"containers": [{"name": "t", "image": "x", "env": [{"name": "A", "value": "b" * 4000}]}]}}},
        "status": {"active": 1, "ready": 1, "conditions": [{"type": "Suspended", "status": "True"}]},
    }


def test_store_drops_managed_fields_and_last_applied_and_keeps_the_rest():
    s = Store()
    body = {"metadata": {"name": "a", "namespace": "ml", "resourceVersion": "3", "managedFields": MANAGED,
                         "annotations": {LAST_APPLIED: '{"spec": {}}', "greenml.io/x": "1"}},
            "spec": {"k": 1}, "status": {"phase": "Waiting"}}
    s.put("TrainingJob", body)
    kept = s.get("TrainingJob", "ml", "a")
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"greenml.io/x": "1"}
    assert kept["spec"] == {"k": 1} and kept["status"] == {"phase": "Waiting"}
    assert kept["metadata"]["resourceVersion"] == "3"
    # the caller's body is not changed
    assert "managedFields" in body["metadata"] and LAST_APPLIED in body["metadata"]["annotations"]


def test_lean_job_reads_the_same_to_every_decision():
    job = _job()
    lean = lean_job(job)
    assert "spec" not in lean["spec"]["template"] and "managedFields" not in lean["metadata"]
    assert JobObservation.from_job(lean) == JobObservation.from_job(job)
    assert carried_cap([], "tj-a-job", lean) == carried_cap([], "tj-a-job", job) == 250.0
    assert pods_signature(lean, 1) == pods_signature(job, 1)
    assert lean["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    assert lean["spec"]["suspend"] is True and lean["spec"]["parallelism"] == 2


def test_stored_bodies_share_their_keys_and_short_strings_and_read_the_same():
    import json

    s = Store()
    # two bodies decoded from JSON, as kopf hands them: each has its own copy of every string
    raw = [json.loads(json.dumps({"metadata": {"name": n, "namespace": "ml", "resourceVersion": "3"},
                                  "spec": {"list": [{"lastTransitionTime": "2026-12-03T09:12:58Z"}]},
                                  "status": {"conditions": [{"type": "Ready", "reason": "Planned",
                                                             "message": "m" * 80}]}}))
           for n in ("a", "b")]
    assert raw[0]["status"]["conditions"][0]["reason"] is not raw[1]["status"]["conditions"][0]["reason"]
    for b in raw:
        s.put("TrainingJob", b)
    a, b = s.get("TrainingJob", "ml", "a"), s.get("TrainingJob", "ml", "b")
    assert a == raw[0] and b == raw[1]                               # nothing lost or changed
    ka = next(k for k in a["spec"]["list"][0])
    kb = next(k for k in b["spec"]["list"][0])
    assert ka is kb                                                  # one key object for all bodies
    ca, cb = a["status"]["conditions"][0], b["status"]["conditions"][0]
    assert ca["reason"] is cb["reason"] and ca["type"] is cb["type"]
    assert ca["message"] is not cb["message"]                        # long strings are not interned
    # a deep copy: the decoded event can go, and changing it changes nothing stored
    raw[0]["status"]["conditions"][0]["reason"] = "Changed"
    assert a["status"]["conditions"][0]["reason"] == "Planned"
    job = lean_job(json.loads(json.dumps(_job())))
    assert next(iter(job["status"]["conditions"][0])) is next(iter(ca))      # Jobs too ("type")
