"""Write operations on workflows: create, status, cancel, reset, delete, initialize."""

from __future__ import annotations

import heapq
import sqlite3
import time
from typing import Any

import orjson

from torc_stress.errors import ConflictError
from torc_stress.server.ops_common import (
    _bad,
    _get,
    _row_id,
    _workflow_model,
)
from torc_stress.server.ops_nodes import _insert_rr, _remember_rr
from torc_stress.server.state import (
    _DONE_INTS,
    JobMem,
    ServerState,
    WorkflowMem,
    utc_timestamp,
)
from torc_stress.statuses import JobStatus


# -- workflows ---------------------------------------------------------------------------------
def create_workflow(
    conn: sqlite3.Connection, st: ServerState, body: dict[str, Any]
) -> dict[str, Any]:
    """POST /workflows: the workflow, its status row and resource requirements ``default``."""
    name = _get(body, "name", str, required=True)
    user = _get(body, "user", str, required=True)
    description = _get(body, "description", str)
    sort_method = _get(body, "jobs_sort_method", str, "gpus_runtime_memory")
    if sort_method not in ("gpus_runtime_memory", "gpus_memory_runtime", "none"):
        raise _bad(
            f"bad jobs_sort_method {sort_method!r}; use gpus_runtime_memory, "
            "gpus_memory_runtime or none"
        )
    ints = {}
    for key, default in (
        ("compute_node_expiration_buffer_seconds", 60),
        ("compute_node_wait_for_new_jobs_seconds", 90),
        ("compute_node_wait_for_healthy_database_minutes", 20),
        ("compute_node_min_time_for_new_jobs_seconds", 300),
    ):
        ints[key] = _get(body, key, int, default)
    ignore = _get(body, "compute_node_ignore_workflow_completion", bool, False)
    pending_failed = _get(body, "use_pending_failed", bool, False)
    rmc = body.get("resource_monitor_config")
    slurm = body.get("slurm_defaults")
    status_id = _row_id(conn.execute("INSERT INTO workflow_status (run_id) VALUES (0)"))
    wid = _row_id(
        conn.execute(
            "INSERT INTO workflow (id, name, description, user, timestamp, status_id, "
            "resource_monitor_config, compute_node_expiration_buffer_seconds, "
            "compute_node_wait_for_new_jobs_seconds, compute_node_ignore_workflow_completion, "
            "compute_node_wait_for_healthy_database_minutes, "
            "compute_node_min_time_for_new_jobs_seconds, "
            "jobs_sort_method, slurm_defaults, use_pending_failed) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                status_id,
                name,
                description,
                user,
                utc_timestamp(),
                status_id,
                None if rmc is None else orjson.dumps(rmc).decode(),
                ints["compute_node_expiration_buffer_seconds"],
                ints["compute_node_wait_for_new_jobs_seconds"],
                int(ignore),
                ints["compute_node_wait_for_healthy_database_minutes"],
                ints["compute_node_min_time_for_new_jobs_seconds"],
                sort_method,
                None if slurm is None else orjson.dumps(slurm).decode(),
                int(pending_failed),
            ),
        )
    )
    rr_id = _insert_rr(conn, wid, "default", 1, 0, 1, "1m", "P0DT1M")
    wf = WorkflowMem(wid)
    wf.default_rr = rr_id
    st.workflows[wid] = wf
    _remember_rr(conn, st, rr_id)
    st._dirty.add(wid)
    return _workflow_model(conn, wid)


def update_workflow_status(
    conn: sqlite3.Connection, st: ServerState, workflow_id: int, body: dict[str, Any]
) -> dict[str, Any]:
    """PUT /workflows/{id}/status (older clients): sets run_id and is_canceled."""
    wf = st.workflow(workflow_id)
    run_id = _get(body, "run_id", int, wf.run_id)
    canceled = _get(body, "is_canceled", bool, wf.is_canceled)
    conn.execute(
        "UPDATE workflow_status SET run_id = ?, is_canceled = ? WHERE id = "
        "(SELECT status_id FROM workflow WHERE id = ?)",
        (run_id, int(canceled), workflow_id),
    )
    wf.run_id, wf.is_canceled = run_id, canceled
    st._dirty.add(workflow_id)
    return _status_model(wf)


def _status_model(wf: WorkflowMem) -> dict[str, Any]:
    return {
        "id": wf.id,
        "run_id": wf.run_id,
        "is_canceled": wf.is_canceled,
        "is_archived": False,
        "has_detected_need_to_run_completion_script": False,
    }


