"""The report on fault runs: the faults section, exactly-once executions, journals, old run dirs.

Run directories are written by ``tests.fault_support`` (the server's own schema, one journal per
worker); every expectation is derived from the scenario's data, not written by hand.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
from junitparser import Failure, JUnitXml

from tests.fault_support import (
    Exec,
    FaultRun,
    fault_record,
    kill_worker,
    plain_run,
    run_again,
    write_fault_run,
)
from tests.report_support import SERVER, SimJob, build_run_dir
from torc_stress.report import faults, journals, plot
from torc_stress.report.analysis import Level, fault_windows, stage_scaling
from torc_stress.report.checks import Check, Status
from torc_stress.report.command import evaluate, report_command
from torc_stress.report.jsonout import load_schema
from torc_stress.report.overview import RunAnalysis

EXACTLY_ONCE = "every_job_completed_exactly_once"


def _report(run_dir: Path) -> tuple[int, str]:
    out = io.StringIO()
    return report_command(run_dir, out), out.getvalue()


def _checks(run_dir: Path) -> tuple[RunAnalysis, dict[str, Check]]:
    analysis, checks = evaluate(run_dir)
    return analysis, {c.name: c for c in checks}


def _killed(name_target: bool = True) -> tuple[FaultRun, list[SimJob], float]:
    """Worker 1 is killed half-way through its first stage-2 job."""
    run = plain_run()
    first = run.job("stage2_", 0)
    assert first.start is not None and first.end is not None
    at = first.start + (first.end - first.start) / 2
    return run, kill_worker(run, at, name_target=name_target), at


def test_a_run_without_faults_skips_the_faults_check_and_passes_exactly_once(
        tmp_path: Path) -> None:
    run_dir = write_fault_run(tmp_path, plain_run())
    _, checks = _checks(run_dir)
    assert checks["faults_injected"].status is Status.SKIP
    assert checks[EXACTLY_ONCE].status is Status.PASS
    code, text = _report(run_dir)
    assert code == 0, text
    assert "(no faults asked for)" in text


def test_a_killed_worker_whose_jobs_ran_again_passes_and_fills_the_faults_section(
        tmp_path: Path) -> None:
    run, victims, at = _killed()
    analysis, checks = _checks(write_fault_run(tmp_path, run))
    assert checks[EXACTLY_ONCE].status is Status.PASS, checks[EXACTLY_ONCE].detail
    assert checks["faults_injected"].status is Status.PASS
    (fault,) = analysis.faults.faults
    assert checks[f"fault_recovery[{fault.fault.spec}]"].status is Status.PASS
    t0 = min(j.ready for j in run.jobs if j.ready is not None)
    assert fault.injected_s == pytest.approx(at - t0)
    assert fault.requeued == len(victims) and len(fault.expiries) == 1
    assert fault.jobs_seen == {j.id: 2 for j in victims}
    assert fault.attempts == {2: len(victims)}
    next_end = min(j.end for j in run.jobs if j.end is not None and j.end > at)
    assert fault.recovery_s == pytest.approx(next_end - at)
    assert fault.recovery_from_end_s is None
    assert fault.requeued_running_s == pytest.approx(min(j.start for j in victims) - at)
    assert fault.requeued_done_s == pytest.approx(max(j.end for j in victims) - at)
    assert analysis.faults.attempts == {1: len(run.jobs) - len(victims), 2: len(victims)}
    assert analysis.faults.extra_attempts == analysis.faults.requeued_in_log == len(victims)
    assert analysis.executions.retried == tuple(sorted(j.id for j in victims))
    assert analysis.executions.unexited == len(victims)


def test_the_faults_section_and_lease_figures_appear_in_every_output(tmp_path: Path) -> None:
    run, victims, _ = _killed()
    run_dir = write_fault_run(tmp_path, run)
    _, text = _report(run_dir)
    spec = run.faults[0]["spec"]
    faults_section = text.split("Faults\n", 1)[1].split("\n\n", 1)[0]
    assert spec in faults_section and "kill-worker" in faults_section
    assert "Server contention: leases" in text
    doc = json.loads((run_dir / "report.json").read_text())
    assert doc["faults"]["items"][0]["requeued"] == len(victims)
    assert doc["faults"]["attempts"] == {"1": len(run.jobs) - len(victims), "2": len(victims)}
    assert doc["contention"]["leases"] == run.leases
    cases = [case for suite in JUnitXml.fromfile(str(run_dir / "junit.xml")) for case in suite]
    assert {"faults_injected", EXACTLY_ONCE, f"fault_recovery[{spec}]"} <= {c.name for c in cases}
    failed = {c.name for c in cases if any(isinstance(r, Failure) for r in c.result)}
    # waiting out the lease stretches stage 2: the fault's doing, so it is left out
    assert failed == set(), text


def _spawned_twice(run: FaultRun) -> tuple[SimJob, str]:
    job = run.job("stage1_", 3)
    assert job.end is not None
    run_again(run, job, worker=3, attempt=1, spawn=job.end + 0.01, seconds=0.1)
    return job, "double executions (one attempt spawned twice)"


def _overlapping_attempts(run: FaultRun) -> tuple[SimJob, str]:
    job = run.job("stage1_", 2)
    assert job.start is not None and job.end is not None
    first = next(e for e in run.execs if e.job_id == job.id)
    first.rc, first.killed = -9, True
    run_again(run, job, worker=4, attempt=2, spawn=(job.start + job.end) / 2, seconds=0.1)
    return job, "overlapping executions of one job"


def _exit_zero_twice(run: FaultRun) -> tuple[SimJob, str]:
    job = run.job("stage1_", 1)
    assert job.end is not None
    run_again(run, job, worker=4, attempt=2, spawn=job.end + 0.01, seconds=0.1)
    return job, "jobs with exit 0 in more than one attempt (a completion was lost)"


def _two_results(run: FaultRun) -> tuple[SimJob, str]:
    job = run.job("stage1_", 4)
    run.extra_results.append((job.id, 2))
    return job, "jobs with more than one successful result"


CASES: dict[str, Callable[[FaultRun], tuple[SimJob, str]]] = {
    "one attempt spawned twice": _spawned_twice,
    "a second attempt spawned while the first still ran": _overlapping_attempts,
    "two successful results in the database": _two_results,
}


def test_a_job_run_again_after_its_completion_was_lost_is_counted_but_passes(
        tmp_path: Path) -> None:
    run = plain_run()
    _exit_zero_twice(run)  # one successful result: the lost completion changed nothing
    analysis, checks = _checks(write_fault_run(tmp_path, run))
    assert checks[EXACTLY_ONCE].status is Status.PASS
    rows = {c.name: c.measured for c in analysis.executions.counts()}
    assert rows["jobs with exit 0 in more than one attempt (a completion was lost)"] == 1


@pytest.mark.parametrize("case", list(CASES))
def test_a_job_not_run_exactly_once_fails_the_check_and_is_named(case: str,
                                                                 tmp_path: Path) -> None:
    run = plain_run()
    job, count = CASES[case](run)
    analysis, checks = _checks(write_fault_run(tmp_path, run))
    check = checks[EXACTLY_ONCE]
    assert check.status is Status.FAIL
    assert check.measured == 1 and f"{job.name} (id {job.id})" in check.detail
    out = {c.name for c in analysis.executions.counts() if not c.ok}
    assert out == {count} | ({"jobs with exactly one successful result"}
                             if "result" in count else set())


def test_a_worker_that_died_without_a_kill_on_record_keeps_its_job_running(
        tmp_path: Path) -> None:
    """Without the fault naming its pid, the dead worker's job counts as running to the end."""
    run, victims, _ = _killed(name_target=False)
    analysis, checks = _checks(write_fault_run(tmp_path, run))
    assert checks[EXACTLY_ONCE].status is Status.FAIL
    assert {o.job_id for o in analysis.executions.overlaps} == {j.id for j in victims}
    assert all(f"{j.name} (id {j.id})" in checks[EXACTLY_ONCE].detail for j in victims)


