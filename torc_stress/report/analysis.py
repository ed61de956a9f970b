"""What happened in a run, computed from its jobs and dependencies (pure, no I/O).

Stages are the dependency depths of the workflow's DAG: a depth with one job fed by every job of
the previous depth is a *barrier*, any other depth is a *stage*. All times are seconds relative to
the run's start (the first moment a job became ready).
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from torc_stress.report.rundir import JobRow
from torc_stress.stats import hop_latencies, linear_slope
from torc_stress.statuses import DONE, JobStatus

_TRAILING_INDEX = re.compile(r"[_\-.]?\d+$")


@dataclass(frozen=True)
class Level:
    """One dependency depth of the workflow: a stage or a barrier."""

    depth: int
    kind: str
    label: str
    job_ids: tuple[int, ...]
    statuses: dict[str, int]
    first_ready: float | None
    first_start: float | None
    last_end: float | None

    @property
    def jobs(self) -> int:
        """How many jobs the level has."""
        return len(self.job_ids)

    @property
    def finished(self) -> bool:
        """Whether every job of the level has an end time."""
        return self.last_end is not None and self.statuses.get("completed", 0) == self.jobs

    @property
    def duration_s(self) -> float | None:
        """First job started -> last job completed, when the level finished."""
        if not self.finished or self.first_start is None or self.last_end is None:
            return None
        return self.last_end - self.first_start


@dataclass(frozen=True)
class Transition:
    """The hand-over from one stage to the next through a barrier (times in seconds)."""

    barrier: str
    before: str
    after: str | None
    reached: bool
    into_s: float | None
    out_s: float | None
    hop_in_s: float | None
    hop_out_s: float | None


@dataclass(frozen=True)
class Stall:
    """The longest interval in which nothing progressed although a job could run."""

    seconds: float
    start: float | None
    end: float | None
    waiting_jobs: tuple[str, ...]


@dataclass(frozen=True)
class Timeline:
    """A run's job times relative to its start, for the stage table and the plot."""

    t0: float
    jobs: tuple[JobRow, ...]
    depth: dict[int, int]


