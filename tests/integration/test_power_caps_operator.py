"""The real operator (`greenml run`) against the kmock emulator: a carbon-aware TrainingJob's
GPU power caps (docs/power-caps.md, "controller steps") — on the Job's pod template at
creation, in status per planned window, and on the running Job's pods whenever the cap of
now changes, again after a restart.

The emulator runs no Job controller and ignores label selectors: the test makes the Job's
pod itself (labelled job-name, annotated as its template is) and a pod of another Job the
operator must leave alone."""
from __future__ import annotations

import kmock

from tests.integration.harness import VERBS, operator_env, run_operator, wait_for, write_intensity
from tests.integration.test_trainingjob_operator import JOBS, NS, STEP, TJ, grid_start, job_of, status_of, training_job

import pytest

from greenml.planning.power import CAP_ANNOTATION

pytestmark = [pytest.mark.timeout(120)]
PODS = "v1/pods"


def capped_job(name: str) -> dict:
    # A40 (300 W limit), carbon-aware between 150 and 250 W: maxWatts is a real cap (250 W),
    # what a waiting job's Job carries and a run outside its capped windows is published at
    body = training_job(name, duration="24s", max_delay="40s", interruptible=True, minRunDuration="2s")
    body["spec"]["power"] = {"gpuModel": "A40", "cap": {"carbonAware": {"minWatts": 150, "maxWatts": 250}}}
    return body


def pod(name: str, job: str, cap: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"job-name": job}, "annotations": {CAP_ANNOTATION: cap}},
            "spec": {"containers": [{"name": "train", "image": "trainer:1"}]}, "status": {"phase": "Running"}}


async def cap_on(api, name: str) -> str | None:
    return (((await api.get(PODS, NS, name)) or {}).get("metadata", {}).get("annotations") or {}).get(CAP_ANNOTATION)


async def test_carbon_aware_caps_reach_the_template_status_and_the_running_pods(api, kubeconfig, tmp_path):
    api.k.resources[PODS] = kmock.ResourceInfo(kind="Pod", namespaced=True, verbs=VERBS, subresources={"status"})
    t0 = grid_start()
    # dirty now, clean from +10 s to +42 s, then very dirty: 24 s of work (at 250 W) fit the
    # clean stretch slowed down, which emits less than at full power (a window below 250 W).
    # (A running job's minRunDuration remainder is planned at a cap chosen with the rest of its
    # work, so the cap may change around the run's first slots: the test asks no exact sequence.)
    values = [400.0] * 5 + [100.0] * 16 + [900.0] * 200
    intensity = write_intensity(tmp_path / "ci.csv", t0, STEP, values)
    env = operator_env(tmp_path, kubeconfig, intensity)
    with run_operator(tmp_path, env) as op:
        await api.create(TJ, capped_job("capped"))
        job = await wait_for("the Job", lambda: job_of(api, "capped"), op=op)
        # created while it waits: the cap of now, maxWatts, on the pod template for the node agent
        assert job["spec"]["template"]["metadata"]["annotations"] == {CAP_ANNOTATION: "250"}, job["spec"]["template"]

        async def capped_plan():
            st = await status_of(api, "capped")
            ws = (st.get("plan") or {}).get("windows") or []
            return st if any((w.get("capWatts") or 250) < 250 for w in ws) else None

        st = await wait_for("a window at a cap below maxWatts in status", capped_plan, op=op)
        assert all("capWatts" in w for w in st["plan"]["windows"]), st["plan"]

        await wait_for("the run in the window", lambda: _running(api, "capped"), timeout=40, op=op)
        # the Job controller's part: a pod from the template, and the Job's pod counts
        await api.create(PODS, pod("capped-run-x7k2p", "capped-run", "250"))
        await api.create(PODS, pod("other-run-q9z4m", "other-run", "250"))
        await api.patch(JOBS, NS, "capped-run", {"status": {"active": 1, "ready": 1}})

        async def below_max():
            value = await cap_on(api, "capped-run-x7k2p")
            return value if value is not None and float(value) < 250 else None

        low = await wait_for("the window's cap on the running pod", below_max, timeout=30, op=op)
        assert 150 <= float(low) < 250

        async def at_max():
            return await cap_on(api, "capped-run-x7k2p") == "250"

        # the cap of now goes back to maxWatts (the min-run remainder of the run, or the end of
        # the clean stretch): published again, with no change of the Job in between
        await wait_for("maxWatts again on the running pod", at_max, timeout=40, op=op)
        st = await status_of(api, "capped")
        assert st["phase"] == "Running" and st["progress"]["runs"] == 1, st
        assert await cap_on(api, "other-run-q9z4m") == "250"
        patches = [r for r in api.requests_to("patch", "/pods/")]
        assert patches and all("/pods/capped-run-x7k2p" in str(r.url) for r in patches), [str(r.url) for r in patches]
        assert all("fieldManager=greenml-operator" in str(r.url) for r in patches)

    # a restart forgets what was published: the pods say it, and the cap of now is published again
    await api.patch(PODS, NS, "capped-run-x7k2p", {"metadata": {"annotations": {CAP_ANNOTATION: "999"}}})

    async def republished():
        value = await cap_on(api, "capped-run-x7k2p")
        return value if value != "999" else None

    with run_operator(tmp_path, env) as op:
        value = await wait_for("the cap of now re-published after the restart", republished, timeout=30, op=op)
        assert 150 <= float(value) <= 250
        assert op.alive()


async def _running(api, name):
    job = await job_of(api, name)
    return job if job and job["spec"].get("suspend") is False else None
