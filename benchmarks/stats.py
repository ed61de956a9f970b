"""Pure statistics for the benchmark: percentiles, summaries, hop latency and stage spans.

Nothing here does I/O; every function takes plain rows and returns plain records, so the unit
tests in ``tests/unit/test_bench_stats.py`` can check them with hand-made data.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Returns the q-th percentile of values, interpolating linearly between ranks.

    Args:
        values: the sample; need not be sorted.
        q: the percentile, 0 to 100.

    Returns:
        The percentile, or NaN for an empty sample.

    Raises:
        ValueError: q is outside 0..100.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Returns the metrics document's summary (count, sum, p50, p90, p99, max) plus min."""
    return {
        "count": len(values),
        "sum": float(sum(values)),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "min": min(values) if values else math.nan,
    }


def median(values: Iterable[float]) -> float:
    """Returns the median of the finite values, or NaN if there is none."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """Returns numerator / denominator, or NaN when either is missing or the denominator is 0."""
    if denominator is None or numerator is None or denominator == 0:
        return math.nan
    return numerator / denominator


@dataclass(frozen=True)
class Hop:
    """One dependency hop: the dependent job and how long it waited after its last upstream.

    Attributes:
        job_id: the dependent job.
        name: its name.
        depth: its depth in the DAG (from the job table).
        ready_s: ready_time - max(upstream end_time), seconds (NaN if not recorded).
        claim_s: claim_time - max(upstream end_time), seconds (NaN if not recorded).
    """

    job_id: int
    name: str
    depth: int
    ready_s: float
    claim_s: float


def _delta(later: float | None, earlier: float | None) -> float:
    if later is None or earlier is None:
        return math.nan
    return later - earlier


def hop_latencies(
    jobs: Iterable[Mapping[str, Any]], edges: Iterable[tuple[int, int]]
) -> list[Hop]:
    """Computes the hop of every job that has upstream jobs.

    Args:
        jobs: rows with ``id, name, depth, ready_time, claim_time, end_time`` (epoch seconds).
        edges: ``(job_id, depends_on_job_id)`` pairs.

    Returns:
        One :class:`Hop` per job with at least one upstream job, ordered by job id.
    """
    by_id = {int(row["id"]): row for row in jobs}
    last_upstream_end: dict[int, float | None] = {}
    for job_id, upstream_id in edges:
        end = by_id[upstream_id]["end_time"] if upstream_id in by_id else None
        previous = last_upstream_end.get(job_id, -math.inf)
        if end is None or previous is None:
            last_upstream_end[job_id] = None
        else:
            last_upstream_end[job_id] = max(previous, end)
    hops = []
    for job_id in sorted(last_upstream_end):
        row = by_id[job_id]
        upstream_end = last_upstream_end[job_id]
        hops.append(
            Hop(
                job_id=job_id,
                name=str(row.get("name", job_id)),
                depth=int(row.get("depth") or 0),
                ready_s=_delta(row.get("ready_time"), upstream_end),
                claim_s=_delta(row.get("claim_time"), upstream_end),
            )
        )
    return hops


@dataclass(frozen=True)
class HopLevel:
    """Hop latencies of all jobs at one depth (one barrier crossing in the contention shape).

    Attributes:
        depth: the depth of the dependent jobs.
        label: a readable name for the dependent jobs (``barrier_stage1_complete`` or
            ``stage2_* (1000)``).
        jobs: how many dependent jobs are at that depth.
        ready_ms: summary of ready_time - last upstream end, in ms.
        claim_ms: summary of claim_time - last upstream end, in ms.
    """

    depth: int
    label: str
    jobs: int
    ready_ms: dict[str, float]
    claim_ms: dict[str, float]


def level_label(names: Sequence[str]) -> str:
    """Names a group of jobs: the name if one, else the common prefix with ``*`` and the count."""
    if len(names) == 1:
        return names[0]
    prefix = _common_prefix(names)
    stem = prefix.rsplit("_", 1)[0] if "_" in prefix else prefix.rstrip("0123456789")
    return f"{stem or 'jobs'}_* ({len(names)})"


def _common_prefix(names: Sequence[str]) -> str:
    first, last = min(names), max(names)
    size = 0
    while size < min(len(first), len(last)) and first[size] == last[size]:
        size += 1
    return first[:size]


def _finite_ms(values: Iterable[float]) -> list[float]:
    return [v * 1000 for v in values if not math.isnan(v)]


def hops_by_level(hops: Sequence[Hop]) -> list[HopLevel]:
    """Groups hops by the depth of the dependent job and summarizes each group in ms.

    Hops of several runs of the same workflow may be passed together: jobs are counted once per
    name, while the summaries cover every hop.
    """
    groups: dict[int, list[Hop]] = defaultdict(list)
    for hop in hops:
        groups[hop.depth].append(hop)
    return [
        HopLevel(
            depth=depth,
            label=level_label(sorted({h.name for h in group})),
            jobs=len({h.name for h in group}),
            ready_ms=summarize(_finite_ms(h.ready_s for h in group)),
            claim_ms=summarize(_finite_ms(h.claim_s for h in group)),
        )
        for depth, group in sorted(groups.items())
    ]


@dataclass(frozen=True)
class StageSpan:
    """One stage of the contention shape: a wide level followed by its barrier.

    Attributes:
        index: 1-based stage number.
        label: the stage's jobs (``stage3_* (1000)``).
        jobs: jobs in the stage, barrier excluded.
        start: the previous barrier's end_time (or the stage's first ready_time), epoch s.
        end: the barrier's end_time (or the stage's last end_time without barrier), epoch s.
        seconds: end - start.
    """

    index: int
    label: str
    jobs: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        """The stage's duration in seconds."""
        return self.end - self.start


