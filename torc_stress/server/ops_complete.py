"""Write operations that finish jobs: ``complete_job`` and ``batch_complete_jobs``.

Both check every completion against memory first, then write all of a request's completions
with one ``executemany`` per statement (a result row, the workflow's latest-result link, the
job's status, its compute node), then change memory. A batch of 100 costs four statement
preparations instead of four hundred.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from torc_stress.errors import ApiError, ConflictError
from torc_stress.server.checks import checked_result
from torc_stress.server.ops_common import (
    _COMPLETION_TARGETS,
    _bad,
    _get,
    _job_model,
    checks_first,
    references_checked,
)
from torc_stress.server.state import _DONE_INTS, _FAILURE_INTS, JobMem, ServerState
from torc_stress.statuses import JobStatus

# result ids are given, not chosen by SQLite, so that the latest-result link needs no lookup
_INSERT_RESULT = (
    "INSERT INTO result (id, workflow_id, job_id, run_id, attempt_id, compute_node_id, "
    "return_code, exec_time_minutes, completion_time, status, peak_memory_bytes, "
    "avg_memory_bytes, peak_cpu_percent, avg_cpu_percent) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_LINK_RESULT = (
    "INSERT OR REPLACE INTO workflow_result (workflow_id, job_id, result_id) VALUES (?,?,?)"
)
_UPDATE_JOB = (
    "UPDATE job SET status = ?, end_time = ?, unblocking_processed = ?, "
    "active_compute_node_id = NULL WHERE id = ?"
)


@dataclass(slots=True)
class Completion:
    """One checked completion, ready to be written."""

    job_id: int
    jm: JobMem
    status: int
    run_id: int
    result: dict[str, Any]


#: wire name -> status number (``completed`` -> 5)
_STATUS_BY_WIRE = {s.wire: int(s) for s in JobStatus}
_INT_FIELDS = ("job_id", "workflow_id", "run_id", "compute_node_id", "return_code")


def _well_formed(body: Any) -> bool:
    """The common case of :func:`validate_result` in a few type checks (``bool`` is no int)."""
    if type(body) is not dict:
        return False
    try:
        return (
            all(type(body[key]) is int for key in _INT_FIELDS)
            and type(body["exec_time_minutes"]) in (int, float)
            and type(body["completion_time"]) is str
            and body["status"] in _STATUS_BY_WIRE
        )
    except (KeyError, TypeError):
        return False


def validate_result(body: Any) -> dict[str, Any]:
    """Checks a ``result_model`` body (pure; raises ApiError 422)."""
    if _well_formed(body):
        return checked_result(body)
    if not isinstance(body, dict):
        raise _bad("the body must be a result_model object")
    for key in ("job_id", "workflow_id", "run_id", "compute_node_id", "return_code"):
        _get(body, key, int, required=True)
    _get(body, "exec_time_minutes", (int, float), required=True)
    _get(body, "completion_time", str, required=True)
    status = _get(body, "status", str, required=True)
    try:
        JobStatus.from_wire(status)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return checked_result(body)


def check_completion(
    st: ServerState, job_id: int, status: int, run_id: int, result: dict[str, Any]
) -> Completion:
    """Checks one completion against memory (raises ApiError; changes nothing)."""
    jm = st.job(job_id)
    wf = st.workflows[jm.workflow_id]
    if status not in _COMPLETION_TARGETS:
        raise _bad(
            f"status {JobStatus(status).wire!r} is not a completion status; use completed, "
            "failed, canceled, terminated or pending_failed"
        )
    if jm.status in _DONE_INTS:
        raise ConflictError(422, f"job {job_id} is already {JobStatus(jm.status).wire}")
    if run_id != wf.run_id:
        raise ConflictError(
            422, f"run_id {run_id} does not match workflow {wf.id}'s run_id {wf.run_id}"
        )
    node_id = result["compute_node_id"]
    st.check_node(node_id)
    _check_attempt(st, job_id, jm, node_id, result.get("attempt_id"))
    return Completion(job_id, jm, status, run_id, result)


def _check_attempt(
    st: ServerState, job_id: int, jm: JobMem, node_id: int, attempt: Any
) -> None:
    """Refuses (409) a completion from a compute node or attempt that no longer holds the job.

    A job held by a node (claimed with its id, or started by it) is completed only by that
    node. ``attempt_id``, when given, must be the job's current attempt: a job that went back to
    ready because its node's lease expired is at the next attempt.
    """
    if jm.node_id is not None and jm.node_id != node_id:
        raise ConflictError(
            409, f"job {job_id} is held by compute node {jm.node_id}, not {node_id}"
        )
    if type(attempt) is int and attempt != jm.attempt:
        raise ConflictError(
            409, f"attempt {attempt} of job {job_id} is over: the job is at attempt {jm.attempt}"
        )


def write_completions(
    conn: sqlite3.Connection,
    st: ServerState,
    items: list[Completion],
    now: float,
    *,
    premark: bool = False,
) -> None:
    """Writes checked completions (SQL only; a failure leaves memory untouched but for the
    result ids it used up, which are never reused).

    ``premark`` stores finished jobs as ``unblocking_processed`` already (when the unblock pass
    runs in this transaction, see ``ServerState.unblocks_in_batch``).
    """
    done_flag = 1 if premark else 0
    results = []
    links = []
    jobs = []
    result_id = st.last_result_id
    st.last_result_id += len(items)
    for c in items:
        r = c.result
        result_id += 1
        wid = c.jm.workflow_id
        results.append((
            result_id, wid, c.job_id, c.run_id, r.get("attempt_id") or 1, r["compute_node_id"],
            r["return_code"], r["exec_time_minutes"], r["completion_time"], c.status,
            r.get("peak_memory_bytes"), r.get("avg_memory_bytes"), r.get("peak_cpu_percent"),
            r.get("avg_cpu_percent"),
        ))
        links.append((wid, c.job_id, result_id))
        jobs.append((c.status, now, done_flag if c.status in _DONE_INTS else 1, c.job_id))
    conn.executemany(_INSERT_RESULT, results)
    conn.executemany(_LINK_RESULT, links)
    conn.executemany(_UPDATE_JOB, jobs)


def apply_completions(
    st: ServerState, items: list[Completion], now: float, *, premarked: bool = False
) -> None:
    """Changes memory for completions whose SQL succeeded (queues their unblocking)."""
    for c in items:
        jm = c.jm
        st._set_status(c.job_id, jm, c.status)
        jm.node_id = None
        jm.failed = c.status in _FAILURE_INTS and c.result["return_code"] != 0
        if c.status in _DONE_INTS:
            st.pending_unblock.append((c.job_id, jm.failed, now))
            if premarked:
                st.premarked.add(c.job_id)


@references_checked
@checks_first
def complete_job(
    conn: sqlite3.Connection,
    st: ServerState,
    job_id: int,
    status: int,
    run_id: int,
    result: dict[str, Any],
) -> dict[str, Any]:
    """POST /jobs/{id}/complete_job/{status}/{run_id}: stores the result; 422 if already done."""
    items = [check_completion(st, job_id, status, run_id, result)]
    now = time.time()
    premark = st.unblocks_in_batch
    write_completions(conn, st, items, now, premark=premark)
    apply_completions(st, items, now, premarked=premark)
    return _completed_model(conn, st, job_id)


def _completed_model(conn: sqlite3.Connection, st: ServerState, job_id: int) -> dict[str, Any]:
    model = _job_model(conn, st, job_id)
    st.jobs[job_id].model = None
    return model


Outcome = tuple[Any, ApiError | None]
"""One merged call's answer: ``(response body, None)`` or ``(None, error)``."""


