"""Pure statistics for the benchmark: hop levels, stage spans, makespan and checks.

Percentiles, summaries and hop latencies come from :mod:`torc_stress.stats`. Nothing here does
I/O; every function takes plain rows and returns plain records, so the unit tests in
``tests/unit/test_bench_stats.py`` can check them with hand-made data.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torc_stress.stats import Hop, Summary, summarize


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
class HopLevel:
    """Hop latencies of all jobs at one depth (one barrier crossing in the contention shape).

    Attributes:
        depth: the depth of the dependent jobs.
        label: a readable name for the dependent jobs (``barrier_stage1_complete`` or
            ``stage2_* (1000)``).
        jobs: how many dependent jobs are at that depth.
        ready_ms: summary of ready_time - last upstream end, in ms, plus its ``min``.
        claim_ms: summary of claim_time - last upstream end, in ms, plus its ``min``.
    """

    depth: int
    label: str
    jobs: int
    ready_ms: Summary
    claim_ms: Summary


def late_over_early(stages: Sequence[float], window: int = 5) -> float:
    """How much later stages take than early ones: median of the last ``k`` stage durations over
    the median of stages 2..k+1, ``k = min(window, (n - 1) // 2)``.

    Medians over several stages, not one stage each, because single stages vary by 10-20% on a
    shared machine; stage 1 is left out of the early side because it is the one stage whose
    jobs were all ready before the first claim. With fewer than 3 stages this is last/first.
    """
    n = len(stages)
    if n < 3:
        return ratio(stages[-1], stages[0]) if n else math.nan
    k = late_early_window(n, window)
    return ratio(median(stages[-k:]), median(stages[1:1 + k]))


def late_early_window(n: int, window: int = 5) -> int:
    """The ``k`` of :func:`late_over_early` for ``n`` stages."""
    return max(1, min(window, (n - 1) // 2))


def level_label(names: Sequence[str]) -> str:
    """Names a group of jobs: the name if one, else the common prefix with ``*`` and the count."""
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(list(names))
    stem = prefix.rsplit("_", 1)[0] if "_" in prefix else prefix.rstrip("0123456789")
    return f"{stem or 'jobs'}_* ({len(names)})"


def _summary_ms(seconds: Iterable[float | None]) -> Summary:
    values = [v * 1000 for v in seconds if v is not None]
    return {**summarize(values), "min": min(values, default=None)}


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
            ready_ms=_summary_ms(h.ready_s for h in group),
            claim_ms=_summary_ms(h.claim_s for h in group),
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
    claim_time, where :func:`makespan` starts too) to the end of its own barrier, so the spans
    partition the makespan. The first stage's jobs are ready from the moment the workflow is
    initialized, before any worker has started, so its first ready_time would count the
    workers' start-up as stage time (about 0.5 s here).

    Args:
        jobs: rows with ``name, depth, ready_time, end_time`` (and ``claim_time``).

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
        first = min(_times(level, "claim_time") or _times(level, "ready_time") or ends)
        start = previous_end if previous_end is not None else first
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