def test_a_fault_that_never_triggered_fails_faults_injected(tmp_path: Path) -> None:
    run = plain_run()
    run.faults.append(fault_record("restart-server@stage9", "restart-server", None, None, None))
    run_dir = write_fault_run(tmp_path, run)
    _, checks = _checks(run_dir)
    assert checks["faults_injected"].status is Status.FAIL
    assert "restart-server@stage9" in checks["faults_injected"].detail
    assert checks["fault_recovery[restart-server@stage9]"].status is Status.SKIP
    code, text = _report(run_dir)
    assert code == 1 and "not triggered" in text.split("Faults\n", 1)[1]
    failed = {case.name for suite in JUnitXml.fromfile(str(run_dir / "junit.xml"))
              for case in suite if any(isinstance(r, Failure) for r in case.result)}
    assert failed == {"faults_injected"}


def test_an_old_run_directory_without_journals_or_faults_does_not_fail_and_says_so(
        tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path)
    analysis, checks = _checks(run_dir)
    assert checks[EXACTLY_ONCE].status is Status.PASS
    assert "no execution journals" in checks[EXACTLY_ONCE].detail
    assert checks["faults_injected"].status is Status.SKIP
    assert not analysis.data.attempts_recorded
    code, text = _report(run_dir)
    assert code == 0, text
    assert "(no execution journals in the run directory" in text
    assert "Server contention: leases" not in text


