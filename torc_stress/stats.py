"""Statistics shared by the worker metrics, the report and the benchmarks (pure, no I/O).

One percentile definition serves every figure the project prints: linear interpolation between
the closest ranks of the sorted sample (numpy's default ``method="linear"``, Hyndman & Fan type 7).
For a sample ``x[0] <= ... <= x[n-1]`` the q-th percentile is ``x[lo] + (x[hi] - x[lo]) * f`` with
``r = (n - 1) * q / 100``, ``lo = floor(r)``, ``hi = min(lo + 1, n - 1)`` and ``f = r - lo``.
An empty sample has no percentile (None), never 0, so "no data" is not mistaken for "fast".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Hop", "Summary", "hop_latencies", "linear_slope", "percentile", "summarize"]

#: ``{"count", "sum", "p50", "p90", "p99", "max"}``; the percentiles and max are None when empty.
Summary = dict[str, float | None]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Returns the q-th percentile of ``values`` by linear interpolation (see the module doc).

    Args:
        values: the samples, in any order.
        q: the percentile, 0 to 100.

    Returns:
        The percentile, or None when there are no samples.

    Raises:
        ValueError: q is outside 0..100.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> Summary:
    """Summarizes samples the way the metrics documents do.

    Args:
        values: the samples (milliseconds in the metrics documents), in any order.

    Returns:
        ``{"count", "sum", "p50", "p90", "p99", "max"}``; percentiles and max are None when
        there are no samples.
    """
    return {
        "count": len(values),
        "sum": float(sum(values)),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def linear_slope(ys: Sequence[float]) -> float | None:
    """Returns the least-squares slope of ``ys`` against their index 0, 1, 2, ...

    Args:
        ys: the values, one per step.

    Returns:
        The fitted change per step, or None with fewer than two values.
    """
    n = len(ys)
    if n < 2:
        return None
    mean_x = (n - 1) / 2.0
    mean_y = sum(ys) / n
    num = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(ys))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


@dataclass(frozen=True)
class Hop:
    """One dependency hop: a dependent job and how long it waited after its last upstream job.

    Attributes:
        job_id: the dependent job.
        name: its name.
        depth: its depth in the DAG (from the row's ``depth``, else 0).
        ready_s: ready_time - max(upstream end_time), seconds (None if not recorded).
        claim_s: claim_time - max(upstream end_time), seconds (None if not recorded).
    """

    job_id: int
    name: str
    depth: int
    ready_s: float | None
    claim_s: float | None


def hop_latencies(
    jobs: Iterable[Mapping[str, Any]], edges: Iterable[tuple[int, int]]
) -> list[Hop]:
    """Computes the hop of every job that has upstream jobs.

    Args:
        jobs: rows with ``id, name, ready_time, claim_time, end_time`` (epoch seconds) and
            optionally ``depth``.
        edges: ``(job_id, depends_on_job_id)`` pairs.

    Returns:
        One :class:`Hop` per listed job with at least one upstream job, ordered by job id. A hop
        whose upstream job is missing or never ended has no latencies (None).
    """
    by_id = {int(row["id"]): row for row in jobs}
    upstream_end = _last_upstream_end(by_id, edges)
    return [
        _hop(job_id, by_id[job_id], upstream_end[job_id])
        for job_id in sorted(upstream_end)
        if job_id in by_id
    ]


def _last_upstream_end(
    by_id: Mapping[int, Mapping[str, Any]], edges: Iterable[tuple[int, int]]
) -> dict[int, float | None]:
    ends: dict[int, list[float | None]] = defaultdict(list)
    for job_id, upstream_id in edges:
        ends[job_id].append(by_id[upstream_id].get("end_time") if upstream_id in by_id else None)
    return {
        job_id: None if any(e is None for e in found) else max(e for e in found if e is not None)
        for job_id, found in ends.items()
    }


def _hop(job_id: int, row: Mapping[str, Any], upstream_end: float | None) -> Hop:
    return Hop(
        job_id=job_id,
        name=str(row.get("name", job_id)),
        depth=int(row.get("depth") or 0),
        ready_s=_delta(row.get("ready_time"), upstream_end),
        claim_s=_delta(row.get("claim_time"), upstream_end),
    )


def _delta(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else later - earlier
