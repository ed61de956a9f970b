"""The worker's reporter thread: delivers each job's start, then its completion, in order."""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from torc_stress.errors import ApiError, StressError
from torc_stress.logs import kv
from torc_stress.worker_logic import Backoff, classify_failure
from torc_stress.worker_records import Report

if TYPE_CHECKING:
    from torc_stress.client import TorcClient

__all__ = ["ReporterMixin"]

log = logging.getLogger(__name__)


class ReporterMixin:
    """The reporter thread's part of :class:`torc_stress.worker.Worker`."""

    if TYPE_CHECKING:
        client: TorcClient
        workflow_id: int
        run_id: int
        node: dict[str, Any]
        batch_completions: bool
        _batch_starts: bool
        claimed: deque[dict[str, Any]]
        retries: dict[str, int]
        _reports: deque[Report]
        _reports_cv: threading.Condition
        _reporter_done: bool
        _abandon: threading.Event
        _refused: deque[int]
        _claim_wake: threading.Event
        _claim_backoff: Backoff

        def _wake_main(self) -> None: ...
        def _note_failure(self, op: str, exc: StressError) -> None: ...
        def _note_success(self) -> None: ...

    def _report(self, report: Report) -> None:
        with self._reports_cv:
            self._reports.append(report)
            self._reports_cv.notify()

    def _reports_idle(self) -> bool:
        """Whether every start and completion has been delivered (or settled)."""
        return not self._reports

    def _report_loop(self) -> None:
        backoff = Backoff(0.01, 1.0)
        while True:
            with self._reports_cv:
                while not self._reports and not self._reporter_done:
                    self._reports_cv.wait()
                if not self._reports or self._abandon.is_set():
                    return
            if self._deliver_head():
                backoff.reset()
            elif self._abandon.wait(backoff.next()):
                return

    def _deliver_head(self) -> bool:
        """Delivers the oldest report (a batch of completions in batch mode).

        Returns:
            True when it is settled (taken, or refused for good); False to retry later.
        """
        with self._reports_cv:  # the main thread appends meanwhile: iterate under the lock
            head = self._reports[0]
            window = list(itertools.islice(self._reports, 0, 1000)) \
                if head.kind == "start" or self.batch_completions else []
        if head.kind == "start":
            batch = [r for r in window if r.kind == "start"]
            settled = self._send_starts(batch)
        elif self.batch_completions:
            batch = list(itertools.takewhile(lambda r: r.kind == "complete", window))
            settled = self._send_batch(batch)
        else:
            batch = [head]
            settled = self._send_one(head)
        if settled:
            with self._reports_cv:
                _drop_delivered(self._reports, batch)
            if head.kind == "complete" and not self.claimed and not self._reports:
                # NOTE: a completion may unblock other jobs (a stage's last one does): once its
                # last completion is delivered, an idle worker looks for work at once. Resetting
                # on every completion cost an empty claim per completion of a stage's tail.
                self._claim_backoff.reset()
                self._claim_wake.set()
        if not self._reports:
            self._wake_main()
        return settled

    def _send_starts(self, batch: list[Report]) -> bool:
        """Starts the jobs of ``batch`` (one ``batch_start_jobs``); True when settled.

        A server without ``batch_start_jobs`` (torc's own answers 404) gets ``start_job`` per
        job from then on.
        """
        if not self._batch_starts:
            return all(self._send_start(report) for report in batch) if batch else True
        try:
            answer = self.client.batch_start_jobs(self.workflow_id, self.run_id,
                                                  int(self.node["id"]),
                                                  [r.job_id for r in batch])
        except StressError as exc:
            if isinstance(exc, ApiError) and exc.status in (404, 405):
                log.info("the server has no batch_start_jobs; starting jobs one by one",
                         extra=kv(error=str(exc)))
                self._batch_starts = False
                return self._send_starts(batch)
            if classify_failure(exc) != "retry":
                return all(self._send_start(report) for report in batch)
            for report in batch:
                report.failed_before = True
            self.retries["start_job"] += 1
            self._note_failure("start_job", exc)
            return False
        self._note_success()
        for error in answer.get("errors") or []:
            log.warning("job not started; killing it",
                        extra=kv(job_id=error.get("job_id"), error=error.get("message")))
            self._refused.append(int(error.get("job_id", -1)))
        if answer.get("errors"):
            self._wake_main()
        return True

    def _send_start(self, report: Report) -> bool:
        """Starts one job with ``start_job``; True when settled."""
        try:
            self.client.start_job(report.job_id, self.run_id, int(self.node["id"]))
        except StressError as exc:
            outcome = classify_failure(exc)
            if outcome == "taken" and report.failed_before:
                return True  # our earlier attempt got through; the job is ours
            if outcome != "retry":
                log.warning("job not started; killing it",
                            extra=kv(job_id=report.job_id, error=str(exc)))
                self._refused.append(report.job_id)
                self._wake_main()
                return True
            report.failed_before = True
            self.retries["start_job"] += 1
            self._note_failure("start_job", exc)
            return False
        self._note_success()
        return True

    def _send_one(self, report: Report) -> bool:
        try:
            self.client.complete_job(report.job_id, report.status, self.run_id, report.result)
        except StressError as exc:
            return self._completion_failed([report], exc)
        self._note_success()
        return True

    def _send_batch(self, batch: list[Report]) -> bool:
        entries = [{"job_id": r.job_id, "run_id": self.run_id, "status": r.status,
                    "result": r.result} for r in batch]
        try:
            answer = self.client.batch_complete_jobs(self.workflow_id, entries)
        except StressError as exc:
            return self._completion_failed(batch, exc)
        self._note_success()
        for error in answer.get("errors") or []:
            log.warning("completion refused", extra=kv(job_id=error.get("job_id"),
                                                       error=error.get("message")))
        return True

    def _completion_failed(self, batch: list[Report], exc: StressError) -> bool:
        """Handles a completion request that failed; returns True if the batch is settled."""
        outcome = classify_failure(exc)
        if outcome == "retry":
            self.retries["complete_job"] += 1
            self._note_failure("complete_job", exc)
            return False
        level = logging.INFO if outcome == "taken" else logging.ERROR
        for report in batch:
            log.log(level, "completion already taken" if outcome == "taken"
                    else "completion refused; dropping it",
                    extra=kv(job_id=report.job_id, error=str(exc)))
        return True


def _drop_delivered(reports: deque[Report], delivered: list[Report]) -> None:
    """Removes ``delivered`` (taken from the front part of ``reports``) from ``reports``."""
    if len(delivered) == 1 and reports and reports[0] is delivered[0]:
        reports.popleft()
        return
    gone = {id(r) for r in delivered}
    keep = [r for r in reports if id(r) not in gone]
    reports.clear()
    reports.extend(keep)