def complete_jobs(conn: sqlite3.Connection, calls: list[tuple[Any, ...]]) -> list[Outcome] | None:
    """Several ``complete_job`` calls of one transaction, written together (the writer's merge).

    Each call is checked on its own and in order, as :func:`complete_job` would be; the ones
    that pass are written with one ``executemany`` per statement. Returns None, having written
    nothing, when the calls cannot be judged together (two name the same job) or their write
    conflicts with stored data: the writer then runs them one by one, so each gets its own
    answer.
    """
    st: ServerState = calls[0][0]
    outcomes: list[Outcome] = []
    items: list[Completion] = []
    seen: set[int] = set()
    for _, job_id, status, run_id, result in calls:
        if job_id in seen:
            return None
        seen.add(job_id)
        try:
            items.append(check_completion(st, job_id, status, run_id, result))
        except ApiError as exc:
            outcomes.append((None, exc))
        else:
            outcomes.append((job_id, None))
    now = time.time()
    premark = st.unblocks_in_batch
    if _write_together(conn, st, items, now, premark=premark) is None:
        return None
    apply_completions(st, items, now, premarked=premark)
    return [(None, error) if error is not None else (_completed_model(conn, st, job_id), None)
            for job_id, error in outcomes]


complete_job.merged = complete_jobs  # type: ignore[attr-defined]


