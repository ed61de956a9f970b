"""Live progress of a running workflow, computed from the server's progress document (pure).

``GET /workflows/{id}/progress`` answers ``{"total", "counts": {status: n}, "by_depth":
[{"depth", "total", "counts"}]}``. A :class:`ProgressTracker` turns successive answers into
:class:`ProgressSnapshot` records: jobs done overall and per depth (for the contention workflow a
stage and its barrier are two depths), and the completion rate. Printing is done elsewhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torc_stress.statuses import DONE, FINISHED

DONE_NAMES = frozenset(status.wire for status in DONE)
FINISHED_NAMES = frozenset(status.wire for status in FINISHED)


@dataclass(frozen=True)
class DepthProgress:
    """Progress of the jobs at one dependency depth (``done``: any done status; ``completed``:
    status completed only)."""

    depth: int
    total: int
    done: int
    label: str = ""
    completed: int = 0

    @property
    def name(self) -> str:
        """What to call this depth: its label (``stage2``), else ``depth N``."""
        return self.label or f"depth {self.depth}"

    @property
    def complete(self) -> bool:
        """Whether every job at this depth is done."""
        return self.done >= self.total


@dataclass(frozen=True)
class ProgressSnapshot:
    """One poll of a workflow's progress.

    Attributes:
        elapsed_s: seconds since the workflow was started.
        total: jobs in the workflow.
        done: jobs in a done status (completed, failed, canceled, terminated).
        counts: jobs per status name.
        depths: per-depth progress, by depth.
        rate: jobs done per second since the previous snapshot.
        average_rate: jobs done per second since the start.
    """

    elapsed_s: float
    total: int
    done: int
    counts: Mapping[str, int]
    depths: tuple[DepthProgress, ...] = ()
    rate: float = 0.0
    average_rate: float = 0.0

    @property
    def finished(self) -> bool:
        """Whether no job is left to run (all done or disabled)."""
        finished = sum(n for name, n in self.counts.items() if name in FINISHED_NAMES)
        return self.total > 0 and finished >= self.total

    @property
    def current_depth(self) -> DepthProgress | None:
        """The first depth that is not complete, if any."""
        return next((d for d in self.depths if not d.complete), None)

    @property
    def fraction(self) -> float:
        """Share of jobs done, 0..1."""
        return self.done / self.total if self.total else 0.0


def count_done(counts: Mapping[str, int]) -> int:
    """Number of jobs in a done status, from per-status counts."""
    return sum(int(n) for name, n in counts.items() if name in DONE_NAMES)


def depth_labels(levels: Sequence[Sequence[str]]) -> dict[int, str]:
    """Names the dependency depths of a workflow plan for progress lines.

    Args:
        levels: job names per depth (``WorkflowPlan.levels``).

    Returns:
        ``{depth: label}``: a lone job's name (``barrier_stage1_complete``), or the common prefix
        of the names without a trailing number part (``stage1_0000..stage1_0999`` -> ``stage1``);
        depths whose names share nothing are left out.
    """
    labels: dict[int, str] = {}
    for depth, names in enumerate(levels):
        if len(names) == 1:
            labels[depth] = names[0]
            continue
        prefix = re.sub(r"[_\-.]?\d*$", "", os.path.commonprefix(list(names)))
        if prefix:
            labels[depth] = prefix
    return labels


def parse_depths(by_depth: Sequence[Mapping[str, Any]],
                 labels: Mapping[int, str] | None = None) -> tuple[DepthProgress, ...]:
    """Per-depth progress from the ``by_depth`` list of the progress document."""
    labels = labels or {}
    depths = [
        DepthProgress(depth=int(d["depth"]), total=int(d["total"]),
                      done=count_done(d.get("counts") or {}),
                      label=labels.get(int(d["depth"]), ""),
                      completed=int((d.get("counts") or {}).get("completed", 0)))
        for d in by_depth
    ]
    return tuple(sorted(depths, key=lambda d: d.depth))


def snapshot(document: Mapping[str, Any], elapsed_s: float,
             previous: ProgressSnapshot | None = None,
             labels: Mapping[int, str] | None = None) -> ProgressSnapshot:
    """Builds a snapshot from one progress document.

    Args:
        document: the answer of ``GET /workflows/{id}/progress``.
        elapsed_s: seconds since the workflow was started.
        previous: the previous snapshot, for the current rate.
        labels: names of the depths (see :func:`depth_labels`).

    Returns:
        The snapshot.
    """
    counts = {str(k): int(v) for k, v in (document.get("counts") or {}).items()}
    done = count_done(counts)
    rate = 0.0
    if previous is not None and elapsed_s > previous.elapsed_s:
        rate = max(0.0, (done - previous.done) / (elapsed_s - previous.elapsed_s))
    return ProgressSnapshot(
        elapsed_s=elapsed_s,
        total=int(document.get("total") or 0),
        done=done,
        counts=counts,
        depths=parse_depths(document.get("by_depth") or [], labels),
        rate=rate,
        average_rate=done / elapsed_s if elapsed_s > 0 else 0.0,
    )


@dataclass
class ProgressTracker:
    """Keeps the previous snapshot so each new one carries the current rate."""

    labels: Mapping[int, str] = field(default_factory=dict)
    history: list[ProgressSnapshot] = field(default_factory=list)

    def update(self, document: Mapping[str, Any], elapsed_s: float) -> ProgressSnapshot:
        """Records one progress document and returns its snapshot."""
        previous = self.history[-1] if self.history else None
        snap = snapshot(document, elapsed_s, previous, self.labels)
        self.history.append(snap)
        return snap

    @property
    def last(self) -> ProgressSnapshot | None:
        """The latest snapshot, if any."""
        return self.history[-1] if self.history else None

    def stalled_for(self, now_s: float) -> float:
        """Seconds since the done count last changed (0 without history)."""
        if not self.history:
            return 0.0
        last_done = self.history[-1].done
        since = self.history[-1].elapsed_s
        for snap in reversed(self.history):
            if snap.done != last_done:
                break
            since = snap.elapsed_s
        return max(0.0, now_s - since)

