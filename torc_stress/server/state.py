"""In-memory state kept by the writer, and every write operation (run on the writer thread).

Rule for each op: validate (raise ApiError), then write SQL, then change memory. A failure in
SQL therefore leaves memory untouched; an unexpected failure after memory changed asks for a
full reload from the database after the transaction.
"""

from __future__ import annotations

import gc
import heapq
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from torc_stress.errors import ConflictError, NotFoundError
from torc_stress.logs import kv
from torc_stress.server.metrics import Metrics
from torc_stress.server.store import (
    RR_COLUMNS,
    rr_row_to_model,
)
from torc_stress.server.unblocker import DependencyTracker, UnblockOutcome
from torc_stress.statuses import DONE, FINISHED, JobStatus

logger = logging.getLogger("torc_stress.server.unblocker")

N_STATUS = len(JobStatus)
_DONE_INTS = frozenset(int(s) for s in DONE)
_FINISHED_INTS = frozenset(int(s) for s in FINISHED)
_FAILURE_INTS = frozenset((6, 7, 8))
MAX_BULK_JOBS = 10000


_last_second: list[Any] = [None, ""]


def utc_timestamp(now: float | None = None) -> str:
    """Formats a time like torc: ``%Y-%m-%dT%H:%M:%S.%3fZ``.

    The ``%Y-%m-%dT%H:%M:%S`` part of the last second formatted is kept: a start_job reply
    needs one per job, and strftime is most of the cost.
    """
    now = time.time() if now is None else now
    second = int(now)
    cached = _last_second
    if cached[0] != second:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        cached[0] = second
    return f"{cached[1]}.{int(now % 1 * 1000):03d}Z"


class JobMem:
    """What the writer remembers about one job."""

    __slots__ = (
        "workflow_id",
        "status",
        "depth",
        "cancel_flag",
        "rr_id",
        "node_id",
        "failed",
        "model",
        "attempt",
    )

    def __init__(
        self, workflow_id: int, status: int, depth: int, cancel_flag: bool, rr_id: int | None
    ) -> None:
        self.workflow_id = workflow_id
        self.status = status
        self.depth = depth
        self.cancel_flag = cancel_flag
        self.rr_id = rr_id
        #: the compute node that claimed (pending) or runs (running) the job; None when the
        #: claim named no node (torc's own client) or the job is not held by anyone
        self.node_id: int | None = None
        self.failed = False
        #: the attempt a start or completion must belong to (``job.attempt_id``)
        self.attempt = 1
        #: the job's model as selected at its last claim (builds start/complete replies);
        #: dropped at completion, so only claimed, unfinished jobs hold one
        self.model: dict[str, Any] | None = None


@dataclass(frozen=True)
class WorkflowSnapshot:
    """Committed per-workflow figures for lock-free hot reads."""

    workflow_id: int
    run_id: int
    is_canceled: bool
    total: int
    counts: tuple[int, ...]
    by_depth: tuple[tuple[int, int, tuple[int, ...]], ...]

    @property
    def is_complete(self) -> bool:
        """torc's rule: canceled, or every job in completed/failed/canceled/terminated/disabled."""
        unfinished = sum(n for s, n in enumerate(self.counts) if s not in _FINISHED_INTS)
        return self.is_canceled or unfinished == 0

    @property
    def is_uninitialized(self) -> bool:
        """Every job is uninitialized or disabled."""
        return self.counts[0] + self.counts[9] == self.total


@dataclass
class WorkflowMem:
    """What the writer remembers about one workflow."""

    id: int
    run_id: int = 0
    is_canceled: bool = False
    default_rr: int | None = None
    job_ids: set[int] = field(default_factory=set)
    counts: list[int] = field(default_factory=lambda: [0] * N_STATUS)
    depth_counts: dict[int, list[int]] = field(default_factory=dict)
    ready: list[int] = field(default_factory=list)

    def snapshot(self) -> WorkflowSnapshot:
        """Copies the figures for readers."""
        return WorkflowSnapshot(
            self.id,
            self.run_id,
            self.is_canceled,
            len(self.job_ids),
            tuple(self.counts),
            tuple((d, sum(c), tuple(c)) for d, c in sorted(self.depth_counts.items())),
        )