@references_checked
@checks_first
def batch_complete_jobs(
    conn: sqlite3.Connection, st: ServerState, workflow_id: int, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    """POST /workflows/{id}/batch_complete_jobs: each entry judged on its own; errors listed.

    Entries that pass the checks are written together. If that write fails (an entry names a
    compute node that does not exist, say), it is undone and the entries are written one by
    one, so only the bad ones are refused.
    """
    st.workflow(workflow_id)
    items: list[Completion] = []
    seen: set[int] = set()
    errors: list[dict[str, Any]] = []
    for entry in entries:
        job_id = entry.get("job_id")
        try:
            items.append(_check_entry(st, workflow_id, entry, seen))
            seen.add(items[-1].job_id)
        except ApiError as exc:
            errors.append(
                {"job_id": job_id if isinstance(job_id, int) else -1, "message": str(exc)}
            )
    now = time.time()
    premark = st.unblocks_in_batch
    written = _write_together(conn, st, items, now, premark=premark)
    if written is None:
        written = []
        for item in items:
            try:
                _write_alone(conn, st, item, now, premark=premark)
                written.append(item)
            except sqlite3.IntegrityError as exc:
                errors.append({"job_id": item.job_id,
                               "message": f"conflicts with stored data: {exc}"})
    apply_completions(st, written, now, premarked=premark)
    return {"completed": [c.job_id for c in written], "errors": errors}


def _check_entry(
    st: ServerState, workflow_id: int, entry: dict[str, Any], seen: set[int]
) -> Completion:
    job_id = entry.get("job_id")
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise _bad("job_id must be an integer")
    run_id = entry.get("run_id")
    status_raw = entry.get("status")
    status = _STATUS_BY_WIRE.get(status_raw) if type(status_raw) is str else None
    if type(run_id) is not int or status is None:
        run_id = _get(entry, "run_id", int, required=True)
        status_text = _get(entry, "status", str, required=True)
        try:
            status = int(JobStatus.from_wire(status_text))
        except ValueError as exc:
            raise _bad(str(exc)) from None
    result = validate_result(entry.get("result"))
    if st.job(job_id).workflow_id != workflow_id:
        raise _bad(f"job {job_id} is not in workflow {workflow_id}")
    if job_id in seen:
        raise ConflictError(422, f"job {job_id} is completed earlier in this request")
    return check_completion(st, job_id, status, run_id, result)


def _write_together(
    conn: sqlite3.Connection, st: ServerState, items: list[Completion], now: float, *,
    premark: bool,
) -> list[Completion] | None:
    """Writes every item, or nothing (None) if one of them conflicts with stored data."""
    if not items:
        return items
    conn.execute("SAVEPOINT completions")
    try:
        write_completions(conn, st, items, now, premark=premark)
    except sqlite3.IntegrityError:
        conn.execute("ROLLBACK TO completions")
        conn.execute("RELEASE completions")
        return None
    conn.execute("RELEASE completions")
    return items


def _write_alone(
    conn: sqlite3.Connection, st: ServerState, item: Completion, now: float, *, premark: bool
) -> None:
    conn.execute("SAVEPOINT completion")
    try:
        write_completions(conn, st, [item], now, premark=premark)
    except BaseException:
        conn.execute("ROLLBACK TO completion")
        conn.execute("RELEASE completion")
        raise
    conn.execute("RELEASE completion")
