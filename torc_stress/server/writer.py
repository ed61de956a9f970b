"""The single writer: one read-write connection, group commit on the serving event loop.

Every mutation is an :class:`Op`. Ops queued in the same event-loop iteration (up to
:data:`MAX_BATCH`) run in ONE ``BEGIN IMMEDIATE`` transaction with a SAVEPOINT per op (a failing
op rolls back only itself; ops marked ``checks_first`` go without, see
:func:`~torc_stress.server.ops_common.checks_first`), then the end-of-batch hook (the
unblocker) runs, the transaction commits once and only then are the callers' futures resolved:
an acknowledged write is durable. Consecutive calls of an op that offers a ``merged`` form
(``complete_job``: one completion request per job is the seed's default) run as one call, so
a batch of completions costs one ``executemany`` per statement rather than one per job.
SQLITE_BUSY (another *process* holds the write lock) is retried with jittered backoff without
blocking the loop, and turned into a retryable 503 after ``lock_error_after`` seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torc_stress.errors import ApiError
from torc_stress.logs import kv
from torc_stress.server.disk_full import DiskFull, is_full_error
from torc_stress.server.metrics import Metrics

logger = logging.getLogger(__name__)

MAX_BATCH = 500
#: Loop iterations a batch may wait for more requests, while each brings some (see _flush_next).
MAX_WAIT_ROUNDS = 2


class _Refused(Exception):  # noqa: N818 - internal signal: the batch got 503s, nothing to run
    """Raised by :meth:`Writer._begin` after ``lock_error_after`` seconds of SQLITE_BUSY."""


class _Dirty(Exception):  # noqa: N818 - internal signal: roll the whole transaction back
    """An op without a SAVEPOINT failed after it had written."""


class _Full(Exception):  # noqa: N818 - internal signal: abandon the whole transaction
    """SQLITE_FULL: SQLite may have rolled the transaction back already; no op is stored."""


class BatchHooks(Protocol):
    """What the writer asks of the state it serves."""

    def end_of_batch(self, conn: sqlite3.Connection) -> None:
        """Runs inside the transaction after the batch's ops (the synchronous unblocker)."""

    def after_commit(self) -> None:
        """Publishes the committed state to readers."""

    def after_rollback(self, conn: sqlite3.Connection) -> None:
        """Rebuilds in-memory state after a transaction did not commit."""


@dataclass(slots=True)
class Op:
    """One queued write: ``fn(conn, *args)`` returns the response body or raises ApiError."""

    kind: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    enqueued: float
    loop: asyncio.AbstractEventLoop | None = None
    future: Any = None
    result: Any = None
    error: BaseException | None = None
    #: run inside a SAVEPOINT of its own (False for ops marked ``checks_first``)
    savepoint: bool = True
    #: ``fn.merged``: runs consecutive calls of ``fn`` at once (see :meth:`Writer._run_merged`)
    merged: Callable[..., Any] | None = None
    #: called on the loop with ``(result, error)`` in place of resolving a future
    callback: Callable[[Any, BaseException | None], None] | None = None
    #: may run without SQLite's foreign-key checks (see ``ops_common.references_checked``)
    checked: bool = False

    def __post_init__(self) -> None:
        fn = self.fn
        self.checked = getattr(fn, "references_checked", False)
        if self.merged is None:
            self.merged = getattr(fn, "merged", None)


