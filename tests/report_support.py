"""Builds simulated run directories for the report's unit tests (schema subset of the server DB).

The simulation is arithmetic, not hand-written numbers: stages of N jobs run on P workers, each
job takes ``job_s``, unblocking takes ``hop_s``; a run can be stopped at any moment.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torc_stress.statuses import JobStatus

T0 = 1_800_000_000.0
SERVER = "ctl"

SCHEMA = """
CREATE TABLE workflow (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE job (id INTEGER PRIMARY KEY, workflow_id INTEGER, name TEXT, command TEXT,
  status INTEGER, depth INTEGER, cancel_on_blocking_job_failure INTEGER DEFAULT 0,
  ready_time REAL, claim_time REAL, start_time REAL, end_time REAL);
CREATE TABLE job_depends_on (job_id INTEGER, depends_on_job_id INTEGER, workflow_id INTEGER);
CREATE TABLE compute_node (id INTEGER PRIMARY KEY, hostname TEXT, pid INTEGER);
CREATE TABLE result (id INTEGER PRIMARY KEY, job_id INTEGER, run_id INTEGER, return_code INTEGER,
  completion_time TEXT, exec_time_minutes REAL, compute_node_id INTEGER, status INTEGER);
"""


@dataclass
class SimJob:
    """A simulated job row."""

    id: int
    name: str
    deps: list[int]
    depth: int
    ready: float | None = None
    claim: float | None = None
    start: float | None = None
    end: float | None = None
    node: int = 1


@dataclass
class Simulation:
    """Parameters of a simulated contention workflow run."""

    stages: int = 3
    jobs_per_stage: int = 20
    workers: int = 4
    job_s: float = 0.05
    hop_s: float = 0.003
    stop_at_s: float | None = None
    stage_slowdown: float = 1.0
    jobs: list[SimJob] = field(default_factory=list)

    def run(self) -> list[SimJob]:
        """Simulates the workflow; returns every job with its times (relative seconds)."""
        t = 0.0
        next_id = 1
        previous: list[int] = []
        job_s = self.job_s
        for stage in range(1, self.stages + 1):
            ids = list(range(next_id, next_id + self.jobs_per_stage))
            next_id += self.jobs_per_stage
            for k, job_id in enumerate(ids):
                start = t + 0.001 + (k // self.workers) * job_s
                self.jobs.append(SimJob(job_id, f"stage{stage}_{k:04d}", list(previous),
                                        2 * (stage - 1), t, start - 0.0005, start,
                                        start + job_s, node=1 + k % self.workers))
            last_end = max(j.end or 0.0 for j in self.jobs[-len(ids):])
            ready = last_end + self.hop_s
            barrier = SimJob(next_id, f"barrier_stage{stage}_complete", ids, 2 * stage - 1,
                             ready, ready + 0.0005, ready + 0.001, ready + 0.001 + job_s)
            self.jobs.append(barrier)
            previous = [next_id]
            next_id += 1
            t = (barrier.end or 0.0) + self.hop_s
            job_s *= self.stage_slowdown
        return self.jobs


def status_of(job: SimJob, stop: float | None) -> tuple[int, SimJob]:
    """Cuts a job's times at the stop moment and returns its status then."""
    def cut(value: float | None) -> float | None:
        return value if value is not None and (stop is None or value <= stop) else None

    cut_job = SimJob(job.id, job.name, job.deps, job.depth, cut(job.ready), cut(job.claim),
                     cut(job.start), cut(job.end), job.node)
    for attr, status in (("end", JobStatus.COMPLETED), ("start", JobStatus.RUNNING),
                         ("claim", JobStatus.PENDING), ("ready", JobStatus.READY)):
        if getattr(cut_job, attr) is not None:
            return int(status), cut_job
    return int(JobStatus.BLOCKED), cut_job


def write_db(path: Path, jobs: list[SimJob], stop: float | None, workers: int) -> None:
    """Writes the simulated jobs into a SQLite file with the server's schema subset."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA)
        conn.execute("INSERT INTO workflow VALUES (1, 'contention')")
        for n in range(1, workers + 1):
            conn.execute("INSERT INTO compute_node VALUES (?, ?, ?)", (n, f"w{1 + n % 2}", n))
        for job in jobs:
            status, cut_job = status_of(job, stop)
            times = [None if v is None else T0 + v
                     for v in (cut_job.ready, cut_job.claim, cut_job.start, cut_job.end)]
            conn.execute("INSERT INTO job VALUES (?,?,?,?,?,?,0,?,?,?,?)",
                         (job.id, 1, job.name, "echo", status, job.depth, *times))
            conn.executemany("INSERT INTO job_depends_on VALUES (?,?,1)",
                             [(job.id, d) for d in job.deps])
            if status == JobStatus.COMPLETED:
                conn.execute("INSERT INTO result (job_id, run_id, return_code, compute_node_id,"
                             " status) VALUES (?,1,0,?,5)", (job.id, job.node))
        conn.commit()
    finally:
        conn.close()


def metrics_doc(completions: int) -> dict[str, Any]:
    """A server metrics document shaped like docs/internals.md."""
    summ = {"count": completions, "sum": 1.0, "p50": 0.1, "p90": 0.2, "p99": 0.3, "max": 0.4}
    return {
        "schema": 1,
        "server": {"version": "0.1.0", "pid": 1},
        "write_path": {"complete_job": {"count": completions, "busy_retries": 0,
                                        "wait_ms": summ, "hold_ms": summ},
                       "claim": {"count": completions, "busy_retries": 2, "wait_ms": summ,
                                 "hold_ms": summ}},
        "transactions": {"count": 10, "ops": completions, "batch_size": summ, "hold_ms": summ},
        "unblock": {"passes": 3, "completions": completions, "ready": completions, "canceled": 0,
                    "batch_size": summ, "duration_ms": summ, "hop_ms": summ},
        "requests": {"POST /jobs/{id}/complete_job/{status}/{run_id}": {
            "count": completions, "errors": 0, "latency_ms": summ}},
        "lock_errors": 0,
    }


def build_run_dir(root: Path, sim: Simulation | None = None, *,
                  log_lines: list[str] | None = None) -> Path:
    """Writes a complete simulated run directory under ``root`` and returns its path."""
    sim = sim or Simulation()
    jobs = sim.run()
    run_dir = root / "run-sim"
    host = run_dir / "hosts" / SERVER
    host.mkdir(parents=True)
    write_db(host / "server.db", jobs, sim.stop_at_s, sim.workers)
    lines = log_lines if log_lines is not None else [
        "2026-11-28T21:30:12.123Z INFO torc_stress.server.main server started port=1",
        "2026-11-28T21:30:12.124Z DEBUG torc_stress.server.writer database is locked, retrying "
        "op=complete_job attempt=1 waited_ms=1.0",
    ]
    (host / "server.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (host / "metrics.json").write_text(json.dumps(metrics_doc(len(jobs))), encoding="utf-8")
    worker_dir = run_dir / "hosts" / "w1"
    worker_dir.mkdir(parents=True)
    (worker_dir / "worker_w1_11_metrics.json").write_text(json.dumps({
        "schema": 1, "node": "w1", "pid": 11, "jobs_run": 3,
        "latency_ms": {"complete_job": {"count": 3, "sum": 3.0, "p50": 1.0, "p90": 1.0,
                                        "p99": 2.0, "max": 2.0}}}), encoding="utf-8")
    run = {"schema": 1, "run_id": "sim-0001", "started_at": "2027-01-15T08:00:00Z",
           "finished_at": None, "server": {"host": SERVER, "url": "http://127.0.0.1:1"},
           "workflow": {"id": 1, "jobs": len(jobs)}, "settings": {"stages": sim.stages},
           "outcome": "completed" if sim.stop_at_s is None else "deadline"}
    (run_dir / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return run_dir