def _levels(jobs: Iterable[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    grouped: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for row in jobs:
        grouped[int(row.get("depth") or 0)].append(row)
    return [grouped[d] for d in sorted(grouped)]


def _times(rows: Iterable[Mapping[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None]


def stage_spans(jobs: Iterable[Mapping[str, Any]]) -> list[StageSpan]:
    """Cuts a contention-shaped workflow into stages: each level with more than one job plus
    the single-job level (barrier) after it.

    A stage runs from the end of the previous barrier (or, for the first stage, its first
    ready_time) to the end of its own barrier, so the spans partition the makespan.

    Args:
        jobs: rows with ``name, depth, ready_time, end_time``.

    Returns:
        The stages in order; empty if any stage job has no end_time.
    """
    levels = _levels(jobs)
    spans: list[StageSpan] = []
    previous_end: float | None = None
    for position, level in enumerate(levels):
        if len(level) < 2:
            if len(level) == 1 and level[0].get("end_time") is not None:
                previous_end = float(level[0]["end_time"])
            continue
        ends = _times(level, "end_time")
        if len(ends) != len(level):
            return []
        following = levels[position + 1] if position + 1 < len(levels) else []
        barrier = following if len(following) == 1 else []
        barrier_ends = _times(barrier, "end_time")
        first_ready = min(_times(level, "ready_time") or ends)
        start = previous_end if previous_end is not None else first_ready
        end = barrier_ends[0] if barrier_ends else max(ends)
        spans.append(
            StageSpan(
                index=len(spans) + 1,
                label=level_label([str(r.get("name", "")) for r in level]),
                jobs=len(level),
                start=start,
                end=end,
            )
        )
    return spans


def makespan(jobs: Iterable[Mapping[str, Any]]) -> float:
    """Returns last end_time - first claim_time over the jobs, seconds (NaN if none ran)."""
    rows = list(jobs)
    claims = _times(rows, "claim_time") or _times(rows, "start_time")
    ends = _times(rows, "end_time")
    if not claims or not ends:
        return math.nan
    return max(ends) - min(claims)


def merge_summaries(summaries: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Combines per-process latency summaries into one, conservatively.

    Percentiles cannot be merged exactly; this returns the total count and sum, the
    count-weighted mean of the p50s (labelled p50), and the largest p90, p99 and max.
    """
    present = [s for s in summaries if s and s.get("count")]
    if not present:
        return {"count": 0, "sum": 0.0, "p50": math.nan, "p90": math.nan, "p99": math.nan,
                "max": math.nan}
    count = sum(int(s["count"]) for s in present)
    return {
        "count": count,
        "sum": float(sum(s.get("sum", 0.0) for s in present)),
        "p50": sum(s["p50"] * s["count"] for s in present) / count,
        "p90": max(s["p90"] for s in present),
        "p99": max(s["p99"] for s in present),
        "max": max(s["max"] for s in present),
    }


@dataclass(frozen=True)
class Check:
    """A measured figure against its target.

    Attributes:
        name: what is measured.
        measured: the value (NaN if it could not be measured).
        target: the bound.
        at_most: True if the value must be <= target, False if >= target.
        unit: the unit, for display.
    """

    name: str
    measured: float
    target: float
    at_most: bool = True
    unit: str = ""

    @property
    def met(self) -> bool | None:
        """Whether the target is met, or None when the value was not measured."""
        if self.measured is None or math.isnan(self.measured):
            return None
        return self.measured <= self.target if self.at_most else self.measured >= self.target

    @property
    def target_text(self) -> str:
        """The target as text, e.g. ``<= 1.3`` or ``>= 5000 /s``."""
        sign = "<=" if self.at_most else ">="
        return f"{sign} {self.target:g} {self.unit}".rstrip()
