"""The worker's claimer thread: claims ahead (see :func:`claim_limit`), watches the workflow."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from torc_stress.errors import StressError
from torc_stress.worker_logic import Backoff, claim_limit

if TYPE_CHECKING:
    from torc_stress.client import TorcClient

__all__ = ["ClaimerMixin"]


class ClaimerMixin:
    """The claimer thread's part of :class:`torc_stress.worker.Worker`."""

    if TYPE_CHECKING:
        client: TorcClient
        workflow_id: int
        max_parallel_jobs: int
        prefetch: int
        claimed: deque[dict[str, Any]]
        retries: dict[str, int]
        _closing: bool
        _claiming: bool
        _stop_requested: bool
        _state: str
        _claimed_total: int
        _claim_wake: threading.Event
        _claim_backoff: Backoff

        def _held(self) -> int: ...
        def _wake_main(self) -> None: ...
        def _note_failure(self, op: str, exc: StressError) -> None: ...
        def _note_success(self) -> None: ...

    def _claim_loop(self) -> None:
        next_claim = 0.0
        last_check = 0.0
        while not self._closing:
            self._claim_wake.clear()
            now = time.monotonic()
            if now - last_check >= (1.0 if self._held() else 0.05):
                last_check = now
                state = self._workflow_state()
                if state in ("canceled", "complete"):
                    self._state = state
                    self._wake_main()
                    if state == "canceled":
                        return
            # NOTE: flag first, then read the stop request: the main thread never sees a stop
            # with no claim in flight while a claim is about to be sent.
            self._claiming = True
            try:
                limit = 0 if self._stop_requested else claim_limit(
                    self._held(), self.max_parallel_jobs, self.prefetch)
                if limit and now >= next_claim:
                    next_claim = self._claim(limit)
                    continue
            finally:
                self._claiming = False
            wait = last_check + (1.0 if self._held() else 0.05) - now
            if limit:
                wait = min(wait, next_claim - now)
            self._claim_wake.wait(max(0.0, wait))

    def _claim(self, limit: int) -> float:
        """Claims up to ``limit`` jobs for the main thread; returns when to claim next."""
        try:
            jobs = self.client.claim_next_jobs(self.workflow_id, limit)
        except StressError as exc:
            self.retries["claim"] += 1
            self._note_failure("claim", exc)
            return time.monotonic() + max(0.05, self._claim_backoff.next())
        self._note_success()
        if not jobs:
            return time.monotonic() + self._claim_backoff.next()
        self._claim_backoff.reset()
        self._state = "running"
        self.claimed.extend(jobs)
        self._claimed_total += len(jobs)
        self._wake_main()
        return 0.0

    def _workflow_state(self) -> str:
        try:
            doc = self.client.is_complete(self.workflow_id)
        except StressError as exc:
            self._note_failure("is_complete", exc)
            return "unknown"
        self._note_success()
        if doc.get("is_canceled"):
            return "canceled"
        return "complete" if doc.get("is_complete") else "running"
