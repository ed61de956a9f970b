"""WAL checkpoints on a thread of their own, so the writer's commits stay short.

SQLite's automatic checkpoint runs inside the ``COMMIT`` that crosses the WAL threshold: that
commit copies the WAL's pages back into the database file on the event loop that serves the
requests. Measured on this project's 2-core VM (4 job updates and 4 result inserts per
transaction, 20,000 jobs): 38 us per job with the default threshold of 1000 pages, 24 us with
no automatic checkpoint. The writer turns it off (``wal_autocheckpoint=0``) and
:class:`Checkpointer` runs a ``PASSIVE`` checkpoint from its own connection every ``interval``
seconds. sqlite3 releases the GIL while SQLite works, so the copy runs beside the event loop.

A ``PASSIVE`` checkpoint never blocks the writer, but under a steady stream of commits it never
catches up either, and the WAL only starts over once a checkpoint has copied *every* frame:
without help it grows for as long as the load lasts. So once the WAL holds more than
``reset_frames`` frames, the checkpointer copies what it can unlocked, then holds the writer's
lock for a second pass over the few frames committed meanwhile; the writer's next transaction
then starts the WAL over. ``journal_size_limit`` truncates the file after such a reset.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from torc_stress.logs import kv
from torc_stress.server.metrics import Metrics

logger = logging.getLogger(__name__)

#: Seconds between checkpoints.
DEFAULT_INTERVAL_S = 0.1
#: WAL frames (pages) beyond which the checkpointer makes the WAL start over.
RESET_FRAMES = 8000
#: Bytes the WAL file is truncated to after a reset (it grows back under load).
WAL_SIZE_LIMIT = 64 * 1024 * 1024


def disable_autocheckpoint(conn: sqlite3.Connection) -> None:
    """Stops ``conn``'s commits from checkpointing (the checkpointer thread does it)."""
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")


class Checkpointer:
    """A daemon thread that checkpoints the WAL of ``path`` every ``interval`` seconds.

    Args:
        path: the database file.
        metrics: where checkpoint counts and durations go.
        writer_lock: held by the writer while it runs a transaction.
        interval: seconds between checkpoints.
        reset_frames: WAL size (frames) beyond which the WAL is made to start over.
    """

    def __init__(self, path: Path, metrics: Metrics, writer_lock: threading.Lock, *,
                 interval: float = DEFAULT_INTERVAL_S, reset_frames: int = RESET_FRAMES) -> None:
        self._path = path
        self._metrics = metrics
        self._writer_lock = writer_lock
        self._interval = interval
        self._reset_frames = reset_frames
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpointer", daemon=True)

    def start(self) -> None:
        """Starts the thread."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the thread after the checkpoint in progress (if any)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        conn = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=0")
            while not self._stop.wait(self._interval):
                log_frames, _ = self.checkpoint(conn)
                if log_frames > self._reset_frames:
                    with self._writer_lock:
                        self.checkpoint(conn)
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """Runs one ``PASSIVE`` checkpoint.

        Returns:
            ``(frames in the WAL, frames checkpointed)``; ``(0, 0)`` if the database was busy.
        """
        started = time.perf_counter()
        try:
            busy, log_frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            logger.debug("checkpoint skipped", extra=kv(error=str(exc)))
            return 0, 0
        if busy or log_frames <= 0:
            return 0, 0
        elapsed_ms = (time.perf_counter() - started) * 1000
        with self._metrics.lock:
            self._metrics.checkpoints += 1
            self._metrics.checkpoint_frames += max(done, 0)
            self._metrics.checkpoint_ms.add(elapsed_ms)
        return log_frames, done
