"""Compute-node leases: heartbeats, expiry, and a dead node's jobs going back to ready.

torc has no heartbeat: a worker that dies leaves its claimed and running jobs pending and
running for good. Here a worker may lease its compute node (an API extension, like
``batch_start_jobs``): its first ``POST /compute_nodes/{id}/heartbeat`` stores that the node is
leased, later ones only move the deadline in memory. A leased node that misses its deadline
is expired by :class:`LeaseWatcher`: the node becomes inactive and each of its claimed or
running jobs goes back to ready at the next attempt, so a late start or completion from the
old attempt is refused (409). Nodes that never heartbeat (torc's own client) are never
expired. A restart gives every live leased node a full lease from start-up, so a server
outage alone expires nobody.

A node that deactivates itself (``PUT /compute_nodes/{id}`` with ``is_active: false``, what a
worker does at exit) hands back its jobs the same way.
"""

from __future__ import annotations

import heapq
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from torc_stress.errors import ConflictError, NotFoundError
from torc_stress.logs import kv
from torc_stress.server.state import ServerState

logger = logging.getLogger(__name__)

_HELD = (3, 4)  # pending (claimed), running


def heartbeat_answer(st: ServerState, node_id: int) -> dict[str, Any] | None:
    """Answers a heartbeat from memory (call on the loop); None if the node must be leased
    first (a write: :func:`lease_node`).

    Raises:
        NotFoundError: no such compute node.
        ConflictError: 409, the node's lease expired (or it deactivated itself).
    """
    if node_id not in st.nodes:
        raise NotFoundError(404, f"compute node {node_id} does not exist")
    if node_id in st.expired:
        raise ConflictError(409, f"lease_expired: compute node {node_id} is no longer active "
                            "and its jobs went back to ready; register a new compute node")
    if st.lease_s <= 0:
        return {"compute_node_id": node_id, "lease_s": 0.0}
    if node_id in st.leases:
        st.leases[node_id] = time.monotonic() + st.lease_s
        return {"compute_node_id": node_id, "lease_s": st.lease_s}
    return None


def lease_node(conn: sqlite3.Connection, st: ServerState, node_id: int) -> dict[str, Any]:
    """Writer op: the node's first heartbeat; from now on it is leased."""
    answer = heartbeat_answer(st, node_id)  # (another heartbeat may have leased it meanwhile)
    if answer is not None:
        return answer
    conn.execute("UPDATE compute_node SET lease_s = ? WHERE id = ?", (st.lease_s, node_id))
    st.leases[node_id] = time.monotonic() + st.lease_s
    return {"compute_node_id": node_id, "lease_s": st.lease_s}


def due(st: ServerState, now: float) -> bool:
    """Whether a lease has run out (safe to call from another thread: reads one dict)."""
    return any(deadline <= now for deadline in list(st.leases.values()))


def expire_due(conn: sqlite3.Connection, st: ServerState) -> dict[str, Any]:
    """Writer op: expires every lease that ran out; their nodes' jobs go back to ready."""
    now = time.monotonic()
    nodes = [n for n, deadline in st.leases.items() if deadline <= now]
    requeued = 0
    for node_id in nodes:
        requeued += release_node(conn, st, node_id, reason="lease expired")
    return {"expired": nodes, "requeued": requeued}


def release_node(conn: sqlite3.Connection, st: ServerState, node_id: int, *, reason: str) -> int:
    """Makes a node inactive and gives its claimed and running jobs back (next attempt).

    Returns:
        How many jobs went back to ready.
    """
    wid = st.nodes[node_id]
    wf = st.workflows[wid]
    jobs = st.jobs
    held = [j for j in wf.job_ids if jobs[j].node_id == node_id and jobs[j].status in _HELD]
    pending = sum(1 for j in held if jobs[j].status == 3)
    conn.executemany(
        "UPDATE job SET status = 2, attempt_id = attempt_id + 1, claim_time = NULL, "
        "start_time = NULL, active_compute_node_id = NULL WHERE id = ?",
        [(j,) for j in held],
    )
    conn.execute("UPDATE compute_node SET is_active = 0 WHERE id = ?", (node_id,))
    data = {"category": "compute_node", "type": reason.replace(" ", "_"),
            "compute_node_id": node_id, "requeued_job_ids": sorted(held)}
    conn.execute(
        "INSERT INTO event (workflow_id, timestamp, data) VALUES (?,?,?)",
        (wid, int(time.time() * 1000), orjson.dumps(data).decode()),
    )
    for j in held:
        jm = jobs[j]
        st._set_status(j, jm, 2)
        jm.node_id = None
        jm.model = None
        jm.attempt += 1
        heapq.heappush(wf.ready, j)
    st.leases.pop(node_id, None)
    st.expired.add(node_id)
    m = st.metrics
    with m.lock:
        if reason == "lease expired":
            m.leases_expired += 1
        m.leases_requeued += len(held)
    if held or reason == "lease expired":
        hostname = conn.execute(
            "SELECT hostname FROM compute_node WHERE id = ?", (node_id,)
        ).fetchone()[0]
        logger.log(
            logging.WARNING if reason == "lease expired" else logging.INFO,
            f"compute node {reason}",
            extra=kv(compute_node_id=node_id, hostname=hostname, requeued=len(held),
                     pending=pending, running=len(held) - pending),
        )
    return len(held)


class LeaseWatcher:
    """A thread that expires leases that ran out, within a quarter of the lease time.

    It only looks at memory; a write happens only when some lease is due.
    """

    def __init__(self, state: ServerState, run_op: Callable[[], Any]) -> None:
        self._state = state
        self._run_op = run_op
        self._interval = min(1.0, max(0.05, state.lease_s / 4))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-watcher", daemon=True)

    def start(self) -> None:
        """Gives every leased node a full lease from now, then starts watching (call before
        the server answers)."""
        fresh = time.monotonic() + self._state.lease_s
        for node_id in list(self._state.leases):
            self._state.leases[node_id] = fresh
        self._thread.start()

    def stop(self) -> None:
        """Stops watching (waits for a pass in progress)."""
        self._stop.set()
        self._thread.join(5.0)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            if not due(self._state, time.monotonic()):
                continue
            try:
                self._run_op()
            except Exception:  # noqa: BLE001 - logged; the next pass tries again
                logger.exception("expiring leases failed; retrying")
