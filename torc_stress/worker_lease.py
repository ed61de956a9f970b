"""The worker's lease on its compute node: heartbeats, and fencing itself when they stop.

The server expires a leased node ``lease_s`` seconds after the last heartbeat it received and
gives the node's jobs to other workers. A heartbeat the server answered was received no earlier
than it was sent, so the server's deadline is at least ``sent + lease_s``. The worker fences
itself (kills its jobs and gives up the node) once ``FENCE_FRACTION * lease_s`` has passed since
the last answered heartbeat was sent: before any other worker can get those jobs, so no job
runs twice at the same time, whether the server or the link is what failed.

A heartbeat refused with ECONNREFUSED counts as answered: nothing listens at the server's
address, so no server is counting the lease down, and the next server to start gives every
node a full lease from its start-up. A server restart therefore fences nobody, however long
it takes; a hung server or a cut link (time-outs) does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum

from torc_stress.client import TorcClient
from torc_stress.errors import ApiError, ConflictError, ServerUnavailable, StressError
from torc_stress.logs import kv

__all__ = ["FENCE_FRACTION", "Lease", "LeaseLost", "fence_due"]

log = logging.getLogger(__name__)

#: the share of the lease after which a worker without an answered heartbeat fences itself
FENCE_FRACTION = 0.7
#: heartbeats per lease period
BEATS_PER_LEASE = 5


class LeaseLost(StrEnum):
    """Why the worker lost its compute node."""

    EXPIRED = "expired"  # the server said so (409)
    FENCED = "fenced"  # no answered heartbeat for FENCE_FRACTION of the lease


def fence_due(last_acked_send: float, now: float, lease_s: float) -> bool:
    """Whether a worker whose last answered heartbeat was sent at ``last_acked_send`` must
    fence itself now (pure; monotonic seconds)."""
    return lease_s > 0 and now - last_acked_send >= FENCE_FRACTION * lease_s


class Lease:
    """Heartbeats one compute node on a thread of its own until it is lost or stopped.

    Args:
        client: the worker's client (a copy with a short timeout is used, so a dead link
            cannot hold a heartbeat past the fencing time).
        on_lost: called once, from the heartbeat thread, when the node is lost.
    """

    def __init__(self, client: TorcClient, on_lost: Callable[[int, LeaseLost], None]) -> None:
        self._base = client
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lease_s = 0.0
        self.node_id: int | None = None

    @property
    def active(self) -> bool:
        """Whether the server leases this node (it expires it when heartbeats stop)."""
        return self.lease_s > 0

    def start(self, node_id: int) -> None:
        """Leases ``node_id`` with a first heartbeat and keeps it alive on a thread.

        A server without leases (404/405, or ``lease_s`` 0) leaves the lease inactive.

        Raises:
            StressError: the first heartbeat failed for another reason (the caller retries).
        """
        self.stop()
        self.node_id = node_id
        sent = time.monotonic()
        try:
            answer = self._base.heartbeat(node_id)
        except ApiError as exc:
            if exc.status in (404, 405) and not isinstance(exc, ConflictError):
                log.info("the server has no leases; not heartbeating", extra=kv(error=str(exc)))
                self.lease_s = 0.0
                return
            raise
        self.lease_s = float(answer.get("lease_s") or 0.0)
        if not self.active:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(node_id, sent),
                                        name="worker-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops heartbeating (the server expires the node unless it was deactivated)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        self._thread = None

    def _beat(self, node_id: int, acked_send: float) -> None:
        lease_s = self.lease_s
        period = lease_s / BEATS_PER_LEASE
        # a request may take at most half a period, so fencing is at most that late
        client = self._base.with_timeout(max(0.05, period / 2))
        stop = self._stop
        try:
            while True:
                now = time.monotonic()
                if fence_due(acked_send, now, lease_s):
                    log.warning("no heartbeat answered for most of the lease; fencing",
                                extra=kv(compute_node_id=node_id, lease_s=lease_s,
                                         silent_s=round(now - acked_send, 3)))
                    self._on_lost(node_id, LeaseLost.FENCED)
                    return
                fence_at = acked_send + FENCE_FRACTION * lease_s
                if stop.wait(max(0.0, min(period, fence_at - now))):
                    return
                sent = time.monotonic()
                try:
                    client.heartbeat(node_id)
                except ConflictError as exc:
                    log.warning("compute node lease expired", extra=kv(
                        compute_node_id=node_id, error=str(exc)))
                    self._on_lost(node_id, LeaseLost.EXPIRED)
                    return
                except ServerUnavailable as exc:
                    if exc.refused:
                        # no server listens: none can expire the lease before a new one
                        # starts, and that one gives every node a full lease from its start
                        acked_send = sent
                    log.debug("heartbeat failed", extra=kv(compute_node_id=node_id,
                                                           error=str(exc)))
                    continue
                except StressError as exc:
                    log.debug("heartbeat failed", extra=kv(compute_node_id=node_id,
                                                           error=str(exc)))
                    continue
                acked_send = sent
        finally:
            client.close()
