"""The worker's claimer thread: claims ahead (see :func:`claim_limit`), watches the workflow."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from torc_stress.errors import ConflictError, StressError
from torc_stress.logs import kv
from torc_stress.worker_lease import LeaseLost
from torc_stress.worker_logic import Backoff, claim_limit

if TYPE_CHECKING:
    from torc_stress.client import TorcClient

__all__ = ["ClaimerMixin"]

log = logging.getLogger(__name__)


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
        node: dict[str, Any]
        _known: set[int]
        _reconcile: bool
        _lost: Any

        def _node_lost(self, node_id: int, reason: LeaseLost) -> None: ...
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
        node_id = self.node.get("id")
        if self._lost is not None or node_id is None:
            return time.monotonic() + 0.05  # the main thread is replacing the node
        try:
            if self._reconcile:
                self._adopt_lost_claims(node_id)
            jobs = self.client.claim_next_jobs(self.workflow_id, limit, compute_node_id=node_id)
        except ConflictError as exc:  # the node is no longer active: it is being replaced
            log.warning("claim refused", extra=kv(compute_node_id=node_id, error=str(exc)))
            self._node_lost(node_id, LeaseLost.EXPIRED)
            return time.monotonic() + 0.05
        except StressError as exc:
            # the server may have committed the claim and died before answering
            self._reconcile = True
            self.retries["claim"] += 1
            self._note_failure("claim", exc)
            return time.monotonic() + max(0.05, self._claim_backoff.next())
        self._note_success()
        if not jobs:
            return time.monotonic() + self._claim_backoff.next()
        self._claim_backoff.reset()
        self._hand_over(jobs, node_id)
        return 0.0

    def _hand_over(self, jobs: list[dict[str, Any]], node_id: int) -> None:
        """Gives claimed jobs to the main thread, tagged with the node that holds them."""
        for job in jobs:
            job["_node"] = node_id
            self._known.add(int(job["id"]))
        self._state = "running"
        self.claimed.extend(jobs)
        self._claimed_total += len(jobs)
        self._wake_main()

    def _adopt_lost_claims(self, node_id: int) -> None:
        """Takes the pending jobs the server says this node holds but it never heard of (a
        claim committed whose answer was lost), so no claim is stranded."""
        pending = self.client.list_jobs(self.workflow_id, status="pending",
                                        active_compute_node_id=node_id)
        lost = [job for job in pending if int(job["id"]) not in self._known]
        self._reconcile = False
        if lost:
            log.info("adopting claimed jobs whose claim answer was lost",
                     extra=kv(compute_node_id=node_id, jobs=len(lost)))
            self._hand_over(lost, node_id)

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
