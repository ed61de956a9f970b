"""What each injected fault did to the run (pure, no I/O).

Inputs: ``run.json`` ``"faults"`` (written by the harness; controller clock), the server log's
lease-expiry lines and the job table (server clock). On one machine the clocks are the same
clock; across machines they are assumed to agree (NTP), which the report says where it matters.

Attribution: a lease-expiry line (``compute node lease expired ... requeued=K``) belongs to the
most recent fault injected at or before the line's time, preferring a fault aimed at the expired
node's host; a line before every fault (a worker that died on its own) belongs to none. The job
table says which jobs needed more than one attempt, but not when they were re-queued, so the
per-fault count is the log's and the database gives the run-wide count to compare it with.
Which jobs a fault re-queued is known where the execution journals show them: a job whose
attempt A was spawned on compute node N and who has a later attempt (``job.attempt_id``) was
re-queued by N's first lease expiry after that spawn. Jobs re-queued while only claimed (never
spawned) are in the count, not in that list.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from torc_stress.report.journals import ExecutionJournal
from torc_stress.report.rundir import JobRow, ResultRow

LEASE_TEXT = "compute node lease expired"
#: Faults during which nothing can complete: recovery is also measured from their end.
ENDED_KINDS = frozenset({"partition", "restart-server"})
#: Faults aimed at one host's workers: their expiries are matched by host first.
HOST_KINDS = frozenset({"kill-worker", "partition"})
_PAIR = re.compile(r"(\w+)=(\S+)")


@dataclass(frozen=True)
class Fault:
    """One ``--fault SPEC`` as the harness recorded it (times are epoch seconds or None)."""

    spec: str
    kind: str
    host: str | None
    count: int | None
    seconds: float | None
    trigger: str | None
    injected_at: float | None
    ended_at: float | None
    method: str | None
    targets: tuple[str, ...]
    error: str | None

    @property
    def injected(self) -> bool:
        """Whether the harness injected it (None = its trigger never came)."""
        return self.injected_at is not None


@dataclass(frozen=True)
class LeaseExpiry:
    """One ``compute node lease expired`` line of the server log (``t``: epoch seconds)."""

    line: int
    t: float | None
    compute_node_id: int | None
    hostname: str | None
    requeued: int
    pending: int
    running: int


@dataclass(frozen=True)
class FaultFigures:
    """One fault's effect; times are seconds since the workflow's start (``t0``).

    ``recovery_s`` is injection -> the next job completion; ``recovery_from_end_s`` is the
    fault's end -> the next completion (partition and restart-server only).
    ``requeued_running_s`` and ``requeued_done_s``: injection -> the first of the jobs it
    re-queued running again elsewhere, and -> the last of them completed (a dead worker's
    jobs wait for its lease to expire).
    """

    fault: Fault
    target: str
    injected_s: float | None
    ended_s: float | None
    expiries: tuple[LeaseExpiry, ...]
    recovery_s: float | None
    recovery_from_end_s: float | None
    completed_before: int
    jobs_seen: dict[int, int]
    #: injection -> the first re-queued job (of ``jobs_seen``) started again / the last done
    requeued_running_s: float | None = None
    requeued_done_s: float | None = None

    @property
    def attempts(self) -> dict[int, int]:
        """Attempts needed -> how many of the jobs the journals show this fault re-queued."""
        return dict(sorted(Counter(self.jobs_seen.values()).items()))

    @property
    def requeued(self) -> int:
        """Jobs the server re-queued because of the fault (sum of its expiry lines)."""
        return sum(e.requeued for e in self.expiries)

    @property
    def measured_recovery_s(self) -> float | None:
        """The recovery the verdict judges: from the end when nothing could run before it."""
        return self.recovery_from_end_s if self.fault.kind in ENDED_KINDS else self.recovery_s


@dataclass(frozen=True)
class FaultsSummary:
    """The faults section: per fault figures plus the run-wide attempt counts (database).

    Attributes:
        faults: one entry per fault asked for, in run.json order.
        expiries: every lease-expiry line of the server log.
        unattributed: expiry lines that belong to no fault.
        attempts: attempts a job needed -> how many jobs (from ``job.attempt_id``).
        attempts_recorded: whether the database counts attempts at all.
        later_attempt_results: results stored for an attempt after the first.
        leases: the server metrics' ``leases`` figures, when the server reported them.
    """

    faults: tuple[FaultFigures, ...]
    expiries: tuple[LeaseExpiry, ...]
    unattributed: tuple[LeaseExpiry, ...]
    attempts: dict[int, int]
    attempts_recorded: bool
    later_attempt_results: int
    leases: dict[str, Any] | None

    @property
    def jobs_requeued(self) -> int:
        """Jobs that needed more than one attempt (database)."""
        return sum(n for a, n in self.attempts.items() if a > 1)

    @property
    def extra_attempts(self) -> int:
        """Re-queues the database counts: attempts beyond each job's first."""
        return sum((a - 1) * n for a, n in self.attempts.items() if a > 1)

    @property
    def requeued_in_log(self) -> int:
        """Re-queues the server logged (every expiry line, attributed or not)."""
        return sum(e.requeued for e in self.expiries)


