"""Builds run directories of fault runs for the report's tests: the server's own schema, journals.

A :class:`FaultRun` starts as a simulated run (``tests.report_support.Simulation``) in which every
job is executed once by the worker the simulation put it on. Scenario functions then change it the
way a fault would (:func:`kill_worker`) or the way a bug would (:func:`run_again`), and
:func:`write_fault_run` writes the run directory: ``server.db`` made with
``torc_stress.server.store``'s schema, the server log, metrics, one execution journal and (unless
the worker was killed) one metrics file per worker, and run.json with its ``faults``.
Times are relative seconds; :data:`T0` is added on writing.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.report_support import SERVER, T0, SimJob, Simulation, metrics_doc
from torc_stress.server.store import create_schema
from torc_stress.statuses import JobStatus

LEASE_S = 5.0
WORKERS = 4


def worker_host(worker: int) -> str:
    """Workers 1 and 2 run on host w1, 3 and 4 on w2 (node name = host name, as the harness)."""
    return f"w{1 + (worker - 1) // 2}"


def worker_pid(worker: int) -> int:
    """A worker's pid."""
    return 100 + worker


@dataclass
class Exec:
    """One execution in a worker's journal (``exit`` None: the worker wrote no exit line)."""

    worker: int
    job_id: int
    attempt: int
    spawn: float
    exit: float | None
    rc: int = 0
    killed: bool = False


