"""The report on real runs: a real server, real workers, a gathered run directory.

Positive control: a small complete run passes every check. Negative controls: a slow unblocker
fails the transition check, a run stopped early fails completion and names the unfinished stages,
an injected ERROR "database is locked" line fails the lock check, a journal that ran a job a
second time fails the exactly-once check. No expected numbers are written
by hand: every expectation is derived from the run's own database.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from junitparser import Failure, JUnitXml

from tests.conftest import ServerProcess, start_server
from torc_stress.report.checks import Status, Thresholds
from torc_stress.report.command import evaluate, report_command
from torc_stress.report.jsonout import load_schema
from torc_stress.server.backup import backup_database
from torc_stress.statuses import JobStatus
from torc_stress.workflows import contention_workflow, write_workflow

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SERVER_HOST = "ctl"
OUTPUTS = ("report.txt", "report.json", "junit.xml", "timeline.png")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "torc_stress.cli", *args]


def _create(url: str, tmp: Path, stages: int, jobs_per_stage: int) -> int:
    spec = write_workflow(contention_workflow(stages, jobs_per_stage), tmp / "workflow.yaml")
    done = subprocess.run(_cli("--url", url, "-f", "json", "workflows", "create", str(spec)),
                          env=ENV, capture_output=True, text=True, timeout=120, check=True)
    return int(json.loads(done.stdout)["id"])


def _start_workers(url: str, workflow_id: int, run_dir: Path,
                   hosts: tuple[str, ...]) -> list[subprocess.Popen[bytes]]:
    procs = []
    for host in hosts:
        out = run_dir / "hosts" / host
        out.mkdir(parents=True, exist_ok=True)
        procs.append(subprocess.Popen(
            _cli("--url", url, "workflows", "run", str(workflow_id), "--output-dir", str(out),
                 "--node-name", host, "--max-parallel-jobs", "4",
                 "--log-file", str(out / "worker-1.log")),
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def _finish(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _completed(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM job WHERE status = ?",
                                (int(JobStatus.COMPLETED),)).fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def _gather(server: ServerProcess, run_dir: Path, workflow_id: int, outcome: str) -> Path:
    server.stop()
    host = run_dir / "hosts" / SERVER_HOST
    host.mkdir(parents=True, exist_ok=True)
    backup_database(server.db_path, host / "server.db")
    shutil.copy(server.log_path, host / "server.log")
    if server.metrics_path.exists():
        shutil.copy(server.metrics_path, host / "metrics.json")
    run = {"schema": 1, "run_id": run_dir.name, "outcome": outcome,
           "server": {"host": SERVER_HOST, "url": "loopback"},
           "workflow": {"id": workflow_id}, "settings": {}}
    (run_dir / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return run_dir


def real_run(tmp: Path, *, stages: int, jobs_per_stage: int, server_args: tuple[str, ...] = (),
             stop_after_completed: int | None = None) -> Path:
    """Runs a contention workflow on a real server with two worker hosts; gathers a run dir.

    With ``stop_after_completed``, the workers are stopped (SIGTERM) as soon as that many jobs
    have completed.
    """
    run_dir = tmp / "run"
    server = start_server(tmp, "--log-level", "debug", *server_args)
    try:
        workflow_id = _create(server.url, tmp, stages, jobs_per_stage)
        procs = _start_workers(server.url, workflow_id, run_dir, ("w1", "w2"))
        try:
            if stop_after_completed is not None:
                deadline = time.monotonic() + 120
                while _completed(server.db_path) < stop_after_completed:
                    assert time.monotonic() < deadline, "the run made no progress"
                    time.sleep(0.02)
                for proc in procs:
                    proc.send_signal(signal.SIGTERM)
            _finish(procs, timeout=120)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        outcome = "completed" if stop_after_completed is None else "interrupted"
        return _gather(server, run_dir, workflow_id, outcome)
    finally:
        server.stop()


def _report(run_dir: Path) -> tuple[int, str]:
    out = io.StringIO()
    return report_command(run_dir, out), out.getvalue()


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One small complete run (3 stages x 50 jobs), shared by the tests that only read it."""
    yield real_run(tmp_path_factory.mktemp("complete"), stages=3, jobs_per_stage=50)


def _copy(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns(*OUTPUTS)))