def is_lock_error(exc: BaseException) -> bool:
    """Whether an sqlite3 error means another connection holds the lock."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class Writer:
    """Owns the read-write connection and runs queued ops in group-commit transactions.

    The group commit runs on the event loop that serves the requests: a handler appends its op
    and awaits a future (or passes a callback, :meth:`submit_callback`); the first op schedules
    :meth:`_flush` two or three loop iterations later (:meth:`_flush_next`), so every request
    parsed meanwhile shares one transaction, and the answers are given on the loop with no
    thread hand-off. A write lock held by another *process* (SQLITE_BUSY) never blocks the
    loop: ``BEGIN IMMEDIATE`` fails at once and the batch is retried with ``call_later`` and
    jittered backoff. Threads other than the loop use :meth:`call`; before the loop exists
    (start-up) their ops run on the calling thread.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        hooks: BatchHooks,
        metrics: Metrics,
        lock_error_after: float = 45.0,
    ) -> None:
        self.conn = conn
        self._hooks = hooks
        self._metrics = metrics
        self._lock_error_after = lock_error_after
        self._pending: list[Op] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._busy_since: float | None = None
        self._attempt = 0
        self._exec_lock = threading.Lock()
        self._stopped = False
        self._foreign_keys = True  # as the connection was opened
        self._full = DiskFull()
        conn.execute("PRAGMA busy_timeout=0")

    @property
    def exec_lock(self) -> threading.Lock:
        """Held while a transaction runs (the checkpointer holds it to let the WAL restart)."""
        return self._exec_lock

    # -- submission -------------------------------------------------------------------------
    def submit(self, kind: str, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queues an op from the event loop; await the returned future for its result."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(Op(kind, fn, args, time.perf_counter(), loop, future,
                                savepoint=not getattr(fn, "checks_first", False)))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush_next)
        return future

    def submit_callback(
        self,
        kind: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        callback: Callable[[Any, BaseException | None], None],
    ) -> None:
        """Queues an op from the event loop; ``callback(result, error)`` runs on the loop once
        the op's transaction has committed (or failed). No future, no extra loop iteration."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._pending.append(Op(kind, fn, args, time.perf_counter(), loop, None,
                                savepoint=not getattr(fn, "checks_first", False),
                                callback=callback))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush_next)

    def submit_threadsafe(
        self, kind: str, fn: Callable[..., Any], *args: Any
    ) -> concurrent.futures.Future[Any]:
        """Queues an op from any thread; returns a concurrent future."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        op = Op(kind, fn, args, time.perf_counter(), None, future)
        loop = self._loop
        if loop is not None and not loop.is_closed() and not self._stopped:
            try:
                loop.call_soon_threadsafe(self._enqueue, op)
                return future
            except RuntimeError:  # the loop closed in between
                pass
        self._run_now([op])
        return future

    def call(self, kind: str, fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Any:
        """Runs an op through the writer and waits for it (for threads other than the loop)."""
        return self.submit_threadsafe(kind, fn, *args).result(timeout)

    def _enqueue(self, op: Op) -> None:
        self._pending.append(op)
        if not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Nothing to start: batches run on the serving event loop (kept for the interface)."""

    def stop(self, timeout: float = 30.0) -> None:
        """Runs every op still queued (on the calling thread); later ops run synchronously."""
        self._stopped = True
        pending, self._pending = self._pending, []
        if pending:
            self._run_now(pending, timeout)

    # -- the loop side ----------------------------------------------------------------------
    def _flush_next(self, seen: int = 0, rounds: int = 0) -> None:
        # more loop iterations (and I/O polls) before the flush: requests that arrived
        # meanwhile join this transaction instead of paying for their own. The first op waits
        # one iteration, then another while each iteration brings more ops (MAX_WAIT_ROUNDS in
        # all). Measured with 8 capacity clients (per-job, 3 runs each): a flush after one
        # iteration gave a median of 4,271 completions/s, one or two more 4,548 and 4,542,
        # and up to six more 4,241-4,767: a commit saved is worth more than the latency it adds
        # only while the requests keep coming.
        assert self._loop is not None
        pending = len(self._pending)
        if pending > seen and rounds < MAX_WAIT_ROUNDS and pending < MAX_BATCH:
            self._loop.call_soon(self._flush_next, pending, rounds + 1)
        else:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch = self._pending
        if not batch:
            return
        self._pending = []
        for start in range(0, len(batch), MAX_BATCH):
            chunk = batch[start : start + MAX_BATCH]
            state = self._attempt_batch(chunk)
            if state == "busy":
                # keep the order: the blocked ops go first, then whatever else is queued
                self._pending = batch[start:] + self._pending
                delay = min(0.25, 0.002 * 2 ** min(self._attempt, 8)) * random.uniform(0.5, 1.5)
                self._scheduled = True
                assert self._loop is not None
                self._loop.call_later(delay, self._flush)
                return
            self._resolve(chunk)

    def _run_now(self, batch: list[Op], timeout: float = 60.0) -> None:
        """Runs ops on the calling thread, sleeping between lock retries."""
        for start in range(0, len(batch), MAX_BATCH):
            chunk = batch[start : start + MAX_BATCH]
            while self._attempt_batch(chunk) == "busy":
                time.sleep(min(0.25, 0.002 * 2 ** min(self._attempt, 8)) * random.uniform(0.5, 1.5))
            self._resolve(chunk)

    def _attempt_batch(self, batch: list[Op]) -> str:
        """One try at a batch: ``done`` (every op has a result or error) or ``busy``."""
        with self._exec_lock:
            try:
                self._enforce_foreign_keys(not all(op.checked for op in batch))
                if not self._begin(batch):
                    return "busy"
                self._execute(batch)
            except _Refused:
                pass
            except BaseException as exc:  # noqa: BLE001 - never leave a caller hanging
                logger.exception("writer batch failed")
                for op in batch:
                    if op.error is None and op.result is None:
                        op.error = ApiError(500, f"internal error: {exc}")
        return "done"

    def _enforce_foreign_keys(self, on: bool) -> None:
        """Turns SQLite's foreign-key checks on or off (between transactions only)."""
        if on != self._foreign_keys:
            self.conn.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
            self._foreign_keys = on

    def _begin(self, batch: list[Op]) -> bool:
        """``BEGIN IMMEDIATE`` once; False if another process holds the lock (retry later).

        After ``lock_error_after`` seconds of failures every op of the batch gets a 503 and
        True is returned (the batch is done).
        """
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not is_lock_error(exc):
                raise
        else:
            self._busy_since = None
            self._attempt = 0
            return True
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        self._attempt += 1
        waited = now - self._busy_since
        kinds = sorted({op.kind for op in batch})
        with self._metrics.lock:
            for op in batch:
                self._metrics.op(op.kind).busy_retries += 1
        if waited >= self._lock_error_after:
            with self._metrics.lock:
                self._metrics.lock_errors += 1
            logger.error(
                "database is locked",
                extra=kv(op=",".join(kinds), ops=len(batch), waited_s=waited),
            )
            message = (
                f"database is locked by another process (waited {waited:.1f} s); "
                "retry the request later"
            )
            for op in batch:
                op.error = ApiError(503, message)
            self._busy_since = None
            self._attempt = 0
            raise _Refused
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "database is locked, retrying",
                extra=kv(op=",".join(kinds), attempt=self._attempt, waited_ms=waited * 1000),
            )
        return False

    def _execute(self, batch: list[Op]) -> None:
        conn = self.conn
        tx_start = time.perf_counter()
        hooks = self._hooks
        metrics = self._metrics
        timings: list[tuple[str, float, float]] = []
        try:
            i, n = 0, len(batch)
            while i < n:
                op = batch[i]
                op_start = time.perf_counter()
                end = i + 1
                if op.merged is not None:
                    fn = op.fn
                    while end < n and batch[end].fn is fn:
                        end += 1
                if end - i > 1:
                    group = batch[i:end]
                    self._run_merged(group)
                    share = (time.perf_counter() - op_start) * 1000 / len(group)
                    timings.extend((g.kind, (op_start - g.enqueued) * 1000, share)
                                   for g in group)
                else:
                    if op.savepoint:
                        self._run_guarded(op)
                    else:
                        self._run_unguarded(op)
                    timings.append((op.kind, (op_start - op.enqueued) * 1000,
                                    (time.perf_counter() - op_start) * 1000))
                i = end
        except _Dirty:
            self._abandon(batch, "an operation failed half-way")
            return
        except _Full as full:
            self._abandon(batch, error=self._full.failed(len(batch), full.__cause__ or full))
            return
        try:
            hooks.end_of_batch(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            if is_full_error(exc):
                self._abandon(batch, error=self._full.failed(len(batch), exc))
                return
            logger.exception("transaction failed; rolling back", extra=kv(ops=len(batch)))
            self._abandon(batch, str(exc))
            return
        if self._full.since is not None:
            self._full.recovered()
        hold_ms = (time.perf_counter() - tx_start) * 1000
        hooks.after_commit()
        with metrics.lock:
            metrics.tx_count += 1
            metrics.tx_ops += len(batch)
            metrics.tx_batch.add(len(batch))
            metrics.tx_hold.add(hold_ms)
            kind_stats = None
            last_kind = None
            for kind, wait_ms, op_hold in timings:
                if kind is not last_kind:
                    kind_stats = metrics.op(kind)
                    last_kind = kind
                kind_stats.count += 1  # type: ignore[union-attr]
                kind_stats.wait_ms.add(wait_ms)  # type: ignore[union-attr]
                kind_stats.hold_ms.add(op_hold)  # type: ignore[union-attr]

    def _run_guarded(self, op: Op) -> None:
        """Runs ``op`` in a SAVEPOINT: a failure rolls back just its own writes."""
        conn = self.conn
        conn.execute("SAVEPOINT op")
        try:
            op.result = op.fn(conn, *op.args)
        except Exception as exc:  # noqa: BLE001 - one op must not poison the batch
            if is_full_error(exc):
                raise _Full from exc
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            op.error = _op_error(op, exc)
            return
        conn.execute("RELEASE op")

    def _run_unguarded(self, op: Op) -> None:
        """Runs a ``checks_first`` op without a SAVEPOINT; _Dirty if it failed after a write."""
        conn = self.conn
        before = conn.total_changes
        try:
            op.result = op.fn(conn, *op.args)
        except Exception as exc:  # noqa: BLE001 - one op must not poison the batch
            if is_full_error(exc):
                raise _Full from exc
            if conn.total_changes != before:
                logger.error("write op failed after it wrote; rolling the batch back",
                             extra=kv(op=op.kind, error=str(exc)))
                raise _Dirty from exc
            op.error = _op_error(op, exc)

    def _run_merged(self, group: list[Op]) -> None:
        """Runs consecutive calls of one mergeable op through its ``merged`` function.

        ``merged(conn, [args, ...])`` returns one ``(result, error)`` per call, or None having
        written nothing when the calls cannot go together: then each runs on its own.
        """
        conn = self.conn
        merged = group[0].merged
        assert merged is not None
        before = conn.total_changes
        try:
            outcomes = merged(conn, [op.args for op in group])
        except Exception as exc:
            if is_full_error(exc):
                raise _Full from exc
            if conn.total_changes != before:
                logger.error("merged write ops failed after they wrote; rolling the batch back",
                             extra=kv(op=group[0].kind, ops=len(group), error=str(exc)))
                raise _Dirty from exc
            logger.warning("merged write ops failed before writing; running them one by one",
                           exc_info=exc, extra=kv(op=group[0].kind, ops=len(group)))
            outcomes = None
        if outcomes is None:
            for op in group:
                if op.savepoint:
                    self._run_guarded(op)
                else:
                    self._run_unguarded(op)
            return
        for op, (result, error) in zip(group, outcomes, strict=True):
            op.result = result
            op.error = error

    def _abandon(self, batch: list[Op], reason: str = "", error: ApiError | None = None) -> None:
        """Rolls the transaction back, reloads memory, and answers every op with a 503.

        ``error`` is that 503 when given, else one saying ``reason`` and to retry.
        """
        conn = self.conn
        if conn.in_transaction:  # SQLite itself may have rolled back (SQLITE_FULL)
            conn.execute("ROLLBACK")
        if error is None:
            error = ApiError(503, f"the write was not stored ({reason}); retry the request")
        for op in batch:
            op.result = None
            op.error = error
        self._hooks.after_rollback(conn)

    def _resolve(self, batch: list[Op]) -> None:
        """Hands every op's outcome to its caller (directly when on the op's own loop)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        by_loop: dict[asyncio.AbstractEventLoop, list[Op]] = {}
        for op in batch:
            if op.loop is None:
                if op.error is not None:
                    op.future.set_exception(op.error)
                else:
                    op.future.set_result(op.result)
            elif op.loop is running:
                _settle(op)
            else:
                by_loop.setdefault(op.loop, []).append(op)
        for loop, ops in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                loop.call_soon_threadsafe(_resolve_on_loop, ops)


def _op_error(op: Op, exc: Exception) -> ApiError:
    """The error an op's caller gets for ``exc`` (unexpected ones are logged)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        return ApiError(422, f"the request conflicts with stored data: {exc}")
    logger.error("write op failed", exc_info=exc, extra=kv(op=op.kind))
    return ApiError(500, f"internal error in {op.kind}: {exc}")


def _settle(op: Op) -> None:
    callback = op.callback
    if callback is not None:
        try:
            callback(op.result, op.error)
        except Exception:  # noqa: BLE001 - one caller's bug must not stop the others' answers
            logger.exception("answering a write failed", extra=kv(op=op.kind))
        return
    future = op.future
    if future.done():  # the request was cancelled (client went away)
        return
    if op.error is not None:
        future.set_exception(op.error)
    else:
        future.set_result(op.result)


def _resolve_on_loop(ops: list[Op]) -> None:
    for op in ops:
        _settle(op)


def open_writer(path: Path) -> sqlite3.Connection:
    """Opens the writer's connection (see ``store.open_writer_connection``)."""
    from torc_stress.server.store import open_writer_connection

    return open_writer_connection(path)
