"""The writer's transactions: ops with and without their own SAVEPOINT, on a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tests.unit.writer_ops import run_batch_of
from torc_stress.errors import ApiError
from torc_stress.server.metrics import Metrics
from torc_stress.server.ops_common import checks_first, references_checked
from torc_stress.server.writer import Writer


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


MERGED_CALLS: list[list[tuple[Any, ...]]] = []


@checks_first
def store(conn: sqlite3.Connection, value: str) -> str:
    """One call alone: refuses "bad", stores anything else."""
    if value == "bad":
        raise ApiError(422, "bad value")
    conn.execute("INSERT INTO t VALUES (?)", (value,))
    return f"stored {value}"


def store_together(conn: sqlite3.Connection, calls: list[tuple[Any, ...]]) -> Any:
    """Several calls at once; gives up (None) on "alone", before writing, as complete_jobs does."""
    MERGED_CALLS.append(calls)
    values = [value for (value,) in calls]
    if "alone" in values:
        return None
    good_values = [(v,) for v in values if v != "bad"]
    conn.executemany("INSERT INTO t VALUES (?)", good_values)
    return [(None, ApiError(422, "bad value")) if v == "bad" else (f"stored {v} together", None)
            for v in values]


store.merged = store_together  # type: ignore[attr-defined]


def run_batch(tmp_path: Path, *fns: Any, args: list[tuple[Any, ...]] | None = None
              ) -> tuple[list[Any], list[str], Hooks]:
    conn = sqlite3.connect(str(tmp_path / "w.db"), isolation_level=None)
    conn.execute("CREATE TABLE t (x TEXT)")
    hooks = Hooks()
    writer = Writer(conn, hooks, Metrics())
    args = args or [()] * len(fns)
    outcomes = run_batch_of(writer, list(zip(fns, args, strict=True)))
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


def test_consecutive_calls_of_a_mergeable_op_run_as_one_call_each_with_its_own_answer(
        tmp_path: Path) -> None:
    MERGED_CALLS.clear()
    outcomes, rows, hooks = run_batch(
        tmp_path, store, store, store, good, store,
        args=[("a",), ("bad",), ("b",), (), ("c",)])
    assert outcomes == ["stored a together", 422, "stored b together", "stored", "stored c"]
    assert MERGED_CALLS == [[("a",), ("bad",), ("b",)]]  # a lone call runs on its own
    assert rows == ["a", "b", "good", "c"]
    assert (hooks.commits, hooks.rollbacks) == (1, 0)


def test_calls_the_merged_form_gives_up_on_run_one_by_one(tmp_path: Path) -> None:
    MERGED_CALLS.clear()
    outcomes, rows, _ = run_batch(tmp_path, store, store, store,
                                  args=[("a",), ("alone",), ("bad",)])
    assert outcomes == ["stored a", "stored alone", 422]
    assert len(MERGED_CALLS) == 1
    assert rows == ["a", "alone"]


@references_checked
@checks_first
def fk_state_checked(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA foreign_keys").fetchone()[0])


def fk_state_unchecked(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA foreign_keys").fetchone()[0])


def test_a_batch_of_ops_that_check_their_references_runs_without_foreign_key_checks(
        tmp_path: Path) -> None:
    conn = sqlite3.connect(str(tmp_path / "w.db"), isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    writer = Writer(conn, Hooks(), Metrics())
    seen = []
    for fns in ((fk_state_checked, fk_state_checked), (fk_state_checked, fk_state_unchecked),
                (fk_state_checked,)):
        seen.append(run_batch_of(writer, [(fn, ()) for fn in fns]))
    conn.close()
    assert seen == [[0, 0], [1, 1], [0]]
