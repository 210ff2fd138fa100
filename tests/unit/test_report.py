"""`greenml report`: rendered from a fixed simulator result and from CR statuses; figures checked by hand."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest

from greenml.cli import main
from greenml.planning.accounting import AccountingPolicy, embodied_grams
from greenml.report import Report, ReportError, html_page, markdown, rows_from_cluster, rows_from_sim

YEAR_S = 365.25 * 86400

# a fixed `greenml simulate shifting` RESULT.json (its shape), and the JOBS.csv it was made from
RESULT = {
    "jobs": [
        {"name": "ml/a", "runs": [["2024-01-01T00:00:00Z", "2024-01-01T01:00:00Z"]], "grams": 240.0,
         "run_now_grams": 240.0, "deadline_met": True, "completed": True, "reason": "RunNow"},
        {"name": "vision/b", "runs": [["2024-01-01T12:00:00Z", "2024-01-01T13:00:00Z"],
                                      ["2024-01-01T15:00:00Z", "2024-01-01T16:00:00Z"]],
         "grams": 640.0, "run_now_grams": 2560.0, "deadline_met": True, "completed": True, "reason": "Planned"},
    ],
    "summary": {"policy": "greenml", "forecast": "perfect", "jobs": 2, "deadlines_met": 2,
                "start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"},
}
JOBS_CSV = """name,submit_utc,duration_minutes,deadline_utc,gpus,watts_per_gpu,interruptible
ml/a,2024-01-01T00:00:00Z,60,2024-01-01T06:00:00Z,2,300,false
vision/b,2024-01-01T00:00:00Z,120,2024-01-02T00:00:00Z,8,400,true
"""
POWER = {"ml/a": (2, 600.0), "vision/b": (8, 3200.0)}


def sim_report(policy: AccountingPolicy) -> Report:
    rows = rows_from_sim(RESULT, policy, power=POWER)
    return Report("t", "simulation", None, None, policy, tuple(rows))


def test_sim_rows_by_hand():
    policy = AccountingPolicy(pue=1.2, wue_l_per_kwh=1.8)
    by = {r.name: r for r in rows_from_sim(RESULT, policy, power=POWER)}
    a, b = by["a"], by["b"]
    assert (a.namespace, b.namespace) == ("ml", "vision")
    # b: 8 GPUs × 400 W × 2 h = 6.4 kWh; 640 g IT × PUE 1.2 = 768 g; run-now 2560 × 1.2 = 3072 g
    assert b.actual.energy_kwh == pytest.approx(6.4)
    assert b.actual.operational_g == pytest.approx(768.0)
    m = (8 * 150_000 + 2_500_000) * 7200 / (4 * YEAR_S)            # 211.04 g
    assert b.actual.embodied_g == pytest.approx(m)
    assert b.actual.water_l == pytest.approx(6.4 * 1.8)
    assert b.savings.counterfactual_name == "run-now"
    assert b.savings.counterfactual.operational_g == pytest.approx(3072.0)
    assert b.savings.saved_g == pytest.approx(3072.0 - 768.0)           # embodied cancels
    assert a.savings.saved_g == pytest.approx(0.0)


def test_namespace_totals_and_markdown_figures():
    report = sim_report(AccountingPolicy(pue=1.2, wue_l_per_kwh=1.8))
    total = report.total()
    assert total.actual.operational_g == pytest.approx(288.0 + 768.0)
    assert total.saved_g == pytest.approx(2304.0)
    assert total.saved_percent == pytest.approx(100 * 2304.0 / total.counterfactual.total_g)
    md = markdown(report)
    per_ns = md.split("## Workloads")[0]
    lines = {ln.split("|")[1].strip(): ln for ln in per_ns.splitlines() if ln.startswith("| ")}
    assert "| 6.400 | 7.680 | 768.0 | 211.0 | 979.0 | 11.5 | 3,283.0 | 2,304.0 | 70.2 |" in lines["vision"]
    assert "| 1,056.0 | 237.4 | 1,293.4 |" in lines["all namespaces"]
    assert "ISO/IEC 21031" in md and "PUE 1.2" in md and "run-now (2 workloads)" in md
    assert "**average**" in md and "Luccioni" in md


def test_html_is_self_contained_with_inline_svg():
    page = html_page(sim_report(AccountingPolicy()))
    assert "<svg" in page and "</svg>" in page
    assert not re.search(r"<(script|img|link)\b", page), "no external resources"
    assert "vision" in page and "2,771 g counterfactual" in page   # 2560 g + 211 g embodied (PUE 1)
    assert "Water: not reported" in page


def test_sim_without_power_names_the_fix():
    with pytest.raises(ReportError, match=r"jobs\[0\].*--jobs"):
        rows_from_sim(RESULT, AccountingPolicy())
    with pytest.raises(ReportError, match=r"jobs\[0\]\.grams"):
        rows_from_sim({"jobs": [{**RESULT["jobs"][0], "grams": "x"}]}, AccountingPolicy(),
                      power={"ml/a": POWER["ml/a"]})
    with pytest.raises(ReportError, match="not a simulator result"):
        rows_from_sim({"foo": 1}, AccountingPolicy())


def test_inference_result_periods_claim_no_savings():
    result = {"periods": [{"start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z", "grams": 500.0,
                           "kwh": 2.0, "within_budget": True},
                          {"start": "2024-01-02T00:00:00Z", "end": "2024-01-03T00:00:00Z", "grams": 900.0,
                           "kwh": 3.0, "within_budget": False}], "summary": {}}
    (row,) = rows_from_sim(result, AccountingPolicy(pue=1.5), path="llm.json")
    assert row.name == "llm" and row.kind == "InferenceBudget"     # the workload, not its periods
    assert row.actual.operational_g == pytest.approx(1400.0 * 1.5)
    assert row.savings is None
    assert row.note == "2 day periods, 1 within budget, 1 OVER BUDGET"
    assert [p.spent for p in row.budget.periods] == [500.0, 900.0]


def _tj(ns, name, created, **status):
    return {"kind": "TrainingJob", "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
            "spec": {"power": {"gpus": 4}, "template": {}}, "status": status}


def test_cluster_rows_from_statuses():
    tjs = [
        _tj("ml", "old", "2023-12-01T00:00:00Z", usage={"energyKwh": 9.0, "grams": 9.0}),
        _tj("ml", "new", "2024-01-05T00:00:00Z", phase="Succeeded",
            usage={"energyKwh": 4.8, "grams": 1200.0, "source": "power-model (table)"},
            progress={"runSeconds": 3600.0}, plan={"expectedGrams": 1150.0, "runNowGrams": 1900.0,
                                                   "forecastSource": "electricitymaps"}),
    ]
    ibs = [{"kind": "InferenceBudget", "metadata": {"namespace": "web", "name": "llm",
                                                   "creationTimestamp": "2024-01-02T00:00:00Z"},
            "status": {"activeVariant": "int8", "spend": {"grams": 50.0, "energyKwh": 0.2}}}]
    start, end = datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 2, 1, tzinfo=timezone.utc)
    rows = rows_from_cluster(tjs, ibs, AccountingPolicy(), start=start, end=end)
    assert [(r.namespace, r.name) for r in rows] == [("ml", "new"), ("web", "llm")]
    tj = rows[0]
    assert tj.actual.operational_g == 1200.0
    assert tj.actual.embodied_g == pytest.approx(embodied_grams(4, 3600))
    assert tj.savings.saved_g == pytest.approx(750.0)
    assert "electricitymaps" in tj.note
    assert rows[1].savings is None and rows[1].actual.embodied_g == 0.0


def test_cluster_row_of_a_capped_run_holds_its_gpus_for_the_wall_time():
    """A carbon-aware power-capped run: 3,600 s of work (progress) that took 4,500 s at its
    caps (usage.wallSeconds) is 4,500 s of embodied hardware time."""
    tj = _tj("ml", "capped", "2024-01-05T00:00:00Z", phase="Succeeded", progress={"runSeconds": 3600.0},
             usage={"energyKwh": 4.0, "grams": 1000.0, "countedRunSeconds": 3600.0, "wallSeconds": 4500.0})
    (row,) = rows_from_cluster([tj], [], AccountingPolicy())
    assert row.actual.embodied_g == pytest.approx(embodied_grams(4, 4500))
    tj["status"]["usage"]["wallSeconds"] = "soon"
    with pytest.raises(ReportError, match=r"TrainingJob ml/capped: status.usage.wallSeconds"):
        rows_from_cluster([tj], [], AccountingPolicy())


def test_cluster_bad_status_names_object_and_field():
    bad = [_tj("ml", "x", "2024-01-05T00:00:00Z", usage={"energyKwh": -1})]
    with pytest.raises(ReportError, match=r"TrainingJob ml/x: status.usage.energyKwh"):
        rows_from_cluster(bad, [], AccountingPolicy())


def test_cli_markdown_html_json(tmp_path, capsys):
    (tmp_path / "r.json").write_text(json.dumps(RESULT))
    (tmp_path / "jobs.csv").write_text(JOBS_CSV)
    base = ["report", "--from-sim", str(tmp_path / "r.json"), "--jobs", str(tmp_path / "jobs.csv")]
    assert main(base + ["--pue", "1.2"]) == 0
    out = capsys.readouterr().out
    assert "| vision | 1 | 6.400 | 7.680 | 768.0 |" in out
    assert main(base + ["--format", "html", "-o", str(tmp_path / "r.html")]) == 0
    assert "<svg" in (tmp_path / "r.html").read_text()
    assert main(base + ["--format", "json", "-o", str(tmp_path / "r.out.json"), "-n", "vision"]) == 0
    data = json.loads((tmp_path / "r.out.json").read_text())
    assert [w["name"] for w in data["workloads"]] == ["b"]
    assert data["workloads"][0]["savings"]["savedGrams"] == pytest.approx(1920.0)


@pytest.mark.parametrize("extra, message", [
    (["--pue", "0.5"], "pue must be >= 1.0"),
    (["--gpu-lifetime-years", "0"], "gpuLifetimeYears"),
    (["--since", "yesterday"], "--since"),
])
def test_cli_bad_options_exit_2_with_a_message(tmp_path, capsys, extra, message):
    (tmp_path / "r.json").write_text(json.dumps(RESULT))
    (tmp_path / "jobs.csv").write_text(JOBS_CSV)
    assert main(["report", "--from-sim", str(tmp_path / "r.json"), "--jobs", str(tmp_path / "jobs.csv")] + extra) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_file(tmp_path, capsys):
    assert main(["report", "--from-sim", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: cannot read" in capsys.readouterr().err


async def test_cli_reads_the_cluster_through_kube(kmock, tmp_path, monkeypatch, capsys):
    """The cluster path: list both kinds from an API (kmock) with the operator's own client."""
    import asyncio

    from tests.integration.harness import declare_resources, write_kubeconfig

    declare_resources(kmock)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    kmock.objects["greenml.io/v1alpha1/trainingjobs", "ml", "t1"] = _tj(
        "ml", "t1", created, usage={"energyKwh": 1.0, "grams": 300.0}, progress={"runSeconds": 600.0},
        plan={"expectedGrams": 300.0, "runNowGrams": 400.0})
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", str(kmock.url))))
    rc = await asyncio.to_thread(main, ["report", "--since", "1d", "-o", str(tmp_path / "c.md")])
    assert rc == 0, capsys.readouterr().err
    md = (tmp_path / "c.md").read_text()
    assert "| ml | t1 | TrainingJob | measured | 1.000 | 300.0 |" in md
    assert "CR statuses" in md


