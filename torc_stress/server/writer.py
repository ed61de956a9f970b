"""The single writer: one thread, one read-write connection, group commit.

Every mutation is an :class:`Op` put on a queue. The writer takes one op, drains whatever else is
already queued (up to :data:`MAX_BATCH`), runs them in ONE ``BEGIN IMMEDIATE`` transaction with a
SAVEPOINT per op (a failing op rolls back only itself), runs the end-of-batch hook (the
unblocker), commits once and only then resolves the callers' futures: an acknowledged write is
durable. SQLITE_BUSY (another *process* holds the write lock) is retried with jittered backoff and
turned into a retryable 503 after ``lock_error_after`` seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torc_stress.errors import ApiError
from torc_stress.logs import kv
from torc_stress.server.metrics import Metrics

logger = logging.getLogger(__name__)

MAX_BATCH = 500
_STOP = object()


class BatchHooks(Protocol):
    """What the writer asks of the state it serves."""

    def begin_op(self) -> None:
        """Called before each op (marks the point an op-level rollback returns to)."""

    def rollback_op(self) -> None:
        """Called after an op failed and its savepoint was rolled back."""

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
    extra: dict[str, Any] = field(default_factory=dict)


def is_lock_error(exc: BaseException) -> bool:
    """Whether an sqlite3 error means another connection holds the lock."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class Writer:
    """Owns the read-write connection and runs queued ops in group-commit transactions."""

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
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._stopped = threading.Event()

    # -- submission -------------------------------------------------------------------------
    def submit(self, kind: str, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queues an op from the event loop; await the returned future for its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(Op(kind, fn, args, time.perf_counter(), loop, future))
        return future

    def submit_threadsafe(
        self, kind: str, fn: Callable[..., Any], *args: Any
    ) -> concurrent.futures.Future[Any]:
        """Queues an op from any thread; returns a concurrent future."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(Op(kind, fn, args, time.perf_counter(), None, future))
        return future

    def call(self, kind: str, fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Any:
        """Runs an op through the queue and waits for it (for threads other than the loop)."""
        return self.submit_threadsafe(kind, fn, *args).result(timeout)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the writer thread."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finishes every op queued so far, then stops the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop_after = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_after = True
                    break
                batch.append(item)
            try:
                self._execute(batch)
            except BaseException as exc:  # noqa: BLE001 - never leave a caller hanging
                logger.exception("writer batch failed")
                for op in batch:
                    if op.error is None and op.result is None:
                        op.error = ApiError(500, f"internal error: {exc}")
            self._resolve(batch)
            if stop_after:
                return

    def _begin(self, batch: list[Op]) -> bool:
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return True
            except sqlite3.OperationalError as exc:
                if not is_lock_error(exc):
                    raise
                attempt += 1
                waited = time.monotonic() - started
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
                    return False
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "database is locked, retrying",
                        extra=kv(op=",".join(kinds), attempt=attempt, waited_ms=waited * 1000),
                    )
                time.sleep(min(0.25, 0.002 * 2 ** min(attempt, 8)) * random.uniform(0.5, 1.5))

    def _execute(self, batch: list[Op]) -> None:
        conn = self.conn
        if not self._begin(batch):
            return
        tx_start = time.perf_counter()
        hooks = self._hooks
        metrics = self._metrics
        timings: list[tuple[str, float, float]] = []
        for op in batch:
            op_start = time.perf_counter()
            hooks.begin_op()
            conn.execute("SAVEPOINT op")
            try:
                op.result = op.fn(conn, *op.args)
                conn.execute("RELEASE op")
            except ApiError as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                hooks.rollback_op()
                op.error = exc
            except sqlite3.IntegrityError as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                hooks.rollback_op()
                op.error = ApiError(422, f"the request conflicts with stored data: {exc}")
            except Exception as exc:  # noqa: BLE001 - one op must not poison the batch
                logger.exception("write op failed", extra=kv(op=op.kind))
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                hooks.rollback_op()
                op.error = ApiError(500, f"internal error in {op.kind}: {exc}")
            timings.append((op.kind, (op_start - op.enqueued) * 1000, (time.perf_counter() - op_start) * 1000))
        try:
            hooks.end_of_batch(conn)
            conn.execute("COMMIT")
        except Exception as exc:
            logger.exception("transaction failed; rolling back", extra=kv(ops=len(batch)))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for op in batch:
                op.result = None
                op.error = ApiError(503, f"the write was not stored ({exc}); retry the request")
            hooks.after_rollback(conn)
            return
        hold_ms = (time.perf_counter() - tx_start) * 1000
        hooks.after_commit()
        with metrics.lock:
            metrics.tx_count += 1
            metrics.tx_ops += len(batch)
            metrics.tx_batch.add(len(batch))
            metrics.tx_hold.add(hold_ms)
            for kind, wait_ms, op_hold in timings:
                stats = metrics.op(kind)
                stats.count += 1
                stats.wait_ms.add(wait_ms)
                stats.hold_ms.add(op_hold)

    @staticmethod
    def _resolve(batch: list[Op]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Op]] = {}
        for op in batch:
            if op.loop is None:
                if op.error is not None:
                    op.future.set_exception(op.error)
                else:
                    op.future.set_result(op.result)
            else:
                by_loop.setdefault(op.loop, []).append(op)
        for loop, ops in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_on_loop, ops)
            except RuntimeError:  # loop closed during shutdown
                pass


def _resolve_on_loop(ops: list[Op]) -> None:
    for op in ops:
        if op.future.done():
            continue
        if op.error is not None:
            op.future.set_exception(op.error)
        else:
            op.future.set_result(op.result)


def open_writer(path: Path) -> sqlite3.Connection:
    """Opens the writer's connection (see :func:`torc_stress.server.store.open_writer_connection`)."""
    from torc_stress.server.store import open_writer_connection

    return open_writer_connection(path)
