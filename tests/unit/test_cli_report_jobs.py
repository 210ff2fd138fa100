"""`greenml report --from-sim RESULT.json --jobs JOBS.csv`: a JOBS.csv that is not the one
the simulation ran is an error (it used to be accepted silently)."""
from __future__ import annotations

import json

from greenml.cli import main

JOBS = """name,submit_utc,duration_minutes,deadline_utc,gpus,watts_per_gpu,interruptible
a,2024-01-02T00:00:00Z,120,2024-01-03T00:00:00Z,2,400,false
"""


def _result(name="a", gpus=2, watts=800.0):
    return {"jobs": [{"name": name, "runs": [["2024-01-02T00:00:00Z", "2024-01-02T02:00:00Z"]], "grams": 100.0,
                      "run_now_grams": 120.0, "deadline_met": True, "gpus": gpus, "watts": watts}],
            "summary": {"jobs": 1}}


def _report(tmp_path, capsys, result, jobs=JOBS):
    (tmp_path / "r.json").write_text(json.dumps(result))
    (tmp_path / "jobs.csv").write_text(jobs)
    rc = main(["report", "--from-sim", str(tmp_path / "r.json"), "--jobs", str(tmp_path / "jobs.csv"),
               "-o", str(tmp_path / "out.md")])
    return rc, capsys.readouterr().err


def test_matching_jobs_file_is_accepted(tmp_path, capsys):
    rc, err = _report(tmp_path, capsys, _result())
    assert rc == 0 and "does not match" not in err


def test_other_names_are_an_error(tmp_path, capsys):
    rc, err = _report(tmp_path, capsys, _result(name="b"))
    assert rc == 2 and "--jobs does not match" in err and "(b)" in err


def test_other_power_is_an_error(tmp_path, capsys):
    rc, err = _report(tmp_path, capsys, _result(gpus=4, watts=1600.0))
    assert rc == 2 and "job 'a' has 2 GPUs, 800 W in --jobs but 4 GPUs, 1600.0 W in the result" in err


def test_extra_jobs_are_an_error(tmp_path, capsys):
    """A JOBS.csv with jobs the simulation never ran (another scenario, a later edit)."""
    extra = JOBS + "z,2024-01-02T00:00:00Z,60,2024-01-03T00:00:00Z,1,300,false\n"
    rc, err = _report(tmp_path, capsys, _result(), jobs=extra)
    assert rc == 2 and "--jobs does not match" in err and "1 job(s) in it are not in the result (z)" in err