def _wl(ns, name, created, record=None):
    meta = {"namespace": ns, "name": name, "creationTimestamp": created,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "train", "controller": True}]}
    if record is not None:
        meta["annotations"] = {"greenml.io/carbon-window": json.dumps(record)}
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload", "metadata": meta}


def test_cluster_rows_for_kueue_workloads_from_the_checks_record():
    """A Workload greenml's carbon-window check planned carries its record (usage, the last
    plan): a row like a TrainingJob's; Workloads without a record (other queues) make none."""
    rec = {"state": "Ready", "reason": "Finished", "phase": "Finished", "zone": "DE", "gpus": 4, "watts": 1600.0,
           "plan": {"plannedStart": "2024-01-05T02:00:00Z", "expectedGrams": 1150.0, "runNowGrams": 1900.0,
                    "savingsPercent": 39.47, "forecastSource": "electricitymaps"},
           "usage": {"runSeconds": 3600.0, "energyKwh": 1.6, "grams": 400.0, "source": "power-model (gpu-table)"}}
    wls = [_wl("ml", "job-train-1", "2024-01-05T00:00:00Z", rec), _wl("ml", "job-other", "2024-01-05T00:00:00Z"),
           _wl("ml", "job-old", "2023-12-01T00:00:00Z", rec)]
    start, end = datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 2, 1, tzinfo=timezone.utc)
    [row] = rows_from_cluster([], [], AccountingPolicy(pue=1.5), start=start, end=end, workloads=wls)
    assert (row.namespace, row.name, row.kind, row.basis) == ("ml", "job-train-1", "Workload", "measured")
    assert row.actual.energy_kwh == pytest.approx(1.6) and row.actual.operational_g == pytest.approx(600.0)   # × PUE
    assert row.actual.embodied_g == pytest.approx(embodied_grams(4, 3600))
    assert row.savings.saved_g == pytest.approx((1900.0 - 1150.0) * 1.5)
    assert "Job train" in row.note and "electricitymaps" in row.note and "check Ready" in row.note
    md = markdown(Report("t", "cluster x", start, end, AccountingPolicy(pue=1.5), (row,)))
    assert "job-train-1" in md and "Workload" in md
    bad = _wl("ml", "job-bad", "2024-01-05T00:00:00Z", {**rec, "usage": {"energyKwh": -2}})
    with pytest.raises(ReportError, match=r"Workload ml/job-bad: annotation greenml.io/carbon-window usage.energyKwh"):
        rows_from_cluster([], [], AccountingPolicy(), workloads=[bad])
    broken = _wl("ml", "job-broken", "2024-01-05T00:00:00Z")
    broken["metadata"]["annotations"] = {"greenml.io/carbon-window": "{not json"}
    with pytest.raises(ReportError, match="not JSON"):
        rows_from_cluster([], [], AccountingPolicy(), workloads=[broken])


