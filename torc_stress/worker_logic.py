"""Pure worker logic: backoff, output paths, statuses, retry policy, claim sizing, metrics."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torc_stress.client import summarize
from torc_stress.errors import ApiError, ConflictError, ServerUnavailable, StressError

__all__ = ["Backoff", "build_metrics", "claim_limit", "classify_failure", "metrics_path",
           "status_for", "stdio_paths"]


class Backoff:
    """Exponential backoff: ``initial``, doubling, capped at ``maximum`` (seconds)."""

    def __init__(self, initial: float = 0.001, maximum: float = 0.05, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._next = initial

    def next(self) -> float:
        """Returns the delay to wait now and grows the following one."""
        delay = self._next
        self._next = min(self.maximum, self._next * self.factor)
        return delay

    def reset(self) -> None:
        """Starts again from ``initial`` (work appeared)."""
        self._next = self.initial


def stdio_paths(output_dir: Path, workflow_id: int, job_id: int, run_id: int,
                attempt_id: int) -> tuple[Path, Path]:
    """Returns a job's stdout and stderr files, named as torc names them.

    Args:
        output_dir: the worker's output directory.
        workflow_id: the workflow.
        job_id: the job.
        run_id: the workflow's run.
        attempt_id: the job's attempt (1 for the first).

    Returns:
        ``(<out>/job_stdio/job_wf<W>_j<J>_r<R>_a<A>.o, ....e)``.
    """
    stem = output_dir / "job_stdio" / f"job_wf{workflow_id}_j{job_id}_r{run_id}_a{attempt_id}"
    return stem.with_suffix(".o"), stem.with_suffix(".e")


def journal_path(output_dir: Path, node_name: str, pid: int) -> Path:
    """Where a worker records each job execution (``executions_<node>_<pid>.jsonl``)."""
    return output_dir / f"executions_{node_name}_{pid}.jsonl"


def metrics_path(output_dir: Path, node_name: str, pid: int) -> Path:
    """Returns ``<out>/worker_<node>_<pid>_metrics.json``."""
    return output_dir / f"worker_{node_name}_{pid}_metrics.json"


def status_for(returncode: int, *, killed: bool = False) -> str:
    """Maps a child's return code to the wire status reported for it.

    Args:
        returncode: ``Popen.returncode`` (negative for a signal).
        killed: the worker killed the job (cancel or shutdown).

    Returns:
        ``terminated`` if killed, ``completed`` for 0, ``failed`` otherwise.
    """
    if killed:
        return "terminated"
    return "completed" if returncode == 0 else "failed"


def classify_failure(exc: StressError) -> str:
    """Decides what to do with a request the server did not answer with success.

    Args:
        exc: the error the client raised.

    Returns:
        ``"taken"`` (409/422: the server already has it), ``"retry"`` (unreachable, 5xx, 429)
        or ``"drop"`` (any other error: sending it again cannot help).
    """
    if isinstance(exc, ConflictError):
        return "taken"
    if isinstance(exc, ServerUnavailable):
        return "retry"
    if isinstance(exc, ApiError) and exc.retryable:
        return "retry"
    return "drop"



def claim_limit(held: int, slots: int, prefetch: int) -> int:
    """Decides how many jobs to claim now (0: not now).

    A worker holds at most ``slots + prefetch`` jobs (running plus claimed but not yet
    spawned). It claims again once it has room for a batch of ``max(1, prefetch - slots + 1)``
    jobs, so a claim brings several jobs (fewer requests per job, measured: empty and
    one-job claims were a third of the server's requests) while a freed slot still finds
    the next job already claimed, with no round trip between one job and the next.

    Args:
        held: jobs running or claimed and waiting for a slot.
        slots: ``max_parallel_jobs``.
        prefetch: how many claimed jobs may wait for a slot (0: claim only for free slots).

    Returns:
        The ``limit`` of the next claim, or 0 when the worker should not claim now.
    """
    room = slots + prefetch - held
    if room <= 0:
        return 0
    if held > 0 and room < max(1, prefetch - slots + 1):
        return 0
    return room



def build_metrics(*, node: str, pid: int, compute_node_id: int | None, jobs_run: int,
                  jobs_failed: int, started_at: float, latency: Mapping[str, Any],
                  job_wall_ms: list[float], retries: Mapping[str, int],
                  finished_at: float | None = None) -> dict[str, Any]:
    """Builds the worker metrics document (pure; see docs/internals.md).

    Returns:
        ``{"schema": 1, "node", "pid", "compute_node_id", "jobs_run", "jobs_failed",
        "started_at", "finished_at", "latency_ms", "job_wall_ms", "retries"}``.
    """
    return {
        "schema": 1, "node": node, "pid": pid, "compute_node_id": compute_node_id,
        "jobs_run": jobs_run, "jobs_failed": jobs_failed, "started_at": started_at,
        "finished_at": time.time() if finished_at is None else finished_at,
        "latency_ms": dict(latency), "job_wall_ms": summarize(job_wall_ms),
        "retries": dict(retries),
    }