def test_a_small_complete_run_passes_every_check(complete_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(complete_run, tmp_path / "run")
    code, text = _report(run_dir)
    assert code == 0, text
    doc = json.loads((run_dir / "report.json").read_text())
    assert doc["jobs"]["statuses"] == {"completed": doc["jobs"]["total"]}
    assert [s["kind"] for s in doc["stages"]] == ["stage", "barrier"] * 3
    assert {h["host"] for h in doc["hosts"]} == {"w1", "w2"}
    assert doc["faults"]["attempts"] == {"1": doc["jobs"]["total"]}
    exactly_once = next(c for c in doc["checks"] if c["name"] == "every_job_completed_exactly_once")
    assert exactly_once["status"] == "PASS"


def test_a_job_run_a_second_time_in_a_journal_fails_the_exactly_once_check(
        complete_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(complete_run, tmp_path / "run")
    conn = sqlite3.connect(f"file:{run_dir / 'hosts' / SERVER_HOST / 'server.db'}?mode=ro",
                           uri=True)
    try:
        job_id, name, start, end = conn.execute(
            "SELECT id, name, start_time, end_time FROM job ORDER BY id LIMIT 1").fetchone()
    finally:
        conn.close()
    lines = [event for t in (start, end + 1.0) for event in (
        {"e": "spawn", "job_id": job_id, "attempt": 1, "t": t, "node": "w1", "pid": 99999,
         "compute_node_id": 1},
        {"e": "exit", "job_id": job_id, "attempt": 1, "t": t + (end - start), "rc": 0,
         "killed": False})]
    journal = run_dir / "hosts" / "w1" / "executions_w1_99999.jsonl"
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
    _, checks = evaluate(run_dir)
    check = next(c for c in checks if c.name == "every_job_completed_exactly_once")
    assert check.status is Status.FAIL
    assert f"{name} (id {job_id})" in check.detail
    assert "hosts/w1/executions_w1_99999.jsonl" in check.where


def test_the_report_files_validate_and_reproduce_on_a_copy_elsewhere(
        complete_run: Path, tmp_path: Path) -> None:
    first = _copy(complete_run, tmp_path / "a" / "run")
    _report(first)
    jsonschema.validate(json.loads((first / "report.json").read_text()), load_schema())
    xml = JUnitXml.fromfile(str(first / "junit.xml"))
    assert sum(1 for suite in xml for _ in suite) == len(evaluate(first)[1])
    _report(first)
    second = _copy(first, tmp_path / "b" / "elsewhere")
    _report(second)
    for name in OUTPUTS:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_an_injected_lock_error_fails_the_lock_check(complete_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(complete_run, tmp_path / "run")
    log = run_dir / "hosts" / SERVER_HOST / "server.log"
    lines = log.read_text().splitlines()
    injected = ("2026-11-28T21:31:00.000Z ERROR torc_stress.server.writer database is locked "
                "op=complete_job waited_s=45.0")
    log.write_text("\n".join([*lines, injected]) + "\n")
    code, text = _report(run_dir)
    assert code == 1
    assert f"hosts/{SERVER_HOST}/server.log:{len(lines) + 1}" in text
    junit = JUnitXml.fromfile(str(run_dir / "junit.xml"))
    failed = {case.name for suite in junit for case in suite
              if any(isinstance(r, Failure) for r in case.result)}
    assert failed == {"no_database_locked_errors"}


def test_a_missing_server_database_makes_the_run_directory_unusable(
        complete_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(complete_run, tmp_path / "run")
    (run_dir / "hosts" / SERVER_HOST / "server.db").unlink()
    code, text = _report(run_dir)
    assert code == 2
    assert f"hosts/{SERVER_HOST}/server.db" in text


def test_a_slow_unblocker_fails_the_transition_check(tmp_path: Path) -> None:
    delay = Thresholds().transition_in_s + 1.0
    run_dir = real_run(tmp_path, stages=2, jobs_per_stage=10,
                       server_args=("--unblock-delay", f"{delay:g}"))
    analysis, checks = evaluate(run_dir)
    statuses = {c.name: c.status for c in checks}
    barrier = next(lv.label for lv in analysis.levels if lv.kind == "barrier")
    assert statuses["all_jobs_completed"] is Status.PASS
    assert statuses[f"transition_into[{barrier}]"] is Status.FAIL
    code, text = _report(run_dir)
    assert code == 1 and "expected:" in text and "look at:" in text


def test_a_run_stopped_early_fails_completion_and_names_the_unfinished_stages(
        tmp_path: Path) -> None:
    jobs_per_stage = 150
    run_dir = real_run(tmp_path, stages=3, jobs_per_stage=jobs_per_stage,
                       stop_after_completed=jobs_per_stage + 1 + jobs_per_stage // 3)
    analysis, checks = evaluate(run_dir)
    completion = next(c for c in checks if c.name == "all_jobs_completed")
    assert completion.status is Status.FAIL
    unfinished = [lv.label for lv in analysis.levels if lv.statuses.get("completed") != lv.jobs]
    assert unfinished, "the run was stopped too late to leave work undone"
    for label in unfinished:
        assert label in completion.detail
        assert f"stage {label}" in completion.where
    code, _ = _report(run_dir)
    assert code == 1
