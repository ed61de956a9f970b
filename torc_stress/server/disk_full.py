"""SQLITE_FULL: the database's disk (or its size limit) is full.

Every write then fails the same way until space is freed, so logging each failed transaction
with a traceback would bury the cause. :class:`DiskFull` logs one ERROR line when writes start
failing and one INFO line, with the counts, when a transaction commits again; clients get a
503 saying that retrying will not help until space is freed.
"""

from __future__ import annotations

import logging
import sqlite3
import time

from torc_stress.errors import ApiError
from torc_stress.logs import kv

logger = logging.getLogger("torc_stress.server.writer")  # the writer's lines, as before

MESSAGE = (
    "the database or its disk is full, so the write was not stored; retrying will not help "
    "until space is freed on the server's database disk"
)


def is_full_error(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's SQLITE_FULL (``database or disk is full``)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or (code is None and "is full" in str(exc))


#: seconds before a disk that fills up again is reported again
REPEAT_S = 60.0


class DiskFull:
    """Whether writes are failing with SQLITE_FULL, and how many have failed.

    A disk that is nearly full lets small writes through between refused ones; so a condition
    that returns within :data:`REPEAT_S` of the last ERROR line is not logged again (its
    refusals are counted into the next report).
    """

    def __init__(self) -> None:
        self.since: float | None = None
        self.transactions = 0
        self.ops = 0
        self._logged_at: float | None = None
        self._unreported = False  # an ERROR line is waiting for its recovery line

    def failed(self, ops: int, exc: BaseException) -> ApiError:
        """Records a transaction of ``ops`` writes refused by SQLITE_FULL; returns the 503."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        self.transactions += 1
        self.ops += ops
        if not self._unreported and (self._logged_at is None
                                     or now - self._logged_at >= REPEAT_S):
            self._logged_at = now
            self._unreported = True
            logger.error(
                "database or disk is full: writes are refused (503) until space is freed",
                extra=kv(error=str(exc), ops=ops),
            )
        return ApiError(503, MESSAGE)

    def recovered(self) -> None:
        """Called after a commit while :attr:`since` is set: reports the counts once."""
        assert self.since is not None
        self.since = None
        if not self._unreported:
            return
        assert self._logged_at is not None
        logger.info(
            "database writes succeed again after the disk was full",
            extra=kv(refused_transactions=self.transactions, refused_ops=self.ops,
                     full_s=round(time.monotonic() - self._logged_at, 1)),
        )
        self._unreported = False
        self.transactions = 0
        self.ops = 0
