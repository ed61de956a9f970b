"""The contention workflow through a real server process and real worker processes.

Each run: a fresh server on a fresh database, the workflow submitted, then ``workers`` worker
processes (``torc-stress workflows run``) started together; when they have all exited 0 the
server's CPU and peak RSS are read from /proc, its metrics document is fetched, it is stopped,
and the job table is read for makespan, hop latency and stage spans.

Run alone: ``python -m benchmarks.contention --stages 5 --jobs-per-stage 1000 --workers 4``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import stats
from benchmarks.common import (
    Deadline,
    ServerProcess,
    children_cpu_seconds,
    count_lines,
    cpu_seconds,
    default_job_output_root,
    peak_rss_bytes,
    read_jobs,
    scratch_dir,
    started,
    wait_all,
    worker_command,
)
from torc_stress.client import TorcClient
from torc_stress.stats import Hop, hop_latencies
from torc_stress.statuses import JobStatus
from torc_stress.submit import submit_plan


@dataclass
class ContentionRun:
    """Figures of one run of the workflow through server and workers.

    Attributes:
        mode: ``per-job`` or ``batched`` completions.
        jobs: jobs in the workflow.
        makespan_s: first claim to last completion, server clock (from the DB).
        wall_s: workers started to all workers exited (includes interpreter start-up and exit).
        server_cpu_s: server CPU while the workers ran.
        server_cpu_total_s: server CPU from start-up to the end of the run (includes submit).
        server_peak_rss: server peak RSS, bytes (VmHWM).
        workers_cpu_s: CPU of the worker processes and the shells they ran.
        hops: per-job hop latencies.
        stages: stage spans.
        server_latency_ms: server-side request latency summaries by endpoint.
        worker_latency_ms: worker-side latency summaries by operation, merged over workers.
        write_path: the metrics document's ``write_path`` section.
        unblock: the metrics document's ``unblock`` section.
        transactions: the metrics document's ``transactions`` section (group commit).
        lock_errors_metric: the metrics document's ``lock_errors``.
        error_lines: ERROR lines in the server and worker logs.
        lock_errors: ERROR lines containing ``database is locked``.
        busy_retries: DEBUG lines ``database is locked, retrying``.
        not_completed: jobs that did not end completed.
    """

    mode: str
    jobs: int
    makespan_s: float
    wall_s: float
    server_cpu_s: float
    server_cpu_total_s: float
    server_peak_rss: int
    workers_cpu_s: float = 0.0
    hops: list[Hop] = field(default_factory=list)
    stages: list[stats.StageSpan] = field(default_factory=list)
    server_latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    worker_latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    write_path: dict[str, Any] = field(default_factory=dict)
    unblock: dict[str, Any] = field(default_factory=dict)
    transactions: dict[str, Any] = field(default_factory=dict)
    lock_errors_metric: int = 0
    error_lines: int = 0
    lock_errors: int = 0
    busy_retries: int = 0
    not_completed: int = 0

    @property
    def cpu_per_1000_jobs(self) -> float:
        """Server CPU seconds per 1000 jobs while the workers ran."""
        return self.server_cpu_s / self.jobs * 1000 if self.jobs else float("nan")


def run_contention(plan: Any, *, workers: int, slots: int, batch: bool, timeout: float = 600.0,
                   keep: bool = False, job_root: Path | None = None) -> ContentionRun:
    """Runs the plan once through a fresh server and ``workers`` worker processes.

    Args:
        plan: the expanded workflow plan.
        workers: worker processes.
        slots: ``--max-parallel-jobs`` of each worker.
        batch: pass ``--batch-completions`` to the workers.
        timeout: seconds for the whole run before it is abandoned.
        keep: keep the server's and workers' files (the path is logged).
        job_root: where the workers' output (job stdio, logs) goes; None: with the server's
            files in the system temp dir.

    Raises:
        BenchmarkError: a process failed or the timeout passed.
    """
    deadline = Deadline(timeout, f"the {len(plan.jobs)}-job contention run")
    with scratch_dir("contention", keep) as workdir, \
            scratch_dir("contention-jobs", keep, job_root) as job_dir:
        out_dir = job_dir / "workers"
        with ServerProcess(workdir) as server:
            run, workflow_id = _drive(server, plan, workdir, out_dir, workers=workers,
                                      slots=slots, batch=batch, deadline=deadline)
        # NOTE: the server has stopped here, so its last commit is on disk before the DB is read.
        _add_database(run, server.database, workflow_id)
        _add_workers(run, out_dir)
        _add_logs(run, server.log_file, out_dir)
    return run


def _drive(server: ServerProcess, plan: Any, workdir: Path, out_dir: Path, *, workers: int,
           slots: int, batch: bool, deadline: Deadline) -> tuple[ContentionRun, int]:
    client = TorcClient(server.url)
    workflow_id = submit_plan(client, plan, user="bench")
    out_dir.mkdir()
    commands = [worker_command(server.url, workflow_id, slots=slots, output_dir=out_dir,
                               node=f"w{i + 1}", batch=batch) for i in range(workers)]
    cpu0, children0 = cpu_seconds(server.pid), children_cpu_seconds()
    t0 = time.perf_counter()
    with started(commands, workdir) as procs:
        wait_all(procs, deadline, workdir, out_dir)
    wall = time.perf_counter() - t0
    workers_cpu = children_cpu_seconds() - children0
    cpu1, rss = cpu_seconds(server.pid), peak_rss_bytes(server.pid)
    metrics = client.metrics()
    client.close()
    run = ContentionRun("batched" if batch else "per-job", len(plan.jobs), 0.0, wall,
                        cpu1 - cpu0, cpu1, rss, workers_cpu)
    _add_metrics(run, metrics)
    return run, workflow_id


def _add_metrics(run: ContentionRun, metrics: dict[str, Any]) -> None:
    run.server_latency_ms = {
        endpoint: entry.get("latency_ms", {})
        for endpoint, entry in (metrics.get("requests") or {}).items()
    }
    run.write_path = metrics.get("write_path") or {}
    run.unblock = metrics.get("unblock") or {}
    run.transactions = metrics.get("transactions") or {}
    run.lock_errors_metric = int(metrics.get("lock_errors") or 0)


def _add_database(run: ContentionRun, database: Path, workflow_id: int) -> None:
    jobs, edges = read_jobs(database, workflow_id)
    run.makespan_s = stats.makespan(jobs)
    run.hops = hop_latencies(jobs, edges)
    run.stages = stats.stage_spans(jobs)
    run.not_completed = sum(1 for j in jobs if j["status"] != JobStatus.COMPLETED)


def _add_workers(run: ContentionRun, out_dir: Path) -> None:
    documents = [json.loads(p.read_text()) for p in sorted(out_dir.glob("worker_*_metrics.json"))]
    ops = sorted({op for doc in documents for op in (doc.get("latency_ms") or {})})
    run.worker_latency_ms = {
        op: stats.merge_summaries([(doc.get("latency_ms") or {}).get(op, {}) for doc in documents])
        for op in ops
    }


def _add_logs(run: ContentionRun, server_log: Path, out_dir: Path) -> None:
    logs = [server_log, *sorted(out_dir.glob("worker-*.log"))]
    run.error_lines = count_lines(logs, " ERROR ")
    run.lock_errors = count_lines(logs, " ERROR ", "database is locked")
    run.busy_retries = count_lines(logs, "database is locked, retrying")


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the workflow once and prints its main figures."""
    from benchmarks.plans import contention_plan

    parser = argparse.ArgumentParser(prog="python -m benchmarks.contention")
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--jobs-per-stage", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-parallel-jobs", type=int, default=2)
    parser.add_argument("--batch-completions", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    plan = contention_plan(args.stages, args.jobs_per_stage)
    run = run_contention(plan, workers=args.workers, slots=args.max_parallel_jobs,
                         batch=args.batch_completions, keep=args.keep,
                         job_root=default_job_output_root())
    ready = [h.ready_s * 1000 for h in run.hops if h.ready_s is not None]
    print(f"{run.mode}: makespan {run.makespan_s:.3f} s (wall {run.wall_s:.3f} s), "
          f"server CPU {run.cpu_per_1000_jobs:.3f} s/1000 jobs, peak RSS "
          f"{run.server_peak_rss / 2**20:.0f} MiB, hop max {max(ready, default=0):.1f} ms, "
          f"errors {run.error_lines}, not completed {run.not_completed}")


if __name__ == "__main__":
    main()