@dataclass
class FaultRun:
    """A run's data before it is written: jobs, attempts, executions, faults, log lines."""

    jobs: list[SimJob]
    execs: list[Exec]
    attempts: dict[int, int] = field(default_factory=dict)
    extra_results: list[tuple[int, int]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    killed_workers: set[int] = field(default_factory=set)
    leases: dict[str, Any] | None = None
    journals: bool = True

    def job(self, name_prefix: str, index: int = 0) -> SimJob:
        """The ``index``-th job whose name starts with ``name_prefix``."""
        return [j for j in self.jobs if j.name.startswith(name_prefix)][index]

    @property
    def end(self) -> float:
        """The last moment anything happened."""
        times = [t for j in self.jobs for t in (j.end, j.start) if t is not None]
        times += [e.exit or e.spawn for e in self.execs]
        return max(times)


def plain_run(sim: Simulation | None = None) -> FaultRun:
    """A fault-free run: every job executed once, on its simulated worker, exit 0."""
    jobs = (sim or Simulation(stages=2, jobs_per_stage=8, workers=WORKERS, job_s=0.5)).run()
    execs = [Exec(j.node, j.id, 1, j.start, j.end) for j in jobs
             if j.start is not None and j.end is not None]
    return FaultRun(jobs=jobs, execs=execs, leases={"lease_s": LEASE_S, "expired_nodes": 0,
                                                    "requeued_jobs": 0})


def log_line(t: float, level: str, logger: str, message: str) -> str:
    """A server log line at relative time ``t`` (format of docs/internals.md)."""
    stamp = datetime.fromtimestamp(T0 + t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return f"{stamp} {level} {logger} {message}"


def kill_worker(run: FaultRun, at: float, worker: int = 1, *, name_target: bool = True
                ) -> list[SimJob]:
    """SIGKILLs ``worker`` at ``at``: its running jobs are re-queued and rerun by worker 2.

    The server re-queues them when the lease expires (``LEASE_S`` after the kill); worker 2
    starts them just after. Jobs that depend on them happen that much later; the others keep
    their times, and the jobs the killed worker would have started later run on worker 2. With
    ``name_target`` False the fault's targets do not name the worker's pid (the report then
    cannot tell when it died).

    Returns:
        The re-queued jobs.
    """
    job_s = max((j.end or 0) - (j.start or 0) for j in run.jobs)
    victims = [j for j in run.jobs if j.node == worker and j.start is not None
               and j.end is not None and j.start < at < j.end]
    assert victims, "nothing ran on the worker at that moment"
    _delay_dependents(run, {j.id for j in victims}, at, LEASE_S + job_s + 0.02)
    for e in run.execs:
        if e.worker == worker and e.spawn >= at:
            e.worker = 2
    for job in run.jobs:
        if job.node == worker and (job.start or 0) >= at:
            job.node = 2
    for job in victims:
        next(e for e in run.execs if e.job_id == job.id).exit = None
        job.ready, job.start = at + LEASE_S, at + LEASE_S + 0.01
        job.claim, job.end, job.node = job.start - 0.0005, job.start + job_s, 2
        run.execs.append(Exec(2, job.id, 2, job.start, job.end))
        run.attempts[job.id] = 2
    run.killed_workers.add(worker)
    run.faults.append(fault_record(f"kill-worker:{worker_host(worker)}:1@stage2", "kill-worker",
                                   worker_host(worker), at, at,
                                   targets=[worker_pid(worker)] if name_target else []))
    run.log_lines.append(log_line(
        at + LEASE_S, "WARNING", "torc_stress.server.leases",
        f"compute node lease expired compute_node_id={worker} hostname={worker_host(worker)} "
        f"requeued={len(victims)} pending=0 running={len(victims)}"))
    run.leases = {"lease_s": LEASE_S, "expired_nodes": 1, "requeued_jobs": len(victims)}
    return victims


def _delay_dependents(run: FaultRun, roots: set[int], at: float, delay: float) -> None:
    """Moves every time from ``at`` on of the jobs that depend on ``roots`` ``delay`` later."""
    late = set(roots)
    for job in run.jobs:  # NOTE: simulated jobs come in dependency order
        if late & set(job.deps):
            late.add(job.id)
    late -= roots

    def later(t: float | None) -> float | None:
        return None if t is None else t + delay if t >= at else t

    for job in (j for j in run.jobs if j.id in late):
        job.ready, job.claim = later(job.ready), later(job.claim)
        job.start, job.end = later(job.start), later(job.end)
    for e in (e for e in run.execs if e.job_id in late):
        e.spawn, e.exit = later(e.spawn) or e.spawn, later(e.exit)


def fault_record(spec: str, kind: str, host: str | None, injected: float | None,
                 ended: float | None, *, targets: list[Any] | None = None,
                 seconds: float | None = None, error: str | None = None) -> dict[str, Any]:
    """A run.json ``faults`` entry (times relative; None = never injected)."""
    return {"spec": spec, "kind": kind, "host": host, "count": 1 if kind == "kill-worker" else None,
            "seconds": seconds, "trigger": spec.rsplit("@", 1)[-1],
            "injected_at": None if injected is None else T0 + injected,
            "ended_at": None if ended is None else T0 + ended,
            "method": {"kill-worker": "sigkill", "restart-server": "restart",
                       "partition": "sigstop"}.get(kind),
            "targets": targets or [], "error": error}


def run_again(run: FaultRun, job: SimJob, *, worker: int, attempt: int, spawn: float,
              seconds: float, rc: int = 0) -> None:
    """Adds an execution of ``job`` to ``worker``'s journal (what the check must catch)."""
    run.execs.append(Exec(worker, job.id, attempt, spawn, spawn + seconds, rc))


def _write_db(path: Path, run: FaultRun) -> None:
    conn = sqlite3.connect(path)
    try:
        create_schema(conn)
        conn.execute("INSERT INTO workflow_status (id) VALUES (1)")
        conn.execute("INSERT INTO workflow (id, name, user, timestamp, status_id) "
                     "VALUES (1, 'contention', 'test', 'now', 1)")
        for w in range(1, WORKERS + 1):
            conn.execute(
                "INSERT INTO compute_node (id, workflow_id, hostname, pid, start_time, is_active,"
                " num_cpus, memory_gb, num_gpus, num_nodes, compute_node_type) "
                "VALUES (?, 1, ?, ?, 'now', ?, 1, 1.0, 0, 1, 'local')",
                (w, worker_host(w), worker_pid(w), int(w not in run.killed_workers)))
        for job in run.jobs:
            _write_job(conn, run, job)
        conn.commit()
    finally:
        conn.close()


def _write_job(conn: sqlite3.Connection, run: FaultRun, job: SimJob) -> None:
    done = job.end is not None
    times = [None if v is None else T0 + v for v in (job.ready, job.claim, job.start, job.end)]
    attempt = run.attempts.get(job.id, 1)
    conn.execute(
        "INSERT INTO job (id, workflow_id, name, command, status, attempt_id, depth, ready_time,"
        " claim_time, start_time, end_time, active_compute_node_id) "
        "VALUES (?, 1, ?, 'echo', ?, ?, ?, ?, ?, ?, ?, ?)",
        (job.id, job.name, int(JobStatus.COMPLETED if done else JobStatus.BLOCKED), attempt,
         job.depth, *times, job.node))
    conn.executemany("INSERT INTO job_depends_on VALUES (?, ?, 1)", [(job.id, d) for d in job.deps])
    results = [(job.id, attempt)] if done else []
    results += [r for r in run.extra_results if r[0] == job.id]
    for job_id, att in results:
        conn.execute(
            "INSERT INTO result (workflow_id, job_id, run_id, attempt_id, compute_node_id, "
            "return_code, exec_time_minutes, completion_time, status) "
            "VALUES (1, ?, 1, ?, ?, 0, 0.01, 'now', ?)",
            (job_id, att, job.node, int(JobStatus.COMPLETED)))


def _journal_lines(run: FaultRun, worker: int) -> list[str]:
    events: list[tuple[float, int, dict[str, Any]]] = []
    for e in run.execs:
        if e.worker != worker:
            continue
        events.append((e.spawn, 0, {"e": "spawn", "job_id": e.job_id, "attempt": e.attempt,
                                    "t": T0 + e.spawn, "node": worker_host(worker),
                                    "pid": worker_pid(worker), "compute_node_id": worker}))
        if e.exit is not None:
            events.append((e.exit, 1, {"e": "exit", "job_id": e.job_id, "attempt": e.attempt,
                                       "t": T0 + e.exit, "rc": e.rc, "killed": e.killed}))
    return [json.dumps(doc) for _, _, doc in sorted(events, key=lambda x: (x[0], x[1]))]


def write_fault_run(root: Path, run: FaultRun) -> Path:
    """Writes the run directory under ``root`` and returns its path."""
    run_dir = root / "run-faults"
    server = run_dir / "hosts" / SERVER
    server.mkdir(parents=True)
    _write_db(server / "server.db", run)
    lines = [log_line(0.0, "INFO", "torc_stress.server.main", "server started port=1"),
             *run.log_lines]
    (server / "server.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    metrics = metrics_doc(len(run.jobs))
    if run.leases is not None:
        metrics["leases"] = run.leases
    (server / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    end = run.end + 0.1
    for w in range(1, WORKERS + 1):
        host_dir = run_dir / "hosts" / worker_host(w)
        host_dir.mkdir(parents=True, exist_ok=True)
        node, pid = worker_host(w), worker_pid(w)
        if run.journals:
            (host_dir / f"executions_{node}_{pid}.jsonl").write_text(
                "".join(line + "\n" for line in _journal_lines(run, w)), encoding="utf-8")
        if w not in run.killed_workers:
            (host_dir / f"worker_{node}_{pid}_metrics.json").write_text(json.dumps(
                {"schema": 1, "node": node, "pid": pid, "compute_node_id": w,
                 "started_at": T0, "finished_at": T0 + end}), encoding="utf-8")
    finished = datetime.fromtimestamp(T0 + end + 1.0, UTC).isoformat().replace("+00:00", "Z")
    doc = {"schema": 1, "run_id": "faults-0001", "started_at": "2027-01-15T08:00:00Z",
           "finished_at": finished, "server": {"host": SERVER, "url": "http://127.0.0.1:1"},
           "workflow": {"id": 1, "jobs": len(run.jobs)}, "settings": {}, "outcome": "completed",
           "faults": run.faults}
    (run_dir / "run.json").write_text(json.dumps(doc), encoding="utf-8")
    return run_dir
