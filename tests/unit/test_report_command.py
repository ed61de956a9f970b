"""The report command on simulated run directories: verdicts, exit codes, files, determinism."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from junitparser import Failure, JUnitXml

from tests.report_support import SERVER, Simulation, build_run_dir
from torc_stress.errors import ConfigError
from torc_stress.report.checks import Status, Thresholds
from torc_stress.report.command import evaluate, report_command
from torc_stress.report.jsonout import load_schema

OUTPUTS = ("report.txt", "report.json", "junit.xml")


def _report(run_dir: Path) -> tuple[int, str]:
    out = io.StringIO()
    return report_command(run_dir, out), out.getvalue()


def _by_name(run_dir: Path, thresholds: Thresholds | None = None) -> dict[str, Status]:
    _, checks = evaluate(run_dir, thresholds)
    return {c.name: c.status for c in checks}


def test_a_complete_smooth_run_passes_every_check(tmp_path: Path) -> None:
    code, text = _report(build_run_dir(tmp_path))
    assert code == 0, text
    assert "[  PASSED  ]" in text
    for name in (*OUTPUTS, "timeline.png"):
        assert (tmp_path / "run-sim" / name).is_file()


def test_a_slow_unblocker_fails_the_transition_check(tmp_path: Path) -> None:
    thresholds = Thresholds()
    run_dir = build_run_dir(tmp_path, Simulation(hop_s=thresholds.transition_in_s + 0.5))
    statuses = _by_name(run_dir)
    assert statuses["transition_into[barrier_stage1_complete]"] is Status.FAIL
    assert statuses["all_jobs_completed"] is Status.PASS


def test_a_stopped_run_fails_completion_and_names_the_unfinished_stages(tmp_path: Path) -> None:
    sim = Simulation(stages=3, jobs_per_stage=20, job_s=0.05)
    run_dir = build_run_dir(tmp_path, Simulation(stages=3, jobs_per_stage=20, job_s=0.05,
                                                 stop_at_s=sim_stage_two_midpoint(sim)))
    code, text = _report(run_dir)
    assert code == 1
    completion = next(line for line in text.splitlines() if line.startswith("  measured:")
                      and "jobs completed" in line)
    assert "stage2" in completion and "stage3" in completion and "stage1 " not in completion


def sim_stage_two_midpoint(sim: Simulation) -> float:
    """The moment half of stage 2 has completed in an unstopped copy of the simulation."""
    jobs = sim.run()
    ends = sorted(j.end for j in jobs if j.name.startswith("stage2_") and j.end is not None)
    return ends[len(ends) // 2]


def test_an_error_level_lock_line_fails_the_lock_check_and_names_its_line(tmp_path: Path) -> None:
    lines = ["2026-11-28T21:30:12.123Z INFO torc_stress.server.main started",
             "2026-11-28T21:31:00.000Z ERROR torc_stress.server.writer database is locked "
             "op=complete_job waited_s=45.0"]
    code, text = _report(build_run_dir(tmp_path, log_lines=lines))
    assert code == 1
    assert f"hosts/{SERVER}/server.log:2" in text


def test_debug_lock_retries_are_counted_but_do_not_fail(tmp_path: Path) -> None:
    retry = ("2026-11-28T21:30:12.124Z DEBUG torc_stress.server.writer database is locked, "
             "retrying op=claim attempt=1 waited_ms=1.0")
    run_dir = build_run_dir(tmp_path, log_lines=[retry] * 3)
    _report(run_dir)
    doc = json.loads((run_dir / "report.json").read_text())
    assert doc["log"]["lock_retries"] == 3 and doc["verdict"] == "PASS"


def test_a_growing_stage_duration_fails_the_scaling_check(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path, Simulation(job_s=0.5, stage_slowdown=3.0))
    assert _by_name(run_dir)["linear_stage_scaling"] is Status.FAIL


def test_report_json_validates_against_the_shipped_schema(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path, Simulation(stop_at_s=0.4))
    _report(run_dir)
    jsonschema.validate(json.loads((run_dir / "report.json").read_text()), load_schema())


def test_junit_has_one_testcase_per_check_and_failures_carry_a_message(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path, Simulation(stop_at_s=0.4))
    _report(run_dir)
    doc = json.loads((run_dir / "report.json").read_text())
    xml = JUnitXml.fromfile(str(run_dir / "junit.xml"))
    cases = [case for suite in xml for case in suite]
    assert [c.name for c in cases] == [c["name"] for c in doc["checks"]]
    failed = [c for c in cases if any(isinstance(r, Failure) for r in c.result)]
    assert {c.name for c in failed} == {c["name"] for c in doc["checks"] if c["status"] == "FAIL"}
    assert all(r.message for c in failed for r in c.result)


def test_reporting_twice_and_on_a_copy_elsewhere_gives_identical_files(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path / "a")
    _report(run_dir)
    first = {n: (run_dir / n).read_bytes() for n in (*OUTPUTS, "timeline.png")}
    _report(run_dir)
    assert first == {n: (run_dir / n).read_bytes() for n in (*OUTPUTS, "timeline.png")}
    copy = shutil.copytree(run_dir, tmp_path / "elsewhere" / "deeper" / "copy")
    _report(copy)
    assert first == {n: (copy / n).read_bytes() for n in (*OUTPUTS, "timeline.png")}
    assert str(tmp_path) not in "".join(first[n].decode() for n in OUTPUTS)


def test_a_missing_server_database_is_an_unusable_run_directory(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path)
    (run_dir / "hosts" / SERVER / "server.db").unlink()
    code, text = _report(run_dir)
    assert code == 2
    assert "server.db" in text and not (run_dir / "report.json").exists()


def test_a_directory_without_run_json_is_unusable(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path)
    (run_dir / "run.json").unlink()
    code, text = _report(run_dir)
    assert code == 2 and "run.json" in text


def test_thresholds_load_from_yaml_and_reject_unknown_keys(tmp_path: Path) -> None:
    good = tmp_path / "t.yml"
    good.write_text("transition_in_s: 0.01\ntotal_time_s: 60\n")
    assert Thresholds.load(good) == Thresholds(transition_in_s=0.01, total_time_s=60)
    bad = tmp_path / "bad.yml"
    bad.write_text("transition_s: 1\n")
    with pytest.raises(ConfigError, match="transition_s"):
        Thresholds.load(bad)


def test_tighter_thresholds_turn_the_same_run_into_a_failure(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path)
    assert _by_name(run_dir)["total_workflow_time"] is Status.PASS
    assert _by_name(run_dir, Thresholds(total_time_s=0.01))["total_workflow_time"] is Status.FAIL