async def test_cli_reports_kueue_workloads_through_kube(kmock, tmp_path, monkeypatch, capsys):
    """`greenml report` on a cluster with Kueue: the Workload carrying the check's record is a
    row of kind Workload, beside the TrainingJobs; without Kueue (404) there are none and no note."""
    import asyncio

    import kmock as km

    from tests.integration.harness import declare_resources, write_kubeconfig

    declare_resources(kmock)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", str(kmock.url))))
    rc = await asyncio.to_thread(main, ["report", "--since", "1d", "--format", "json", "-o", str(tmp_path / "a.json")])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "a.json").read_text())["workloads"] == []        # no Kueue: 404, nothing said

    kmock.resources["kueue.x-k8s.io/v1beta2/workloads"] = km.ResourceInfo(kind="Workload", namespaced=True,
                                                                          verbs={"get", "list"}, subresources=set())
    rec = {"state": "Ready", "reason": "Finished", "phase": "Finished", "gpus": 2, "watts": 800.0,
           "plan": {"expectedGrams": 60.0, "runNowGrams": 100.0, "forecastSource": "file"},
           "usage": {"runSeconds": 3600.0, "energyKwh": 0.8, "grams": 64.0, "source": "power-model (spec)"}}
    kmock.objects["kueue.x-k8s.io/v1beta2/workloads", "ml", "job-train-1"] = _wl("ml", "job-train-1", created, rec)
    kmock.objects["kueue.x-k8s.io/v1beta2/workloads", "ml", "job-plain"] = _wl("ml", "job-plain", created)
    rc = await asyncio.to_thread(main, ["report", "--since", "1d", "--format", "json", "-o", str(tmp_path / "b.json")])
    assert rc == 0, capsys.readouterr().err
    [row] = json.loads((tmp_path / "b.json").read_text())["workloads"]
    assert (row["namespace"], row["name"], row["kind"]) == ("ml", "job-train-1", "Workload")
    assert row["actual"]["energyKwh"] == 0.8 and row["actual"]["operationalGrams"] == 64.0   # PUE 1 by default
    assert row["savings"]["savedGrams"] == pytest.approx(40.0) and "Job train" in row["note"]
