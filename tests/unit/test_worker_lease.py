"""The worker's lease: when it fences itself, when the server's word ends it, and when not."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from torc_stress.errors import ConflictError, NotFoundError, ServerUnavailable, StressError
from torc_stress.worker_lease import FENCE_FRACTION, Lease, LeaseLost, fence_due


@pytest.mark.parametrize("silent_s,lease_s,due", [
    (0.0, 5.0, False),
    (FENCE_FRACTION * 5.0 - 0.01, 5.0, False),
    (FENCE_FRACTION * 5.0, 5.0, True),
    (100.0, 0.0, False),  # no lease: never
], ids=["just-answered", "just-before", "at-the-fraction", "leases-off"])
def test_a_worker_fences_itself_once_most_of_its_lease_passed_unanswered(
        silent_s: float, lease_s: float, due: bool) -> None:
    assert fence_due(10.0, 10.0 + silent_s, lease_s) is due


class FakeClient:
    """Answers the first heartbeat with a lease, then whatever ``then`` says."""

    def __init__(self, lease_s: float, then: StressError | None) -> None:
        self.lease_s = lease_s
        self.then = then
        self.calls = 0

    def heartbeat(self, node_id: int) -> dict[str, Any]:
        self.calls += 1
        if self.calls > 1 and self.then is not None:
            raise self.then
        return {"compute_node_id": node_id, "lease_s": self.lease_s}

    def with_timeout(self, timeout: float) -> FakeClient:
        return self

    def close(self) -> None:
        pass


def run_lease(client: FakeClient, wait_s: float) -> tuple[list[LeaseLost], float]:
    lost: list[LeaseLost] = []
    done = threading.Event()

    def on_lost(node_id: int, reason: LeaseLost) -> None:
        lost.append(reason)
        done.set()

    lease = Lease(client, on_lost)  # type: ignore[arg-type]
    started = time.monotonic()
    lease.start(7)
    done.wait(wait_s)
    elapsed = time.monotonic() - started
    lease.stop()
    return lost, elapsed


def test_a_worker_that_cannot_reach_a_live_server_fences_before_the_lease_runs_out() -> None:
    lost, elapsed = run_lease(FakeClient(0.5, ServerUnavailable("http://x", "timed out")), 3.0)
    assert lost == [LeaseLost.FENCED]
    assert FENCE_FRACTION * 0.5 <= elapsed < 0.5


def test_a_refused_connection_never_fences_no_server_is_counting_the_lease() -> None:
    refused = ServerUnavailable("http://x", "connection refused", refused=True)
    lost, _ = run_lease(FakeClient(0.3, refused), 1.0)
    assert lost == []


def test_the_server_s_word_that_the_lease_expired_ends_it_at_once() -> None:
    lost, elapsed = run_lease(FakeClient(0.5, ConflictError(409, "lease_expired")), 3.0)
    assert lost == [LeaseLost.EXPIRED]
    assert elapsed < 0.5


def test_a_server_without_leases_leaves_the_lease_inactive() -> None:
    class NoLeases(FakeClient):
        def heartbeat(self, node_id: int) -> dict[str, Any]:
            raise NotFoundError(404, "no route")

    lease = Lease(NoLeases(1.0, None), lambda n, r: None)  # type: ignore[arg-type]
    lease.start(7)
    assert not lease.active
