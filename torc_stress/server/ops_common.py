"""Helpers shared by the write operations: body field checks, row ids, cached models."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from torc_stress.errors import ApiError, NotFoundError
from torc_stress.server.checks import checked_number
from torc_stress.server.state import (
    ServerState,
)
from torc_stress.server.store import (
    JOB_COLUMNS,
    WORKFLOW_COLUMNS,
    job_row_to_model,
    workflow_row_to_model,
)
from torc_stress.statuses import JobStatus

_COMPLETION_TARGETS = frozenset((5, 6, 7, 8, 10))
_WIRE = {int(s): s.wire for s in JobStatus}


def _row_id(cursor: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just made (SQLite always sets it for a rowid table)."""
    rowid = cursor.lastrowid
    assert rowid is not None, "INSERT did not produce a row id"
    return rowid


F = TypeVar("F", bound=Callable[..., Any])


def checks_first(fn: F) -> F:
    """Marks an op that raises only before its first write, or from a write SQLite undid.

    The writer runs such an op without a SAVEPOINT of its own (two statements fewer per op):
    an error that leaves ``conn.total_changes`` unchanged needs no rollback. Should one ever
    come after a write, the writer rolls the whole transaction back instead.
    """
    fn.checks_first = True  # type: ignore[attr-defined]
    return fn


def references_checked(fn: F) -> F:
    """Marks an op whose writes set no reference (foreign key) that it has not checked itself.

    The per-job ops check the compute node ids they store against memory
    (``ServerState.check_node``); their other references (workflow, job, the result just
    written) exist by construction. A transaction made only of such ops runs without SQLite's
    foreign-key enforcement, which costs a parent lookup per reference per row written
    (measured on this VM: 5.4 vs 2.7 us per ``workflow_result`` row, 4.9 vs 3.1 per job update).
    Any other op in the batch turns enforcement back on for the whole transaction.
    """
    fn.references_checked = True  # type: ignore[attr-defined]
    return fn


def _bad(message: str) -> ApiError:
    return ApiError(422, message)


def _get(
    body: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    default: Any = None,
    *,
    required: bool = False,
) -> Any:
    value = body.get(key)
    if value is None:
        if required:
            raise _bad(f"missing required field {key!r}")
        return default
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _bad(f"field {key!r} must be {names}, got {type(value).__name__}")
    if type(value) is int or type(value) is float:
        return checked_number(value, key)
    return value


def _workflow_model(conn: sqlite3.Connection, workflow_id: int) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT {WORKFLOW_COLUMNS} FROM workflow w JOIN workflow_status s ON s.id = w.status_id "
        "WHERE w.id = ?",
        (workflow_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(404, f"workflow {workflow_id} does not exist")
    return workflow_row_to_model(row)


def _job_model(
    conn: sqlite3.Connection, st: ServerState, job_id: int, **extra: Any
) -> dict[str, Any]:
    """The job's model: from the model cached at its claim (current status), else a SELECT."""
    jm = st.jobs[job_id]
    if jm.model is not None:
        model = dict(jm.model)
        model["status"] = _WIRE[jm.status]
    else:
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM job WHERE id = ?", (job_id,)).fetchone()
        model = job_row_to_model(row)
    model.update(extra)
    return model