def test_a_partition_is_measured_from_its_end_too_and_shaded_on_the_timeline(
        tmp_path: Path) -> None:
    run = plain_run()
    job = run.job("stage2_", 0)
    assert job.start is not None
    start, end = job.start, job.start + 1.0
    run.faults.append(fault_record("partition:w2:1@stage2", "partition", "w2", start, end,
                                   seconds=1.0))
    analysis, checks = _checks(write_fault_run(tmp_path, run))
    (fault,) = analysis.faults.faults
    ends = sorted(j.end for j in run.jobs if j.end is not None)
    assert fault.recovery_from_end_s == pytest.approx(next(t for t in ends if t > end) - end)
    assert checks["fault_recovery[partition:w2:1@stage2]"].measured == fault.recovery_from_end_s
    (mark,) = plot.fault_marks(analysis)
    assert (mark.at, mark.until, mark.label) == (pytest.approx(start), pytest.approx(end),
                                                 "partition w2")


SCENARIOS: dict[str, Callable[[Path], Path]] = {
    "no faults": lambda root: write_fault_run(root, plain_run()),
    "a killed worker": lambda root: write_fault_run(root, _killed()[0]),
    "a double execution": lambda root: write_fault_run(root, _with(_spawned_twice)),
    "an old run directory": build_run_dir,
}


def _with(mutate: Callable[[FaultRun], object]) -> FaultRun:
    run = plain_run()
    mutate(run)
    return run


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_report_json_validates_against_the_schema(scenario: str, tmp_path: Path) -> None:
    run_dir = SCENARIOS[scenario](tmp_path)
    _report(run_dir)
    jsonschema.validate(json.loads((run_dir / "report.json").read_text()), load_schema())
    assert (run_dir / "timeline.png").stat().st_size > 0


def _fault(kind: str, host: str | None, injected: float | None) -> faults.Fault:
    return faults.Fault(f"{kind}:{host}", kind, host, None, None, None, injected, injected,
                        None, (), None)


def _expiry(t: float | None, host: str) -> faults.LeaseExpiry:
    return faults.LeaseExpiry(1, t, 1, host, 1, 0, 1)


ATTRIBUTION = [
    ("an expiry before every fault belongs to none", 5.0, "w1", None),
    ("an expiry goes to the latest fault before it", 25.0, "w9", 1),
    ("a fault on the expired node's host wins over a later one elsewhere", 25.0, "w1", 0),
    ("an expiry without a readable time belongs to none", None, "w1", None),
]


@pytest.mark.parametrize(("case", "t", "host", "owner"), ATTRIBUTION,
                         ids=[c[0] for c in ATTRIBUTION])
def test_lease_expiries_are_attributed_to_faults(case: str, t: float | None, host: str,
                                                 owner: int | None) -> None:
    asked = [_fault("kill-worker", "w1", 10.0), _fault("restart-server", None, 20.0),
             _fault("partition", "w2", None)]
    assert faults.attribute(asked, _expiry(t, host)) == owner