class ServerState:
    """The writer's in-memory state plus the ops; readers see only :attr:`snapshots`."""

    def __init__(
        self, metrics: Metrics, unblock_delay: float = 0.0, lease_s: float = 0.0
    ) -> None:
        self.metrics = metrics
        self.unblock_delay = unblock_delay
        #: seconds a leased compute node may go without a heartbeat (0: leases are off)
        self.lease_s = lease_s
        metrics.lease_s = lease_s
        #: leased compute node id -> time.monotonic() deadline of its lease
        self.leases: dict[int, float] = {}
        #: leased compute nodes that expired or deactivated themselves: refused from then on
        self.expired: set[int] = set()
        self.workflows: dict[int, WorkflowMem] = {}
        self.jobs: dict[int, JobMem] = {}
        self.rr: dict[int, tuple[int, int, int, int, int, int]] = {}
        self.tracker = DependencyTracker()
        self.pending_unblock: list[tuple[int, bool, float]] = []
        #: completions stored already marked ``unblocking_processed`` because this transaction's
        #: own pass unblocks them (see :attr:`unblocks_in_batch`)
        self.premarked: set[int] = set()
        #: the id of the last result row (completions number their result rows themselves)
        self.last_result_id = 0
        #: compute node id -> its workflow id (the per-job writes check node ids here)
        self.nodes: dict[int, int] = {}
        self.snapshots: dict[int, WorkflowSnapshot] = {}
        self.rr_models: dict[int, dict[str, Any]] = {}
        self._dirty: set[int] = set()
        self._stale: set[int] = set()
        self._deleted: set[int] = set()
        self._rr_new: dict[int, dict[str, Any]] = {}
        self.needs_reload = False
        self.wake_unblocker: Any = None
        self.conn: sqlite3.Connection | None = None
        self._in_batch_pass = False
        self._freeze = False  # jobs were added: freeze them after the commit
        #: jobs whose unstarted claim was released at start-up (still startable by the claimant)
        self.released: set[int] = set()

    # -- writer hooks -----------------------------------------------------------------------
    def end_of_batch(self, conn: sqlite3.Connection) -> None:
        """Runs the unblock pass in the batch's transaction (``--unblock-delay 0``)."""
        if not self.pending_unblock:
            self.premarked.clear()
            return
        if self.unblock_delay > 0:
            if self.wake_unblocker is not None:
                self.wake_unblocker()
            return
        try:
            self._in_batch_pass = True
            self.unblock_pass(conn)
        except Exception:
            logger.exception("unblock pass failed; it is redone from durable state")
            # the completions were stored as processed: store them as not, so the reload
            # below (and any later start-up) redoes their unblocking
            conn.executemany(
                "UPDATE job SET unblocking_processed = 0 WHERE id = ?",
                [(j,) for j in self.premarked],
            )
            self.needs_reload = True
        finally:
            self._in_batch_pass = False
            self.premarked.clear()

    @property
    def unblocks_in_batch(self) -> bool:
        """Whether every completion is unblocked by a pass in its own transaction.

        Then a completion can be stored with ``unblocking_processed = 1`` at once (one UPDATE
        per job fewer): the pass commits with it or not at all.
        """
        return self.unblock_delay <= 0

    def after_commit(self) -> None:
        """Marks the snapshots of the workflows the batch touched stale (reloads first if asked).

        Snapshots are rebuilt on the next read (:meth:`snapshot`), not per transaction: every
        reader runs on the event loop, which also runs the batches, so between two batches
        memory is exactly the committed state.
        """
        if self.needs_reload and self.conn is not None:
            self.load(self.conn)
            return
        if self._freeze:
            # NOTE: jobs live as long as their workflow. Frozen, the cyclic garbage collector
            # stops walking them: each full collection otherwise walked every job ever created
            # (measured over 50 stages x 1000 jobs: stage times grew 1.6 ms per stage; with
            # the collector off, not at all). Refcounting still frees them.
            self._freeze = False
            gc.freeze()
        self._stale.update(self._dirty)
        for wid in self._deleted:
            self.snapshots.pop(wid, None)
            self._stale.discard(wid)
        self.rr_models.update(self._rr_new)
        self._dirty.clear()
        self._deleted.clear()
        self._rr_new.clear()

    def snapshot(self, workflow_id: int) -> WorkflowSnapshot | None:
        """The committed figures of a workflow (None if it does not exist); call on the loop."""
        if workflow_id in self._stale:
            self._stale.discard(workflow_id)
            wf = self.workflows.get(workflow_id)
            if wf is not None:
                self.snapshots[workflow_id] = wf.snapshot()
        return self.snapshots.get(workflow_id)

    def after_rollback(self, conn: sqlite3.Connection) -> None:
        """Reloads memory from the database after a transaction did not commit."""
        self.load(conn)

    def reload_if_needed(self, conn: sqlite3.Connection) -> None:
        """Called by the writer loop after commit when an op failed unexpectedly."""
        if self.needs_reload:
            self.load(conn)

    # -- status bookkeeping -----------------------------------------------------------------
    def _set_status(self, job_id: int, jm: JobMem, new: int) -> None:
        wf = self.workflows[jm.workflow_id]
        wf.counts[jm.status] -= 1
        wf.counts[new] += 1
        dc = wf.depth_counts[jm.depth]
        dc[jm.status] -= 1
        dc[new] += 1
        jm.status = new
        self._dirty.add(jm.workflow_id)

    def _add_job(self, job_id: int, jm: JobMem) -> None:
        wf = self.workflows[jm.workflow_id]
        self.jobs[job_id] = jm
        wf.job_ids.add(job_id)
        wf.counts[jm.status] += 1
        wf.depth_counts.setdefault(jm.depth, [0] * N_STATUS)[jm.status] += 1
        self._dirty.add(jm.workflow_id)
        self._freeze = True

    def workflow(self, workflow_id: int) -> WorkflowMem:
        """Returns a workflow or raises 404."""
        wf = self.workflows.get(workflow_id)
        if wf is None:
            raise NotFoundError(404, f"workflow {workflow_id} does not exist")
        return wf

    def job(self, job_id: int) -> JobMem:
        """Returns a job or raises 404."""
        jm = self.jobs.get(job_id)
        if jm is None:
            raise NotFoundError(404, f"job {job_id} does not exist")
        return jm

    def check_node(self, node_id: int) -> None:
        """Raises 422 unless compute node ``node_id`` exists (what its foreign key would say),
        409 if its lease expired."""
        if node_id not in self.nodes:
            raise ConflictError(422, f"compute node {node_id} does not exist; register the "
                                "worker with POST /compute_nodes first")
        if node_id in self.expired:
            raise ConflictError(409, f"compute node {node_id} is no longer active (its lease "
                                "expired or it was deactivated) and its jobs went back to "
                                "ready: register a new compute node")

    # -- loading ----------------------------------------------------------------------------
    def load(self, conn: sqlite3.Connection) -> None:
        """Rebuilds all memory from durable state (start-up, or after a failed transaction)."""
        self._freeze = True
        self.workflows.clear()
        self.jobs.clear()
        self.rr.clear()
        self.tracker = DependencyTracker()
        self.pending_unblock = []
        self.premarked = set()
        self.last_result_id = conn.execute("SELECT coalesce(max(id), 0) FROM result").fetchone()[0]
        self.nodes = {}
        self.leases = {}
        self.expired = set()
        fresh = time.monotonic() + self.lease_s  # a restart gives every live node a full lease
        for nid, wid, leased, active in conn.execute(
            "SELECT id, workflow_id, lease_s IS NOT NULL, is_active FROM compute_node"
        ):
            self.nodes[nid] = wid
            if leased and active:
                self.leases[nid] = fresh
            elif leased:
                self.expired.add(nid)
        for wid, run_id, canceled in conn.execute(
            "SELECT w.id, s.run_id, s.is_canceled FROM workflow w "
            "JOIN workflow_status s ON s.id = w.status_id"
        ):
            self.workflows[wid] = WorkflowMem(wid, run_id, bool(canceled))
        for row in conn.execute(f"SELECT {RR_COLUMNS} FROM resource_requirements"):
            self.rr[row[0]] = (row[1], row[3], row[4], row[5], row[8], row[9])
            self.rr_models[row[0]] = rr_row_to_model(row)
            wf = self.workflows.get(row[1])
            if wf is not None and row[2] == "default" and wf.default_rr is None:
                wf.default_rr = row[0]
        processed: dict[int, int] = {}
        for jid, wid, status, depth, cancel, rr_id, unb, node, attempt, rc in conn.execute(
            "SELECT j.id, j.workflow_id, j.status, j.depth, j.cancel_on_blocking_job_failure, "
            "j.resource_requirements_id, j.unblocking_processed, j.active_compute_node_id, "
            "j.attempt_id, "
            "(SELECT r.return_code FROM workflow_result wr JOIN result r ON r.id = wr.result_id "
            " WHERE wr.job_id = j.id) FROM job j "
            "ORDER BY j.id"
        ):
            jm = JobMem(wid, status, depth, bool(cancel), rr_id)
            jm.node_id = node
            jm.attempt = attempt or 1
            jm.failed = status in _FAILURE_INTS and rc != 0
            self._add_job(jid, jm)
            processed[jid] = unb
            if status == JobStatus.READY:
                self.workflows[wid].ready.append(jid)
        edges: dict[int, list[int]] = {}
        for job_id, up in conn.execute("SELECT job_id, depends_on_job_id FROM job_depends_on"):
            edges.setdefault(job_id, []).append(up)
            self.tracker.add_edge(job_id, up)
        for jid, ups in edges.items():
            jm = self.jobs[jid]
            if jm.status != JobStatus.BLOCKED:
                continue
            unfinished = 0
            failed = False
            for up in ups:
                um = self.jobs[up]
                if um.status in _DONE_INTS and processed[up]:
                    failed = failed or um.failed
                else:
                    unfinished += 1
            self.tracker.set_blocked(jid, unfinished, failed)
        now = time.time()
        for jid, jm in self.jobs.items():
            if jm.status in _DONE_INTS and not processed[jid]:
                self.pending_unblock.append((jid, jm.failed, now))
        self._dirty = set(self.workflows)
        self._deleted = set(self.snapshots) - set(self.workflows)
        self.needs_reload = False
        self.after_commit()

    # -- unblocking -------------------------------------------------------------------------
    def unblock_pass(self, conn: sqlite3.Connection) -> None:
        """Propagates every pending completion to its dependents (one pass)."""
        items = self.pending_unblock
        if not items:
            return
        self.pending_unblock = []
        started = time.perf_counter()
        jobs = self.jobs
        outcome = self.tracker.mark_done(items, lambda j: jobs[j].cancel_flag)
        now = time.time()
        premarked = self.premarked
        unmarked = [(j,) for j, _, _ in items if j not in premarked]
        if outcome.ready or outcome.canceled or unmarked:
            # all or nothing; most passes (no dependent became ready) write nothing at all
            conn.execute("SAVEPOINT unblock")
            try:
                self._write_pass(conn, outcome, unmarked, now)
            except BaseException:
                conn.execute("ROLLBACK TO unblock")
                conn.execute("RELEASE unblock")
                raise
            conn.execute("RELEASE unblock")
        per_wf: dict[int, list[int]] = {}
        for jid, _, _ in items:
            per_wf.setdefault(jobs[jid].workflow_id, [0, 0, 0])[0] += 1
        hops = []
        for jid in outcome.ready:
            jm = jobs[jid]
            self._set_status(jid, jm, 2)
            heapq.heappush(self.workflows[jm.workflow_id].ready, jid)
            per_wf.setdefault(jm.workflow_id, [0, 0, 0])[1] += 1
            hops.append((now - outcome.upstream_end[jid]) * 1000)
        for jid in outcome.canceled:
            jm = jobs[jid]
            self._set_status(jid, jm, 7)
            jm.failed = True
            per_wf.setdefault(jm.workflow_id, [0, 0, 0])[2] += 1
        duration_ms = (time.perf_counter() - started) * 1000
        m = self.metrics
        with m.lock:
            m.unblock_passes += 1
            m.unblock_completions += len(items)
            m.unblock_ready += len(outcome.ready)
            m.unblock_canceled += len(outcome.canceled)
            m.unblock_batch.add(len(items))
            m.unblock_duration.add(duration_ms)
            for hop in hops:
                m.unblock_hop.add(max(hop, 0.0))
            if self._in_batch_pass:
                stats = m.op("unblock")
                stats.count += 1
                stats.wait_ms.add(0.0)
                stats.hold_ms.add(duration_ms)
        # a line per pass that changed something (a stage became ready); one per plain
        # completion would be a log line per job
        debug = logger.isEnabledFor(logging.DEBUG)
        for wid, (completed, ready, canceled) in per_wf.items():
            if not (ready or canceled or self.unblock_delay > 0 or debug):
                continue
            logger.log(
                logging.INFO if ready or canceled or self.unblock_delay > 0 else logging.DEBUG,
                "unblock pass",
                extra=kv(
                    workflow_id=wid,
                    completed=completed,
                    ready=ready,
                    canceled=canceled,
                    duration_ms=duration_ms,
                ),
            )

    @staticmethod
    def _write_pass(
        conn: sqlite3.Connection, outcome: UnblockOutcome, unmarked: list[tuple[int]], now: float
    ) -> None:
        if outcome.ready:
            conn.executemany(
                "UPDATE job SET status = 2, ready_time = ? WHERE id = ?",
                [(now, j) for j in outcome.ready],
            )
        if outcome.canceled:
            conn.executemany(
                "UPDATE job SET status = 7, end_time = ?, unblocking_processed = 1 WHERE id = ?",
                [(now, j) for j in outcome.canceled],
            )
        if unmarked:
            conn.executemany("UPDATE job SET unblocking_processed = 1 WHERE id = ?", unmarked)

    def op_unblock(self, conn: sqlite3.Connection) -> dict[str, Any]:
        """The delayed unblocker's op: one pass over every pending completion."""
        pending = len(self.pending_unblock)
        self.unblock_pass(conn)
        return {"processed": pending}
