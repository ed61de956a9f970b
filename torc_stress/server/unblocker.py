"""Incremental unblocking: per job the number of unfinished upstream jobs, plus reverse adjacency.

:class:`DependencyTracker` is pure bookkeeping (no I/O): the writer tells it which jobs finished
and it answers which dependents became ready and which are canceled by a failed upstream (a
cancellation cascades like a failure). :class:`UnblockerThread` is the delayed mode
(``--unblock-delay S > 0``): woken by completions, it waits S seconds and then asks the writer to
run one unblock pass.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class UnblockOutcome:
    """What one batch of finished jobs did to their dependents."""

    ready: list[int] = field(default_factory=list)
    canceled: list[int] = field(default_factory=list)
    #: for each ready job, the latest end time among its upstream jobs (for hop latency)
    upstream_end: dict[int, float] = field(default_factory=dict)


class DependencyTracker:
    """Counts unfinished upstream jobs per blocked job and propagates completions."""

    def __init__(self) -> None:
        self.dependents: dict[int, list[int]] = {}
        self.remaining: dict[int, int] = {}
        self.failed_upstream: set[int] = set()
        self.last_upstream_end: dict[int, float] = {}

    def forget(self, job_ids: Iterable[int]) -> None:
        """Drops everything known about these jobs (before a re-initialize or a delete)."""
        for job_id in job_ids:
            self.dependents.pop(job_id, None)
            self.remaining.pop(job_id, None)
            self.failed_upstream.discard(job_id)
            self.last_upstream_end.pop(job_id, None)

    def add_edge(self, job_id: int, upstream_id: int) -> None:
        """Records that ``job_id`` depends on ``upstream_id`` (reverse adjacency only)."""
        self.dependents.setdefault(upstream_id, []).append(job_id)

    def set_blocked(self, job_id: int, unfinished: int, failed_upstream: bool = False) -> None:
        """Marks a job as waiting for ``unfinished`` upstream jobs."""
        self.remaining[job_id] = unfinished
        if failed_upstream:
            self.failed_upstream.add(job_id)

    def mark_done(
        self,
        finished: Iterable[tuple[int, bool, float]],
        cancels_on_failure: Callable[[int], bool],
    ) -> UnblockOutcome:
        """Propagates finished jobs to their dependents.

        Args:
            finished: ``(job_id, failed, end_time)`` per job that reached a done status.
            cancels_on_failure: whether a job has ``cancel_on_blocking_job_failure``.

        Returns:
            The dependents that became ready and those canceled (cascaded transitively).
        """
        outcome = UnblockOutcome()
        stack = list(finished)
        while stack:
            job_id, failed, end_time = stack.pop()
            for dep in self.dependents.get(job_id, ()):
                left = self.remaining.get(dep)
                if left is None:
                    continue
                if failed:
                    self.failed_upstream.add(dep)
                if end_time > self.last_upstream_end.get(dep, 0.0):
                    self.last_upstream_end[dep] = end_time
                left -= 1
                if left > 0:
                    self.remaining[dep] = left
                    continue
                del self.remaining[dep]
                upstream_end = self.last_upstream_end.pop(dep, end_time)
                if dep in self.failed_upstream and cancels_on_failure(dep):
                    self.failed_upstream.discard(dep)
                    outcome.canceled.append(dep)
                    stack.append((dep, True, end_time))
                else:
                    self.failed_upstream.discard(dep)
                    outcome.ready.append(dep)
                    outcome.upstream_end[dep] = upstream_end
        outcome.ready.sort()
        return outcome


class UnblockerThread:
    """The delayed unblocker: sleeps ``delay`` seconds after a wake-up, then submits a pass."""

    def __init__(self, delay: float, submit_pass: Callable[[], None]) -> None:
        self._delay = delay
        self._submit_pass = submit_pass
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="unblocker", daemon=True)

    def start(self) -> None:
        """Starts the thread."""
        self._thread.start()

    def wake(self) -> None:
        """Tells the unblocker that completions are waiting."""
        self._wake.set()

    def stop(self) -> None:
        """Stops the thread (pending completions are redone at the next start-up)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            if self._stop.wait(self._delay):
                return
            try:
                self._submit_pass()
            except Exception:  # noqa: BLE001 - keep the thread alive; the next wake retries
                logger.exception("unblock pass could not be submitted")
                self._wake.set()