def reset_workflow_status(
    conn: sqlite3.Connection, st: ServerState, workflow_id: int, force: bool
) -> dict[str, Any]:
    """POST /workflows/{id}/reset_status: clears cancel, bumps run_id (422 with active jobs)."""
    wf = st.workflow(workflow_id)
    if not force and (wf.counts[JobStatus.PENDING] or wf.counts[JobStatus.RUNNING]):
        raise ConflictError(
            422,
            f"workflow {workflow_id} has pending or running jobs; wait for them or pass force=true",
        )
    run_id = wf.run_id + 1
    conn.execute(
        "UPDATE workflow_status SET run_id = ?, is_canceled = 0 WHERE id = "
        "(SELECT status_id FROM workflow WHERE id = ?)",
        (run_id, workflow_id),
    )
    wf.run_id, wf.is_canceled = run_id, False
    st._dirty.add(workflow_id)
    return _status_model(wf)


def cancel_workflow(conn: sqlite3.Connection, st: ServerState, workflow_id: int) -> dict[str, Any]:
    """PUT /workflows/{id}/cancel: pending and running jobs become canceled."""
    wf = st.workflow(workflow_id)
    active = [j for j in wf.job_ids if st.jobs[j].status in (3, 4)]
    now = time.time()
    conn.execute(
        "UPDATE workflow_status SET is_canceled = 1 WHERE id = "
        "(SELECT status_id FROM workflow WHERE id = ?)",
        (workflow_id,),
    )
    conn.executemany(
        "UPDATE job SET status = 7, end_time = ?, unblocking_processed = 1 WHERE id = ?",
        [(now, j) for j in active],
    )
    conn.execute(
        "INSERT INTO event (workflow_id, timestamp, data) VALUES (?, ?, ?)",
        (
            workflow_id,
            int(now * 1000),
            orjson.dumps(
                {
                    "category": "workflow",
                    "type": "cancel",
                    "message": f"canceled workflow {workflow_id}",
                }
            ).decode(),
        ),
    )
    wf.is_canceled = True
    for j in active:
        jm = st.jobs[j]
        st._set_status(j, jm, 7)
        jm.failed = True
    st._dirty.add(workflow_id)
    return _workflow_model(conn, workflow_id)


def delete_workflow(conn: sqlite3.Connection, st: ServerState, workflow_id: int) -> dict[str, Any]:
    """DELETE /workflows/{id} (cascades)."""
    wf = st.workflow(workflow_id)
    model = _workflow_model(conn, workflow_id)
    conn.execute("DELETE FROM workflow WHERE id = ?", (workflow_id,))
    conn.execute("DELETE FROM workflow_status WHERE id = ?", (workflow_id,))
    st.tracker.forget(wf.job_ids)
    for j in wf.job_ids:
        st.jobs.pop(j, None)
    st.pending_unblock = [p for p in st.pending_unblock if p[0] not in wf.job_ids]
    for rr_id in [r for r, v in st.rr.items() if v[0] == workflow_id]:
        st.rr.pop(rr_id)
    for node_id in [n for n, w in st.nodes.items() if w == workflow_id]:
        del st.nodes[node_id]
        st.leases.pop(node_id, None)
        st.expired.discard(node_id)
    del st.workflows[workflow_id]
    st._dirty.discard(workflow_id)
    st._deleted.add(workflow_id)
    return model


def initialize_jobs(
    conn: sqlite3.Connection, st: ServerState, workflow_id: int, only_uninitialized: bool
) -> dict[str, Any]:
    """POST /workflows/{id}/initialize_jobs: blocked or ready, and fresh dependency counters.

    With ``only_uninitialized`` only uninitialized jobs change, and the others' counters and
    pending unblocking are left alone: a second call (two workers starting at once, or a
    retry after a lost answer) changes nothing.
    """
    wf = st.workflow(workflow_id)
    jobs = st.jobs
    if only_uninitialized:
        candidates = {j for j in wf.job_ids if jobs[j].status == 0}
        if not candidates:
            return {"message": "Initialized job status"}
        return _initialize_some(conn, st, wf, candidates)
    candidates = {j for j in wf.job_ids if jobs[j].status not in (5, 6, 7, 9)}
    ups: dict[int, list[int]] = {}
    for job_id, up in conn.execute(
        "SELECT job_id, depends_on_job_id FROM job_depends_on WHERE workflow_id = ?", (workflow_id,)
    ):
        ups.setdefault(job_id, []).append(up)

    def unfinished(up: int) -> bool:
        return up in candidates or jobs[up].status not in _DONE_INTS

    blocked, ready = _sort_out(candidates, ups, unfinished, jobs)
    now = time.time()
    conn.executemany(
        "UPDATE job SET status = 1, ready_time = NULL, claim_time = NULL, "
        "start_time = NULL, end_time = NULL WHERE id = ?",
        [(j,) for j in blocked],
    )
    conn.executemany(
        "UPDATE job SET status = 2, ready_time = ?, claim_time = NULL, "
        "start_time = NULL, end_time = NULL WHERE id = ?",
        [(now, j) for j in ready],
    )
    conn.execute(
        "UPDATE job SET unblocking_processed = 1 WHERE workflow_id = ? AND "
        "unblocking_processed = 0 AND status IN (5,6,7,8)",
        (workflow_id,),
    )
    conn.execute(
        "DELETE FROM workflow_result WHERE workflow_id = ? AND job_id IN "
        "(SELECT id FROM job WHERE workflow_id = ? AND status IN (1, 2))",
        (workflow_id, workflow_id),
    )
    # memory
    st.tracker.forget(wf.job_ids)
    for j, lst in ups.items():
        for up in lst:
            st.tracker.add_edge(j, up)
    for j, (count, failed) in blocked.items():
        st._set_status(j, jobs[j], 1)
        st.tracker.set_blocked(j, count, failed)
    for j in ready:
        st._set_status(j, jobs[j], 2)
    for j in candidates:
        jobs[j].failed = False
        jobs[j].node_id = None
    st.pending_unblock = [p for p in st.pending_unblock if p[0] not in wf.job_ids]
    wf.ready = sorted(j for j in wf.job_ids if jobs[j].status == 2)
    st._dirty.add(workflow_id)
    return {"message": "Initialized job status"}