def job_depths(job_ids: Iterable[int], dependencies: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Returns each job's depth: 0 without dependencies, else 1 + the deepest dependency.

    Args:
        job_ids: every job of the workflow.
        dependencies: ``(job_id, depends_on_job_id)`` pairs.

    Returns:
        job id -> depth. Jobs on a dependency cycle (invalid in torc) get one past the deepest.
    """
    ids = list(job_ids)
    parents: dict[int, list[int]] = defaultdict(list)
    children: dict[int, list[int]] = defaultdict(list)
    for job, dep in dependencies:
        parents[job].append(dep)
        children[dep].append(job)
    pending = {j: len(parents[j]) for j in ids}
    queue = [j for j in ids if pending[j] == 0]
    depth: dict[int, int] = {}
    while queue:
        job = queue.pop()
        depth[job] = max((depth[p] + 1 for p in parents[job] if p in depth), default=0)
        for child in children[job]:
            pending[child] -= 1
            if pending[child] == 0:
                queue.append(child)
    deepest = max(depth.values(), default=-1)
    return {j: depth.get(j, deepest + 1) for j in ids}


def run_start(jobs: Sequence[JobRow]) -> float:
    """Returns the run's start: the earliest ready time (or start time) of any job, else 0."""
    times = [j.ready_time for j in jobs if j.ready_time is not None]
    times = times or [j.start_time for j in jobs if j.start_time is not None]
    return min(times, default=0.0)


def status_name(status: int) -> str:
    """Returns torc's wire name of a stored status integer (``"status-42"`` if unknown)."""
    try:
        return JobStatus(status).wire
    except ValueError:
        return f"status-{status}"


def stage_label(names: Sequence[str], depth: int) -> str:
    """Names a group of jobs after what their names share (``stage1_0001`` ... -> ``stage1``)."""
    if len(names) == 1:
        return names[0]
    stems = {_TRAILING_INDEX.sub("", n) for n in names}
    if len(stems) == 1 and (stem := stems.pop()):
        return stem
    prefix = os.path.commonprefix(list(names)).rstrip("_-. ")
    return prefix or f"depth {depth}"


def build_levels(
    jobs: Sequence[JobRow], dependencies: Sequence[tuple[int, int]], t0: float
) -> tuple[Level, ...]:
    """Groups jobs by depth and classifies each depth as a stage or a barrier.

    Args:
        jobs: the workflow's jobs.
        dependencies: ``(job_id, depends_on_job_id)`` pairs.
        t0: the run start (epoch seconds); level times are relative to it.

    Returns:
        One level per depth, shallowest first.
    """
    depth = job_depths((j.id for j in jobs), dependencies)
    by_depth: dict[int, list[JobRow]] = defaultdict(list)
    for job in jobs:
        by_depth[depth[job.id]].append(job)
    deps_of: dict[int, set[int]] = defaultdict(set)
    for job_id, dep in dependencies:
        deps_of[job_id].add(dep)
    levels: list[Level] = []
    previous: list[JobRow] = []
    for d in sorted(by_depth):
        members = by_depth[d]
        barrier = (
            len(members) == 1 and len(previous) > 1
            and {j.id for j in previous} <= deps_of[members[0].id]
        )
        levels.append(_level(d, "barrier" if barrier else "stage", members, t0))
        previous = members
    return _unique_labels(levels)


def _level(depth: int, kind: str, members: list[JobRow], t0: float) -> Level:
    def rel(values: Iterable[float | None], latest: bool = False) -> float | None:
        present = [v for v in values if v is not None]
        if not present:
            return None
        return (max(present) if latest else min(present)) - t0

    everyone_ended = all(j.end_time is not None for j in members)
    return Level(
        depth=depth,
        kind=kind,
        label=stage_label([j.name for j in members], depth),
        job_ids=tuple(j.id for j in members),
        statuses=dict(sorted(Counter(status_name(j.status) for j in members).items())),
        first_ready=rel(j.ready_time for j in members),
        first_start=rel(j.start_time for j in members),
        last_end=rel((j.end_time for j in members), latest=True) if everyone_ended else None,
    )


def _unique_labels(levels: list[Level]) -> tuple[Level, ...]:
    seen = Counter(level.label for level in levels)
    return tuple(
        level if seen[level.label] == 1
        else replace(level, label=f"{level.label} (depth {level.depth})")
        for level in levels
    )


def transitions(
    levels: Sequence[Level], jobs: Mapping[int, JobRow], t0: float
) -> tuple[Transition, ...]:
    """Measures every barrier: stage done -> barrier done -> next stage started.

    Args:
        levels: from :func:`build_levels`.
        jobs: job id -> job.
        t0: the run start (epoch seconds).

    Returns:
        One transition per barrier that follows a stage, in depth order.
    """
    found = []
    for i, level in enumerate(levels):
        if level.kind != "barrier" or i == 0:
            continue
        before = levels[i - 1]
        after = levels[i + 1] if i + 1 < len(levels) else None
        barrier = jobs[level.job_ids[0]]
        end = barrier.end_time - t0 if barrier.end_time is not None else None
        ready = barrier.ready_time - t0 if barrier.ready_time is not None else None
        found.append(Transition(
            barrier=level.label,
            before=before.label,
            after=after.label if after else None,
            reached=before.finished,
            into_s=_diff(end, before.last_end),
            out_s=_diff(after.first_start if after else None, end),
            hop_in_s=_diff(ready, before.last_end),
            hop_out_s=_diff(after.first_ready if after else None, end),
        ))
    return tuple(found)


def _diff(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else later - earlier


def hop_latencies_ms(
    jobs: Mapping[int, JobRow], dependencies: Sequence[tuple[int, int]]
) -> list[float]:
    """Returns, per dependent job, last dependency completed -> job ready, in milliseconds.

    Hops that were not recorded are left out; a negative hop (rounding of the server's
    timestamps) counts as 0.
    """
    hops = hop_latencies((asdict(job) for job in jobs.values()), dependencies)
    return [max(0.0, hop.ready_s * 1000.0) for hop in hops if hop.ready_s is not None]


def stuck_blocked(
    jobs: Mapping[int, JobRow], dependencies: Sequence[tuple[int, int]]
) -> tuple[int, ...]:
    """Returns the ids of jobs left blocked although all their dependencies are done."""
    deps_of: dict[int, list[int]] = defaultdict(list)
    for job_id, dep in dependencies:
        deps_of[job_id].append(dep)
    done = {int(s) for s in DONE}
    return tuple(
        job.id for job in sorted(jobs.values(), key=lambda j: j.id)
        if job.status == JobStatus.BLOCKED
        and all(jobs[d].status in done for d in deps_of[job.id] if d in jobs)
    )


def longest_stall(
    jobs: Mapping[int, JobRow],
    dependencies: Sequence[tuple[int, int]],
    min_gap_s: float,
    end_of_run: float | None = None,
    excused: Sequence[tuple[float, float]] = (),
) -> Stall:
    """Finds the longest interval with no job event although some job was waiting to progress.

    A job waits from the moment it could run (its last dependency completed, or it became ready)
    until its next event (ready, claimed, started). Events are any job's ready, claim, start or
    end. Only gaps longer than ``min_gap_s`` are examined, so the result is exact above it.

    Args:
        jobs: job id -> job.
        dependencies: ``(job_id, depends_on_job_id)`` pairs.
        min_gap_s: gaps up to this length are not examined.
        end_of_run: when the run ended (epoch seconds); a final gap up to it counts too.
        excused: epoch intervals disturbed by an injected fault (:func:`fault_windows`); a gap
            that overlaps one is the fault's doing, not a stall.

    Returns:
        The longest stall (absolute epoch times), or a zero stall.
    """
    events = sorted({t for j in jobs.values() for t in _times(j) if t is not None})
    if end_of_run is not None and events and end_of_run > events[-1]:
        events.append(end_of_run)
    waits = _waiting_intervals(jobs, dependencies)
    best = Stall(0.0, None, None, ())
    for a, b in zip(events, events[1:], strict=False):
        if b - a <= min_gap_s or _overlaps(a, b, excused):
            continue
        waiting = [(max(a, s), name) for s, e, name in waits if s < b and (e is None or e >= b)]
        if waiting and b - min(w for w, _ in waiting) > best.seconds:
            start = min(w for w, _ in waiting)
            best = Stall(b - start, start, b, tuple(sorted(name for _, name in waiting))[:5])
    return best


def _times(job: JobRow) -> tuple[float | None, ...]:
    return (job.ready_time, job.claim_time, job.start_time, job.end_time)


def _waiting_intervals(
    jobs: Mapping[int, JobRow], dependencies: Sequence[tuple[int, int]]
) -> list[tuple[float, float | None, str]]:
    deps_of: dict[int, list[int]] = defaultdict(list)
    for job_id, dep in dependencies:
        deps_of[job_id].append(dep)
    waits: list[tuple[float, float | None, str]] = []
    for job in jobs.values():
        ends = [jobs[d].end_time for d in deps_of[job.id] if d in jobs]
        if deps_of[job.id] and ends and all(e is not None for e in ends):
            eligible = max(e for e in ends if e is not None)
            waits.append((eligible, job.ready_time, job.name))
        if job.ready_time is not None:
            later = (job.claim_time, job.start_time, job.end_time)
            progressed = next((t for t in later if t is not None), None)
            waits.append((job.ready_time, progressed, job.name))
    return waits


def fault_windows(
    faults: Sequence[tuple[float | None, float | None]], lease_s: float, slack_s: float = 2.0
) -> list[tuple[float, float]]:
    """The intervals injected faults disturb: from a fault's injection until its end plus the
    lease (the server's time to notice a dead node) and ``slack_s``.

    Args:
        faults: ``(injected_at, ended_at)`` per fault (epoch seconds; None: not injected/ended).
        lease_s: the server's lease.
        slack_s: time to re-queue and restart the work.
    """
    return [(start, (end if end is not None else start) + lease_s + slack_s)
            for start, end in faults if start is not None]


def _overlaps(a: float, b: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(a < end and b > start for start, end in windows)


def stage_scaling(
    levels: Sequence[Level], excused: Sequence[tuple[float, float]] = ()
) -> dict[str, float | int | None]:
    """Summarises how stage durations grow with the stage number.

    Stages that overlap an ``excused`` interval (relative to the run start, like the levels'
    times: a fault disturbed them) are left out and counted in ``excused``.

    Returns:
        ``stages`` (finished stages judged), ``excused``, ``first_s``, ``max_later_s``,
        ``max_ratio`` (slowest later stage / first), ``last_ratio`` and
        ``growth_pct_per_stage`` (least-squares slope of the durations, as a percentage of the
        first stage's duration).
    """
    finished = [lv for lv in levels if lv.kind == "stage" and lv.duration_s is not None]
    judged = [lv for lv in finished if not (
        lv.first_start is not None and lv.last_end is not None
        and _overlaps(lv.first_start, lv.last_end, excused))]
    durations = [lv.duration_s for lv in judged if lv.duration_s is not None]
    first = durations[0] if durations else None
    later = durations[1:]
    slope = linear_slope(durations)
    usable = first is not None and first > 0
    return {
        "stages": len(durations),
        "excused": len(finished) - len(judged),
        "first_s": first,
        "max_later_s": max(later) if later else None,
        "max_ratio": max(later) / first if later and usable and first else None,
        "last_ratio": later[-1] / first if later and usable and first else None,
        "growth_pct_per_stage": slope / first * 100.0 if slope is not None and usable and first
        else None,
    }


def job_walls_ms(jobs: Iterable[JobRow]) -> list[float]:
    """Returns start -> end of the given jobs that ran, in milliseconds (server clock)."""
    return [(j.end_time - j.start_time) * 1000.0 for j in jobs
            if j.start_time is not None and j.end_time is not None]
