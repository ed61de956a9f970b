"""Puts a run's figures together: one :class:`RunAnalysis` from one :class:`RunData` (pure)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from torc_stress.report import analysis, executions, faults, figures
from torc_stress.report.analysis import Level, Stall, Transition
from torc_stress.report.executions import ExecutionFigures
from torc_stress.report.faults import FaultsSummary
from torc_stress.report.figures import HostFigures, LogScan
from torc_stress.report.rundir import JobRow, RunData
from torc_stress.stats import summarize


@dataclass(frozen=True)
class RunAnalysis:
    """Every figure the checks, tables, JSON and plot are made from.

    Times are seconds relative to ``t0`` (the first moment a job was ready), except ``t0`` itself
    (epoch seconds, server clock).
    """

    data: RunData
    t0: float
    levels: tuple[Level, ...]
    transitions: tuple[Transition, ...]
    statuses: dict[str, int]
    stuck_blocked: tuple[JobRow, ...]
    stall: Stall
    hop_ms: dict[str, float | int | None]
    total_time_s: float | None
    last_end_s: float | None
    scaling: dict[str, float | int | None]
    hosts: tuple[HostFigures, ...]
    log: LogScan
    metrics_lock_errors: int
    faults: FaultsSummary
    executions: ExecutionFigures

    @property
    def jobs(self) -> int:
        """How many jobs the workflow has."""
        return len(self.data.jobs)

    @property
    def completed(self) -> int:
        """How many jobs ended in status completed."""
        return self.statuses.get("completed", 0)

    def level_of(self, job_id: int) -> Level | None:
        """Returns the level (stage or barrier) a job belongs to."""
        return next((lv for lv in self.levels if job_id in lv.job_ids), None)


def analyze(data: RunData, stall_gap_s: float) -> RunAnalysis:
    """Computes every figure of the report from a loaded run directory.

    Args:
        data: the run, from :func:`torc_stress.report.rundir.load_run_dir`.
        stall_gap_s: only pauses longer than this are examined for stalls.

    Returns:
        The analysis.
    """
    jobs = {j.id: j for j in data.jobs}
    t0 = analysis.run_start(data.jobs)
    levels = analysis.build_levels(data.jobs, data.dependencies, t0)
    ends = [j.end_time for j in data.jobs if j.end_time is not None]
    last_end = max(ends) - t0 if ends else None
    statuses = Counter(analysis.status_name(j.status) for j in data.jobs)
    all_done = statuses.get("completed", 0) == len(data.jobs) and data.jobs
    fault_summary, execution_figures = _faults_and_executions(data, t0)
    leases = (data.server_metrics or {}).get("leases") or {}
    windows = analysis.fault_windows(
        [(f.fault.injected_at, f.fault.ended_at) for f in fault_summary.faults],
        float(leases.get("lease_s") or 0.0))
    return RunAnalysis(
        data=data,
        t0=t0,
        levels=levels,
        transitions=analysis.transitions(levels, jobs, t0),
        statuses=dict(sorted(statuses.items())),
        stuck_blocked=tuple(jobs[i] for i in analysis.stuck_blocked(jobs, data.dependencies)),
        stall=_relative_stall(
            analysis.longest_stall(jobs, data.dependencies, stall_gap_s, _run_end(data.run),
                                   windows), t0
        ),
        hop_ms=summarize(analysis.hop_latencies_ms(jobs, data.dependencies)),
        total_time_s=last_end if all_done else None,
        last_end_s=last_end,
        scaling=analysis.stage_scaling(levels, [(a - t0, b - t0) for a, b in windows]),
        hosts=figures.host_figures(jobs, data.results, data.compute_nodes, data.worker_metrics),
        log=figures.scan_log(data.log_lines),
        metrics_lock_errors=figures.metrics_lock_errors(data.server_metrics),
        faults=fault_summary,
        executions=execution_figures,
    )


def _faults_and_executions(data: RunData, t0: float) -> tuple[FaultsSummary, ExecutionFigures]:
    asked = faults.parse_faults(data.run)
    worker_end = executions.worker_ends(data.journals, data.worker_metrics, asked,
                                        _run_end(data.run))
    summary = faults.summarize_faults(
        asked, data.jobs, data.results, data.log_lines, t0, server_host=data.server_host,
        attempts_recorded=data.attempts_recorded, metrics=data.server_metrics,
        journals=data.journals)
    return summary, executions.execution_figures(data.jobs, data.results, data.journals,
                                                 worker_end)


def _relative_stall(stall: Stall, t0: float) -> Stall:
    if stall.start is None or stall.end is None:
        return stall
    return Stall(stall.seconds, stall.start - t0, stall.end - t0, stall.waiting_jobs)


def _run_end(run: dict[str, Any]) -> float | None:
    finished = run.get("finished_at")
    if not isinstance(finished, str):
        return None
    try:
        return datetime.fromisoformat(finished.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
