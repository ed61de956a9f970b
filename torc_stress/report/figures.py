"""Per-host figures, server contention rows and the server-log scan (pure, no I/O)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torc_stress.report.analysis import job_walls_ms
from torc_stress.report.rundir import JobRow, ResultRow, WorkerMetrics
from torc_stress.stats import percentile
from torc_stress.statuses import JobStatus

LOCK_TEXT = "database is locked"
RETRY_TEXT = "database is locked, retrying"


@dataclass(frozen=True)
class LogScan:
    """What the server log says about SQLite lock contention."""

    lock_errors: tuple[tuple[int, str], ...]
    lock_retries: int
    errors: int
    warnings: int

    @property
    def lock_error_count(self) -> int:
        """How many ERROR lines mention ``database is locked``."""
        return len(self.lock_errors)


@dataclass(frozen=True)
class HostFigures:
    """One worker host's share of the run."""

    host: str
    workers: int
    jobs_run: int
    failures: int
    job_wall_p50_ms: float | None
    job_wall_p95_ms: float | None
    complete_p50_ms: float | None
    complete_p99_ms: float | None
    claim_p99_ms: float | None


def scan_log(lines: Iterable[str]) -> LogScan:
    """Counts lock errors (with their 1-based line numbers), lock retries, errors and warnings.

    A line's level is its second whitespace-separated field (see the log format in
    docs/internals.md); lines that do not follow the format are matched by their text only.
    """
    lock_errors: list[tuple[int, str]] = []
    retries = errors = warnings = 0
    for number, line in enumerate(lines, start=1):
        level = _level_of(line)
        lowered = line.lower()
        if level == "ERROR":
            errors += 1
            if LOCK_TEXT in lowered:
                lock_errors.append((number, line.strip()))
        elif level in ("WARNING", "WARN"):
            warnings += 1
        elif level == "DEBUG" and RETRY_TEXT in lowered:
            retries += 1
    return LogScan(tuple(lock_errors), retries, errors, warnings)


def _level_of(line: str) -> str:
    parts = line.split(maxsplit=2)
    return parts[1].upper() if len(parts) > 1 else ""


def host_figures(
    jobs: Mapping[int, JobRow],
    results: Sequence[ResultRow],
    compute_nodes: Mapping[int, str],
    worker_metrics: Sequence[WorkerMetrics],
) -> tuple[HostFigures, ...]:
    """Computes per-host worker counts, jobs run, failures and latency figures.

    Job wall times come from the server's start/end times of the jobs the host ran. Client-side
    latencies come from the workers' own summaries; percentiles cannot be merged across workers,
    so the host shows its worst worker's value.

    Returns:
        One row per host that registered a worker or left worker metrics, sorted by host.
    """
    workers: dict[str, int] = defaultdict(int)
    for host in compute_nodes.values():
        workers[host] += 1
    by_host: dict[str, list[ResultRow]] = defaultdict(list)
    for result in results:
        host = compute_nodes.get(result.compute_node_id or -1, "(unknown)")
        by_host[host].append(result)
    metrics_by_host: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for wm in worker_metrics:
        metrics_by_host[str(wm.doc.get("node") or wm.host)].append(wm.doc)
    hosts = sorted(set(workers) | set(by_host) | set(metrics_by_host))
    return tuple(
        _host_row(h, max(workers[h], len(metrics_by_host[h])), by_host[h], jobs,
                  metrics_by_host[h])
        for h in hosts
    )


def _host_row(
    host: str, workers: int, results: list[ResultRow], jobs: Mapping[int, JobRow],
    docs: list[dict[str, Any]],
) -> HostFigures:
    ran = sorted({r.job_id for r in results})
    walls = job_walls_ms(jobs[j] for j in ran if j in jobs)
    failures = sum(1 for r in results if r.return_code != 0 or r.status != JobStatus.COMPLETED)
    return HostFigures(
        host=host,
        workers=workers,
        jobs_run=len(results),
        failures=failures,
        job_wall_p50_ms=percentile(walls, 50),
        job_wall_p95_ms=percentile(walls, 95),
        complete_p50_ms=_worst(docs, "complete_job", "p50"),
        complete_p99_ms=_worst(docs, "complete_job", "p99"),
        claim_p99_ms=_worst(docs, "claim", "p99"),
    )


def _worst(docs: list[dict[str, Any]], op: str, key: str) -> float | None:
    values = [
        float(v) for d in docs
        if isinstance(v := _dig(d, "latency_ms", op, key), int | float)
    ]
    return max(values) if values else None


def _dig(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def write_path_rows(metrics: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Returns one row per write-operation kind: count, busy retries, wait and hold times (ms)."""
    ops = _dig(metrics, "write_path") or {}
    return [
        {
            "op": op,
            "count": _dig(ops, op, "count"),
            "busy_retries": _dig(ops, op, "busy_retries"),
            "wait_p50_ms": _dig(ops, op, "wait_ms", "p50"),
            "wait_p99_ms": _dig(ops, op, "wait_ms", "p99"),
            "wait_max_ms": _dig(ops, op, "wait_ms", "max"),
            "hold_p50_ms": _dig(ops, op, "hold_ms", "p50"),
            "hold_p99_ms": _dig(ops, op, "hold_ms", "p99"),
        }
        for op in sorted(ops)
    ]


def unblock_row(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Returns the unblocker's passes, batch sizes, durations and hop latencies."""
    unblock = _dig(metrics, "unblock") or {}
    return {
        "passes": unblock.get("passes"),
        "completions": unblock.get("completions"),
        "ready": unblock.get("ready"),
        "canceled": unblock.get("canceled"),
        "batch_p50": _dig(unblock, "batch_size", "p50"),
        "batch_max": _dig(unblock, "batch_size", "max"),
        "duration_p50_ms": _dig(unblock, "duration_ms", "p50"),
        "duration_max_ms": _dig(unblock, "duration_ms", "max"),
        "hop_p50_ms": _dig(unblock, "hop_ms", "p50"),
        "hop_max_ms": _dig(unblock, "hop_ms", "max"),
    }


def request_rows(metrics: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Returns one row per endpoint: count, errors and latency percentiles (ms)."""
    requests = _dig(metrics, "requests") or {}
    return [
        {
            "endpoint": name,
            "count": _dig(requests, name, "count"),
            "errors": _dig(requests, name, "errors"),
            "p50_ms": _dig(requests, name, "latency_ms", "p50"),
            "p90_ms": _dig(requests, name, "latency_ms", "p90"),
            "p99_ms": _dig(requests, name, "latency_ms", "p99"),
            "max_ms": _dig(requests, name, "latency_ms", "max"),
        }
        for name in sorted(requests)
    ]


def metrics_lock_errors(metrics: Mapping[str, Any] | None) -> int:
    """Returns the server's own count of lock errors (0 when not reported)."""
    value = _dig(metrics, "lock_errors")
    return int(value) if isinstance(value, int | float) else 0