def parse_faults(run: Mapping[str, Any]) -> tuple[Fault, ...]:
    """Reads run.json's ``faults`` (older run directories have none: an empty tuple)."""
    raw = run.get("faults")
    if not isinstance(raw, list):
        return ()
    return tuple(_fault(item) for item in raw if isinstance(item, dict))


def _fault(doc: dict[str, Any]) -> Fault:
    targets = doc.get("targets")
    return Fault(
        spec=str(doc.get("spec") or "?"),
        kind=str(doc.get("kind") or "?"),
        host=_text(doc.get("host")),
        count=_num(doc.get("count"), int),
        seconds=_num(doc.get("seconds"), float),
        trigger=_text(doc.get("trigger")),
        injected_at=_num(doc.get("injected_at"), float),
        ended_at=_num(doc.get("ended_at"), float),
        method=_text(doc.get("method")),
        targets=tuple(str(t) for t in targets) if isinstance(targets, list) else (),
        error=_text(doc.get("error")),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _num(value: Any, kind: type[int] | type[float]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return kind(value)


def log_time(line: str) -> float | None:
    """Returns a log line's leading UTC timestamp as epoch seconds (None if it has none)."""
    stamp = line.split(maxsplit=1)[0] if line.strip() else ""
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def scan_lease_expiries(lines: Iterable[str]) -> tuple[LeaseExpiry, ...]:
    """Finds the server's lease-expiry lines (format in docs/internals.md, "Log lines")."""
    found = []
    for number, line in enumerate(lines, start=1):
        if LEASE_TEXT not in line:
            continue
        pairs = dict(_PAIR.findall(line.split(LEASE_TEXT, 1)[1]))
        found.append(LeaseExpiry(
            line=number, t=log_time(line), compute_node_id=_int(pairs.get("compute_node_id")),
            hostname=pairs.get("hostname"), requeued=_int(pairs.get("requeued")) or 0,
            pending=_int(pairs.get("pending")) or 0, running=_int(pairs.get("running")) or 0))
    return tuple(found)


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def attribute(faults: Sequence[Fault], expiry: LeaseExpiry) -> int | None:
    """Returns the index of the fault a lease expiry belongs to, or None (see the module doc)."""
    if expiry.t is None:
        return None
    before = [(f.injected_at, i) for i, f in enumerate(faults)
              if f.injected_at is not None and f.injected_at <= expiry.t]
    on_host = [(t, i) for t, i in before
               if faults[i].kind in HOST_KINDS and faults[i].host == expiry.hostname]
    chosen = max(on_host or before, default=None)
    return chosen[1] if chosen else None


def summarize_faults(
    faults: Sequence[Fault], jobs: Sequence[JobRow], results: Sequence[ResultRow],
    log_lines: Sequence[str], t0: float, *, server_host: str,
    attempts_recorded: bool, metrics: Mapping[str, Any] | None,
    journals: Sequence[ExecutionJournal] = (),
) -> FaultsSummary:
    """Computes the faults section.

    Args:
        faults: from :func:`parse_faults`.
        jobs: the workflow's jobs (server clock).
        results: the workflow's results.
        log_lines: the server log.
        t0: the workflow's start (epoch seconds, server clock).
        server_host: the host the server ran on (the target of restart-server).
        attempts_recorded: whether the database has ``job.attempt_id``.
        metrics: the server metrics document, if gathered.
        journals: the workers' execution journals (which jobs each fault re-queued).

    Returns:
        The summary.
    """
    expiries = scan_lease_expiries(log_lines)
    owner = [attribute(faults, e) for e in expiries]
    seen = jobs_requeued_by(expiries, owner, journals, jobs)
    ends = sorted(j.end_time for j in jobs if j.end_time is not None)
    by_id = {j.id: j for j in jobs}
    leases = metrics.get("leases") if metrics else None
    return FaultsSummary(
        faults=tuple(
            _figures(f, server_host, t0, ends,
                     tuple(e for e, o in zip(expiries, owner, strict=True) if o == i), seen[i],
                     by_id)
            for i, f in enumerate(faults)),
        expiries=expiries,
        unattributed=tuple(e for e, o in zip(expiries, owner, strict=True) if o is None),
        attempts=dict(sorted(Counter(j.attempt_id for j in jobs).items())),
        attempts_recorded=attempts_recorded,
        later_attempt_results=sum(1 for r in results if r.attempt_id > 1),
        leases=leases if isinstance(leases, dict) else None,
    )


def jobs_requeued_by(
    expiries: Sequence[LeaseExpiry], owner: Sequence[int | None],
    journals: Sequence[ExecutionJournal], jobs: Sequence[JobRow],
) -> defaultdict[int, dict[int, int]]:
    """Returns fault index -> {job id: attempts it needed} for the re-queues the journals show."""
    attempts = {j.id: j.attempt_id for j in jobs}
    by_node: dict[int, list[tuple[float, int | None]]] = defaultdict(list)
    for e, o in zip(expiries, owner, strict=True):
        if e.compute_node_id is not None and e.t is not None:
            by_node[e.compute_node_id].append((e.t, o))
    found: defaultdict[int, dict[int, int]] = defaultdict(dict)
    for event in (e for j in journals for e in j.events if e.kind == "spawn"):
        if attempts.get(event.job_id, 1) <= event.attempt or event.compute_node_id is None:
            continue
        later = sorted((t, o) for t, o in by_node.get(event.compute_node_id, ()) if t >= event.t)
        if later and later[0][1] is not None:
            found[later[0][1]][event.job_id] = attempts[event.job_id]
    return found


def _figures(fault: Fault, server_host: str, t0: float, ends: Sequence[float],
             expiries: tuple[LeaseExpiry, ...], jobs_seen: dict[int, int],
             jobs: Mapping[int, JobRow]) -> FaultFigures:
    def rel(t: float | None) -> float | None:
        return None if t is None else t - t0

    def since(times: list[float], pick: Any) -> float | None:
        if fault.injected_at is None or not times:
            return None
        return pick(times) - fault.injected_at

    again = [jobs[j] for j in jobs_seen if j in jobs]

    from_end = _next_after(ends, fault.ended_at) if fault.kind in ENDED_KINDS else None
    return FaultFigures(
        fault=fault,
        target=target_of(fault, server_host),
        injected_s=rel(fault.injected_at),
        ended_s=rel(fault.ended_at),
        expiries=expiries,
        recovery_s=_next_after(ends, fault.injected_at),
        recovery_from_end_s=from_end,
        completed_before=sum(1 for t in ends if fault.injected_at is not None
                             and t <= fault.injected_at),
        jobs_seen=dict(sorted(jobs_seen.items())),
        requeued_running_s=since([j.start_time for j in again if j.start_time], min),
        requeued_done_s=since([j.end_time for j in again if j.end_time], max),
    )


def _next_after(ends: Sequence[float], moment: float | None) -> float | None:
    """Seconds from ``moment`` to the first completion after it (ends sorted ascending)."""
    if moment is None:
        return None
    later = next((t for t in ends if t > moment), None)
    return None if later is None else later - moment


def target_of(fault: Fault, server_host: str) -> str:
    """Names what the fault hit: its host (restart-server: the server's) and its targets."""
    host = fault.host or (server_host if fault.kind == "restart-server" else "-")
    what = f"{host} x{fault.count}" if fault.kind == "kill-worker" and fault.count else host
    return f"{what} ({', '.join(fault.targets)})" if fault.targets else what