def test_the_server_log_line_of_a_lease_expiry_is_parsed() -> None:
    line = ("2027-01-15T08:00:05.250Z WARNING torc_stress.server.leases compute node lease "
            "expired compute_node_id=3 hostname=w2 requeued=4 pending=1 running=3")
    (expiry,) = faults.scan_lease_expiries(["noise", line])
    assert (expiry.line, expiry.compute_node_id, expiry.hostname) == (2, 3, "w2")
    assert (expiry.requeued, expiry.pending, expiry.running) == (4, 1, 3)
    assert expiry.t == faults.log_time(line) and expiry.t is not None


JOURNAL_LINES = [
    ('{"e": "spawn", "job_id": 7, "attempt": 1, "t": 1.5, "node": "w1", "pid": 9, '
     '"compute_node_id": 2}', "spawn"),
    ('{"e": "exit", "job_id": 7, "attempt": 1, "t": 2.5, "rc": 0, "killed": false}', "exit"),
    ('{"e": "exit", "job_id": 7, "attempt": 1, "t": 2.', None),
    ('{"e": "start", "job_id": 7, "attempt": 1, "t": 2.5}', None),
    ('{"e": "spawn", "job_id": "7", "attempt": 1, "t": 2.5}', None),
    ('[1, 2]', None),
]


@pytest.mark.parametrize(("line", "kind"), JOURNAL_LINES, ids=[k or "bad" for _, k in
                                                               JOURNAL_LINES])
def test_a_journal_line_is_an_event_or_counted_as_bad(line: str, kind: str | None) -> None:
    journal = journals.parse_journal("w1", "hosts/w1/executions_w1_9.jsonl", [line, ""])
    assert [e.kind for e in journal.events] == ([kind] if kind else [])
    assert journal.bad_lines == (0 if kind else 1)
    assert (journal.node, journal.pid) == ("w1", 9)


def test_an_exit_closes_the_earliest_open_spawn_of_its_attempt(tmp_path: Path) -> None:
    run = plain_run()
    job = run.job("stage1_", 0)
    assert job.end is not None
    run.execs.append(Exec(1, job.id, 1, job.end + 1.0, None))
    analysis, _ = _checks(write_fault_run(tmp_path, run))
    mine = [e for e in analysis.executions.executions if e.job_id == job.id]
    assert [(e.exited, e.rc) for e in mine] == [(True, 0), (False, None)]
    assert analysis.executions.double_spawns == {(job.id, 1): 2}
    assert SERVER not in {e.journal.split("/")[1] for e in mine}


def _stage(depth: int, start: float, end: float) -> Level:
    return Level(depth, "stage", f"stage{depth}", (depth,), {"completed": 1}, start, start, end)


@pytest.mark.parametrize("windows,judged,excused", [
    ([], 3, 0),
    ([(11.0, 14.0)], 2, 1),  # the fault hit stage 2 only
    ([(0.5, 25.0)], 0, 3),
], ids=["no-fault", "one-stage-hit", "every-stage-hit"])
def test_stages_a_fault_disturbed_are_left_out_of_the_scaling_figures(
        windows: list[tuple[float, float]], judged: int, excused: int) -> None:
    levels = [_stage(0, 0.0, 5.0), _stage(2, 10.0, 20.0), _stage(4, 21.0, 24.0)]
    scaling = stage_scaling(levels, windows)
    assert (scaling["stages"], scaling["excused"]) == (judged, excused)
    if judged == 2:
        assert scaling["max_later_s"] == 3.0  # the stretched stage is not the slowest any more


def test_a_fault_disturbs_from_its_injection_until_its_end_plus_the_lease_and_slack() -> None:
    windows = fault_windows([(100.0, None)], lease_s=5.0)
    assert windows == [(100.0, 107.0)]
    assert fault_windows([(None, None)], lease_s=5.0) == []


def test_a_partition_the_run_s_end_cut_short_has_nothing_to_recover_and_is_skipped(
        tmp_path: Path) -> None:
    run = plain_run()
    last = max(j.end for j in run.jobs if j.end is not None)
    start = run.job("stage2_", 0).start
    assert start is not None
    run.faults.append(fault_record("partition:w2:9@stage2", "partition", "w2", start, last + 0.1,
                                   seconds=9.0))
    _, checks = _checks(write_fault_run(tmp_path, run))
    check = checks["fault_recovery[partition:w2:9@stage2]"]
    assert check.status is Status.SKIP and "before the fault ended" in check.detail
