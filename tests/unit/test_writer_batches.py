"""The writer's transactions: ops with and without their own SAVEPOINT, on a real SQLite file."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import time
from pathlib import Path
from typing import Any

from torc_stress.errors import ApiError
from torc_stress.server.metrics import Metrics
from torc_stress.server.ops_common import checks_first
from torc_stress.server.writer import Op, Writer


class Hooks:
    """Records what the writer asked of the state."""

    def __init__(self) -> None:
        self.commits = 0
        self.rollbacks = 0

    def end_of_batch(self, conn: sqlite3.Connection) -> None:
        pass

    def after_commit(self) -> None:
        self.commits += 1

    def after_rollback(self, conn: sqlite3.Connection) -> None:
        self.rollbacks += 1


def good(conn: sqlite3.Connection) -> str:
    conn.execute("INSERT INTO t VALUES ('good')")
    return "stored"


@checks_first
def refused_before_writing(conn: sqlite3.Connection) -> str:
    raise ApiError(422, "refused by a check")


@checks_first
def refused_after_writing(conn: sqlite3.Connection) -> str:
    conn.execute("INSERT INTO t VALUES ('half')")
    raise ApiError(422, "a check that came too late")


def unmarked_refused_after_writing(conn: sqlite3.Connection) -> str:
    conn.execute("INSERT INTO t VALUES ('half')")
    raise ApiError(422, "a check that came too late")


def run_batch(tmp_path: Path, *fns: Any) -> tuple[list[Any], list[str], Hooks]:
    conn = sqlite3.connect(str(tmp_path / "w.db"), isolation_level=None)
    conn.execute("CREATE TABLE t (x TEXT)")
    hooks = Hooks()
    writer = Writer(conn, hooks, Metrics())
    ops = [Op(fn.__name__, fn, (), time.perf_counter(), None, concurrent.futures.Future(),
              savepoint=not getattr(fn, "checks_first", False)) for fn in fns]
    writer._run_now(ops)
    outcomes = []
    for op in ops:
        try:
            outcomes.append(op.future.result(timeout=5))
        except ApiError as exc:
            outcomes.append(exc.status)
    rows = [r[0] for r in conn.execute("SELECT x FROM t ORDER BY rowid")]
    conn.close()
    return outcomes, rows, hooks


def test_a_marked_op_refused_before_it_wrote_fails_alone(tmp_path: Path) -> None:
    outcomes, rows, hooks = run_batch(tmp_path, good, refused_before_writing, good)
    assert outcomes == ["stored", 422, "stored"]
    assert rows == ["good", "good"]
    assert (hooks.commits, hooks.rollbacks) == (1, 0)


def test_a_marked_op_that_fails_after_writing_rolls_the_whole_batch_back_with_503s(
        tmp_path: Path) -> None:
    outcomes, rows, hooks = run_batch(tmp_path, good, refused_after_writing, good)
    assert outcomes == [503, 503, 503]
    assert rows == []
    assert (hooks.commits, hooks.rollbacks) == (0, 1)


def test_an_unmarked_op_that_fails_after_writing_rolls_back_only_itself(tmp_path: Path) -> None:
    outcomes, rows, hooks = run_batch(tmp_path, good, unmarked_refused_after_writing, good)
    assert outcomes == ["stored", 422, "stored"]
    assert rows == ["good", "good"]
    assert (hooks.commits, hooks.rollbacks) == (1, 0)