def _sort_out(
    candidates: set[int], ups: dict[int, list[int]], unfinished: Any, jobs: dict[int, JobMem]
) -> tuple[dict[int, tuple[int, bool]], list[int]]:
    """Splits jobs to initialize into blocked ones (with their count of unfinished upstream
    jobs and whether a finished one failed) and ready ones."""
    blocked: dict[int, tuple[int, bool]] = {}
    ready: list[int] = []
    for j in sorted(candidates):
        count = sum(1 for up in ups.get(j, ()) if unfinished(up))
        if count:
            failed = any(jobs[up].failed for up in ups.get(j, ()) if not unfinished(up))
            blocked[j] = (count, failed)
        else:
            ready.append(j)
    return blocked, ready


def _initialize_some(
    conn: sqlite3.Connection, st: ServerState, wf: WorkflowMem, candidates: set[int]
) -> dict[str, Any]:
    """Initializes ``candidates`` only; every other job keeps its status and counters.

    An upstream job whose completion is still waiting for its unblock pass counts as
    unfinished: that pass will count it down.
    """
    jobs = st.jobs
    waiting = {p[0] for p in st.pending_unblock}
    ups: dict[int, list[int]] = {}
    for job_id, up in conn.execute(
        "SELECT job_id, depends_on_job_id FROM job_depends_on WHERE workflow_id = ?", (wf.id,)
    ):
        if job_id in candidates:
            ups.setdefault(job_id, []).append(up)

    def unfinished(up: int) -> bool:
        return up in candidates or up in waiting or jobs[up].status not in _DONE_INTS

    blocked, ready = _sort_out(candidates, ups, unfinished, jobs)
    now = time.time()
    conn.executemany("UPDATE job SET status = 1 WHERE id = ?", [(j,) for j in blocked])
    conn.executemany(
        "UPDATE job SET status = 2, ready_time = ? WHERE id = ?", [(now, j) for j in ready]
    )
    tracker = st.tracker
    for j, (count, failed) in blocked.items():
        st._set_status(j, jobs[j], 1)
        tracker.failed_upstream.discard(j)
        tracker.set_blocked(j, count, failed)
    for j in ready:
        st._set_status(j, jobs[j], 2)
        heapq.heappush(wf.ready, j)
    return {"message": "Initialized job status"}


def reset_job_status(
    conn: sqlite3.Connection, st: ServerState, workflow_id: int, failed_only: bool
) -> dict[str, Any]:
    """POST /workflows/{id}/reset_job_status: back to uninitialized (failed ones + downstream)."""
    wf = st.workflow(workflow_id)
    jobs = st.jobs
    if failed_only:
        targets = {j for j in wf.job_ids if jobs[j].status in (6, 7, 8, 10)}
        stack = list(targets)
        while stack:
            for dep in st.tracker.dependents.get(stack.pop(), ()):
                if dep not in targets:
                    targets.add(dep)
                    stack.append(dep)
    else:
        targets = set(wf.job_ids)
    conn.executemany(
        "UPDATE job SET status = 0, ready_time = NULL, claim_time = NULL, start_time = NULL, "
        "end_time = NULL, unblocking_processed = 0, active_compute_node_id = NULL WHERE id = ?",
        [(j,) for j in targets],
    )
    for j in targets:
        jm = jobs[j]
        st._set_status(j, jm, 0)
        jm.failed = False
        jm.node_id = None
    st.tracker.forget(targets)
    st.pending_unblock = [p for p in st.pending_unblock if p[0] not in targets]
    st._dirty.add(workflow_id)
    return {
        "workflow_id": workflow_id,
        "updated_count": len(targets),
        "status": "uninitialized",
        "reset_type": "failed_only" if failed_only else "all",
    }
