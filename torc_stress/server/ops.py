"""The write operations. Each runs on the writer thread as ``fn(conn, state, *args)``.

Each op validates first (raising ApiError), then writes SQL, then changes memory.
"""

from __future__ import annotations

import contextlib
import heapq
import sqlite3
import time
from typing import Any

import orjson

from torc_stress.errors import ApiError, ConflictError, NotFoundError
from torc_stress.server.state import (
    _DONE_INTS,
    _FAILURE_INTS,
    MAX_BULK_JOBS,
    N_STATUS,
    JobMem,
    ServerState,
    WorkflowMem,
    utc_timestamp,
)
from torc_stress.server.store import (
    CN_COLUMNS,
    JOB_COLUMNS,
    RR_COLUMNS,
    WORKFLOW_COLUMNS,
    cn_row_to_model,
    duration_seconds,
    job_row_to_model,
    memory_bytes,
    rr_row_to_model,
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
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _bad(f"field {key!r} must be {names}, got {type(value).__name__}")
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
    del st.workflows[workflow_id]
    st._dirty.discard(workflow_id)
    st._deleted.add(workflow_id)
    return model


# -- resource requirements ---------------------------------------------------------------------
def _insert_rr(
    conn: sqlite3.Connection,
    wid: int,
    name: str,
    cpus: int,
    gpus: int,
    nodes: int,
    memory: str,
    runtime: str,
) -> int:
    try:
        mem_b = memory_bytes(memory)
        run_s = duration_seconds(runtime)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return _row_id(
        conn.execute(
            "INSERT INTO resource_requirements (workflow_id, name, num_cpus, num_gpus, num_nodes, "
            "memory, runtime, memory_bytes, runtime_s) VALUES (?,?,?,?,?,?,?,?,?)",
            (wid, name, cpus, gpus, nodes, memory, runtime, mem_b, run_s),
        )
    )


def _remember_rr(conn: sqlite3.Connection, st: ServerState, rr_id: int) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT {RR_COLUMNS} FROM resource_requirements WHERE id = ?", (rr_id,)
    ).fetchone()
    st.rr[rr_id] = (row[1], row[3], row[4], row[5], row[8], row[9])
    model = rr_row_to_model(row)
    st._rr_new[rr_id] = model
    return model


def create_resource_requirements(
    conn: sqlite3.Connection, st: ServerState, body: dict[str, Any]
) -> dict[str, Any]:
    """POST /resource_requirements."""
    wid = _get(body, "workflow_id", int, required=True)
    st.workflow(wid)
    name = _get(body, "name", str, required=True)
    cpus = _get(body, "num_cpus", int, 1)
    gpus = _get(body, "num_gpus", int, 0)
    nodes = _get(body, "num_nodes", int, 1)
    if cpus < 0 or gpus < 0 or nodes < 1:
        raise _bad("num_cpus and num_gpus must be >= 0 and num_nodes >= 1")
    rr_id = _insert_rr(
        conn,
        wid,
        name,
        cpus,
        gpus,
        nodes,
        _get(body, "memory", str, "1m"),
        _get(body, "runtime", str, "PT1M"),
    )
    return _remember_rr(conn, st, rr_id)


# -- jobs --------------------------------------------------------------------------------------
def create_jobs(conn: sqlite3.Connection, st: ServerState, jobs: list[Any]) -> dict[str, Any]:
    """POST /bulk_jobs: inserts jobs (status uninitialized) with their dependencies and depth."""
    if not isinstance(jobs, list) or not jobs:
        raise _bad("'jobs' must be a non-empty list of job models")
    if len(jobs) > MAX_BULK_JOBS:
        raise _bad(f"at most {MAX_BULK_JOBS} jobs per request, got {len(jobs)}; split the request")
    prepared = []
    wid = None
    for index, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise _bad(f"jobs[{index}] must be an object")
        job_wid = _get(job, "workflow_id", int, required=True)
        if wid is None:
            wid = job_wid
            wf = st.workflow(wid)
        elif job_wid != wid:
            raise _bad("all jobs of one request must belong to the same workflow")
        name = _get(job, "name", str, required=True)
        command = _get(job, "command", str, required=True)
        rr_id = _get(job, "resource_requirements_id", int, wf.default_rr)
        if rr_id is not None and (rr_id not in st.rr or st.rr[rr_id][0] != wid):
            raise _bad(f"job {name!r}: resource_requirements_id {rr_id} is not in workflow {wid}")
        ups = _get(job, "depends_on_job_ids", list, [])
        depth = 0
        for up in ups:
            um = st.jobs.get(up) if isinstance(up, int) and not isinstance(up, bool) else None
            if um is None or um.workflow_id != wid:
                raise _bad(
                    f"job {name!r}: depends_on_job_ids has {up!r}, not a job of workflow {wid}"
                )
            depth = max(depth, um.depth + 1)
        cancel = _get(job, "cancel_on_blocking_job_failure", bool, True)
        prepared.append(
            (
                name,
                command,
                rr_id,
                _get(job, "invocation_script", str),
                cancel,
                _get(job, "supports_termination", bool, False),
                _get(job, "scheduler_id", int),
                _get(job, "failure_handler_id", int),
                _get(job, "attempt_id", int, 1),
                depth,
                sorted(set(ups)),
            )
        )
    assert wid is not None
    out = []
    new_mem = []
    insert = (
        "INSERT INTO job (workflow_id, name, command, status, resource_requirements_id, "
        "invocation_script, cancel_on_blocking_job_failure, supports_termination, "
        "scheduler_id, failure_handler_id, attempt_id, depth) VALUES (?,?,?,0,?,?,?,?,?,?,?,?)"
    )
    edges: list[tuple[int, int, int]] = []
    for name, command, rr_id, script, cancel, term, sched, fh, attempt, depth, ups in prepared:
        jid = _row_id(
            conn.execute(
                insert,
                (
                    wid,
                    name,
                    command,
                    rr_id,
                    script,
                    int(cancel),
                    int(term),
                    sched,
                    fh,
                    attempt,
                    depth,
                ),
            )
        )
        edges.extend((jid, up, wid) for up in ups)
        model = {
            "id": jid,
            "workflow_id": wid,
            "name": name,
            "command": command,
            "status": "uninitialized",
            "resource_requirements_id": rr_id,
            "invocation_script": script,
            "cancel_on_blocking_job_failure": cancel,
            "supports_termination": term,
            "scheduler_id": sched,
            "failure_handler_id": fh,
            "attempt_id": attempt,
        }
        if ups:
            model["depends_on_job_ids"] = ups
        out.append(model)
        new_mem.append((jid, JobMem(wid, 0, depth, cancel, rr_id)))
    conn.executemany("INSERT INTO job_internal (job_id) VALUES (?)", [(j,) for j, _ in new_mem])
    conn.executemany(
        "INSERT INTO job_depends_on (job_id, depends_on_job_id, workflow_id) VALUES (?,?,?)", edges
    )
    for jid, jm in new_mem:
        st._add_job(jid, jm)
    for jid, up, _ in edges:
        st.tracker.add_edge(jid, up)
    return {"jobs": out}


def initialize_jobs(
    conn: sqlite3.Connection, st: ServerState, workflow_id: int, only_uninitialized: bool
) -> dict[str, Any]:
    """POST /workflows/{id}/initialize_jobs: blocked or ready, and fresh dependency counters."""
    wf = st.workflow(workflow_id)
    jobs = st.jobs
    if only_uninitialized:
        candidates = {j for j in wf.job_ids if jobs[j].status == 0}
    else:
        candidates = {j for j in wf.job_ids if jobs[j].status not in (5, 6, 7, 9)}
    ups: dict[int, list[int]] = {}
    for job_id, up in conn.execute(
        "SELECT job_id, depends_on_job_id FROM job_depends_on WHERE workflow_id = ?", (workflow_id,)
    ):
        ups.setdefault(job_id, []).append(up)

    def unfinished(up: int) -> bool:
        return up in candidates or jobs[up].status not in _DONE_INTS

    blocked: dict[int, tuple[int, bool]] = {}
    ready: list[int] = []
    for j in sorted(candidates):
        count = sum(1 for up in ups.get(j, ()) if unfinished(up))
        if count:
            failed = any(jobs[up].failed for up in ups.get(j, ()) if not unfinished(up))
            blocked[j] = (count, failed)
        else:
            ready.append(j)
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
        "UPDATE job SET status = 0, ready_time = NULL, claim_time = NULL, "
        "start_time = NULL, end_time = NULL, unblocking_processed = 0 WHERE id = ?",
        [(j,) for j in targets],
    )
    conn.executemany(
        "UPDATE job_internal SET active_compute_node_id = NULL WHERE job_id = ?",
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


# -- claims ------------------------------------------------------------------------------------
def _mark_claimed(
    conn: sqlite3.Connection, st: ServerState, ids: list[int]
) -> list[dict[str, Any]]:
    if not ids:
        return []
    now = time.time()
    conn.executemany(
        "UPDATE job SET status = 3, claim_time = ? WHERE id = ?", [(now, j) for j in ids]
    )
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM job WHERE id IN ({','.join('?' * len(ids))}) ORDER BY id", ids
    ).fetchall()
    jobs = st.jobs
    out = []
    for row in rows:
        model = job_row_to_model(row)
        jobs[row[0]].model = model
        if "invocation_script" in model:  # a claim's reply leaves the script out
            model = dict(model)
            del model["invocation_script"]
        out.append(model)
    return out


def _pop_ready(st: ServerState, wf: WorkflowMem, accept: Any, limit: int) -> list[int]:
    taken: list[int] = []
    skipped: list[int] = []
    jobs = st.jobs
    heap = wf.ready
    while heap and len(taken) < limit:
        j = heapq.heappop(heap)
        jm = jobs.get(j)
        if jm is None or jm.status != 2 or j in taken:
            continue
        verdict = accept(j, jm)
        if verdict is None:  # resources exhausted: stop scanning
            skipped.append(j)
            break
        if verdict:
            taken.append(j)
        else:
            skipped.append(j)
        if len(skipped) > 10000:
            break
    for j in skipped:
        heapq.heappush(heap, j)
    return taken


def claim_next_jobs(
    conn: sqlite3.Connection, st: ServerState, workflow_id: int, limit: int
) -> dict[str, Any]:
    """POST /workflows/{id}/claim_next_jobs: up to ``limit`` ready jobs, ascending id."""
    wf = st.workflow(workflow_id)
    if wf.is_canceled or limit <= 0:
        return {"jobs": []}
    return _claim(conn, st, wf, lambda j, jm: True, limit)


def claim_jobs_based_on_resources(
    conn: sqlite3.Connection, st: ServerState, workflow_id: int, limit: int, res: dict[str, Any]
) -> dict[str, Any]:
    """POST /workflows/{id}/claim_jobs_based_on_resources/{limit}: greedy packing as torc."""
    wf = st.workflow(workflow_id)
    cpus = _get(res, "num_cpus", int, required=True)
    mem = _get(res, "memory_gb", (int, float), required=True)
    gpus = _get(res, "num_gpus", int, required=True)
    nodes = _get(res, "num_nodes", int, required=True)
    time_limit = _get(res, "time_limit", str)
    sched = _get(res, "scheduler_config_id", int)
    try:
        limit_s = duration_seconds(time_limit) if time_limit else 2**62
    except ValueError as exc:
        raise _bad(str(exc)) from None
    if wf.is_canceled:
        return {"jobs": [], "reason": "Workflow is canceled"}
    if limit <= 0:
        return {"jobs": []}
    left = {"cpus": cpus, "mem": int(mem * 1024**3), "gpus": gpus, "nodes": nodes}
    rr = st.rr

    def accept(j: int, jm: JobMem) -> bool | None:
        if left["cpus"] <= 0 and left["mem"] <= 0:
            return None
        r = rr.get(jm.rr_id) if jm.rr_id is not None else None
        need_cpus, need_gpus, need_nodes, need_mem, need_s = (
            (r[1], r[2], r[3], r[4], r[5]) if r else (1, 0, 1, 0, 0)
        )
        if (
            need_cpus > left["cpus"]
            or need_gpus > left["gpus"]
            or need_mem > left["mem"]
            or need_nodes > nodes
            or need_s > limit_s
        ):
            return False
        if need_nodes > 1 and need_nodes > left["nodes"]:
            return False
        left["cpus"] -= need_cpus
        left["gpus"] -= need_gpus
        left["mem"] -= need_mem
        if need_nodes > 1:
            left["nodes"] -= need_nodes
        return True

    del sched  # no scheduler configs in this server: every job matches
    return _claim(conn, st, wf, accept, limit)


def _claim(
    conn: sqlite3.Connection, st: ServerState, wf: WorkflowMem, accept: Any, limit: int
) -> dict[str, Any]:
    """Takes up to ``limit`` accepted ready jobs and marks them pending (claimed).

    If writing the claim fails, the jobs go back to the workflow's ready queue.
    """
    taken = _pop_ready(st, wf, accept, limit)
    try:
        models = _mark_claimed(conn, st, taken)
    except BaseException:
        for j in taken:
            heapq.heappush(wf.ready, j)
        raise
    for j in taken:
        st._set_status(j, st.jobs[j], 3)
    return {"jobs": models}


# -- run ---------------------------------------------------------------------------------------
def start_job(
    conn: sqlite3.Connection, st: ServerState, job_id: int, run_id: int, node_id: int
) -> dict[str, Any]:
    """PUT /jobs/{id}/start_job/{run_id}/{compute_node_id}: pending -> running (idempotent)."""
    jm = st.job(job_id)
    wf = st.workflows[jm.workflow_id]
    if run_id != wf.run_id:
        raise ConflictError(
            422, f"run_id {run_id} does not match workflow {wf.id}'s run_id {wf.run_id}"
        )
    if jm.status == 4 and jm.node_id == node_id:
        return _job_model(conn, st, job_id, compute_node_id=node_id)
    if jm.status != 3:
        raise ConflictError(
            422,
            f"job {job_id} is {JobStatus(jm.status).wire}, not pending; "
            "only a claimed job can start",
        )
    now = time.time()
    conn.execute("UPDATE job SET status = 4, start_time = ? WHERE id = ?", (now, job_id))
    conn.execute(
        "UPDATE job_internal SET active_compute_node_id = ? WHERE job_id = ?", (node_id, job_id)
    )
    st._set_status(job_id, jm, 4)
    jm.node_id = node_id
    return _job_model(conn, st, job_id, compute_node_id=node_id, start_time=utc_timestamp(now))


_RESULT_FIELDS = (
    "job_id",
    "workflow_id",
    "run_id",
    "compute_node_id",
    "return_code",
    "exec_time_minutes",
    "completion_time",
    "status",
)


def validate_result(body: Any) -> dict[str, Any]:
    """Checks a ``result_model`` body (pure; raises ApiError 422)."""
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
    return body


def _complete_one(
    conn: sqlite3.Connection,
    st: ServerState,
    job_id: int,
    status: int,
    run_id: int,
    result: dict[str, Any],
) -> None:
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
    now = time.time()
    rc = result["return_code"]
    rid = _row_id(
        conn.execute(
            "INSERT INTO result (workflow_id, job_id, run_id, attempt_id, compute_node_id, "
            "return_code, "
            "exec_time_minutes, completion_time, status, peak_memory_bytes, avg_memory_bytes, "
            "peak_cpu_percent, avg_cpu_percent) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                wf.id,
                job_id,
                run_id,
                result.get("attempt_id") or 1,
                result["compute_node_id"],
                rc,
                result["exec_time_minutes"],
                result["completion_time"],
                status,
                result.get("peak_memory_bytes"),
                result.get("avg_memory_bytes"),
                result.get("peak_cpu_percent"),
                result.get("avg_cpu_percent"),
            ),
        )
    )
    conn.execute(
        "INSERT OR REPLACE INTO workflow_result (workflow_id, job_id, result_id) VALUES (?,?,?)",
        (wf.id, job_id, rid),
    )
    done = status in _DONE_INTS
    conn.execute(
        "UPDATE job SET status = ?, end_time = ?, unblocking_processed = ? WHERE id = ?",
        (status, now, 0 if done else 1, job_id),
    )
    if jm.node_id is not None:
        conn.execute(
            "UPDATE job_internal SET active_compute_node_id = NULL WHERE job_id = ?", (job_id,)
        )
    st._set_status(job_id, jm, status)
    jm.node_id = None
    jm.failed = status in _FAILURE_INTS and rc != 0
    if done:
        st.pending_unblock.append((job_id, jm.failed, now))


def complete_job(
    conn: sqlite3.Connection,
    st: ServerState,
    job_id: int,
    status: int,
    run_id: int,
    result: dict[str, Any],
) -> dict[str, Any]:
    """POST /jobs/{id}/complete_job/{status}/{run_id}: stores the result; 422 if already done."""
    _complete_one(conn, st, job_id, status, run_id, result)
    model = _job_model(conn, st, job_id)
    st.jobs[job_id].model = None
    return model


def batch_complete_jobs(
    conn: sqlite3.Connection, st: ServerState, workflow_id: int, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    """POST /workflows/{id}/batch_complete_jobs: each entry on its own; errors listed.

    No SAVEPOINT per entry: an entry is refused (ApiError, or an IntegrityError of its first
    INSERT, which SQLite undoes by itself) before it changed anything, which
    ``conn.total_changes`` confirms.
    """
    st.workflow(workflow_id)
    completed: list[int] = []
    errors: list[dict[str, Any]] = []
    for entry in entries:
        job_id = entry.get("job_id")
        try:
            if not isinstance(job_id, int) or isinstance(job_id, bool):
                raise _bad("job_id must be an integer")
            run_id = _get(entry, "run_id", int, required=True)
            status_text = _get(entry, "status", str, required=True)
            try:
                status = int(JobStatus.from_wire(status_text))
            except ValueError as exc:
                raise _bad(str(exc)) from None
            result = validate_result(entry.get("result"))
            if st.job(job_id).workflow_id != workflow_id:
                raise _bad(f"job {job_id} is not in workflow {workflow_id}")
            before = conn.total_changes
            try:
                _complete_one(conn, st, job_id, status, run_id, result)
            except BaseException as exc:
                if conn.total_changes == before:
                    raise  # refused before it wrote anything: only this entry fails
                # failed half-way (not expected: every check comes before the first write, and
                # a failing statement undoes itself): the writer rolls the whole request back
                # and memory, changed by the entries before this one, is reloaded
                st.needs_reload = True
                raise RuntimeError(f"completing job {job_id} failed after it wrote: {exc}") from exc
            completed.append(job_id)
        except ApiError as exc:
            errors.append(
                {"job_id": job_id if isinstance(job_id, int) else -1, "message": str(exc)}
            )
        except sqlite3.IntegrityError as exc:
            errors.append({"job_id": job_id, "message": f"conflicts with stored data: {exc}"})
    return {"completed": completed, "errors": errors}


# -- compute nodes -----------------------------------------------------------------------------
_CN_FIELDS = (
    "hostname",
    "pid",
    "start_time",
    "num_cpus",
    "memory_gb",
    "num_gpus",
    "num_nodes",
    "compute_node_type",
)


def create_compute_node(
    conn: sqlite3.Connection, st: ServerState, body: dict[str, Any]
) -> dict[str, Any]:
    """POST /compute_nodes."""
    wid = _get(body, "workflow_id", int, required=True)
    st.workflow(wid)
    for key, kind in (
        ("hostname", str),
        ("pid", int),
        ("start_time", str),
        ("num_cpus", int),
        ("memory_gb", (int, float)),
        ("num_gpus", int),
        ("num_nodes", int),
        ("compute_node_type", str),
    ):
        _get(body, key, kind, required=True)
    active = _get(body, "is_active", bool, True)
    sched = body.get("scheduler")
    cid = _row_id(
        conn.execute(
            f"INSERT INTO compute_node ({CN_COLUMNS.replace('id, ', '', 1)}) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                wid,
                body["hostname"],
                body["pid"],
                body["start_time"],
                body.get("duration_seconds"),
                int(active),
                body["num_cpus"],
                body["memory_gb"],
                body["num_gpus"],
                body["num_nodes"],
                _get(body, "time_limit", str),
                _get(body, "scheduler_config_id", int),
                body["compute_node_type"],
                None if sched is None else orjson.dumps(sched).decode(),
            ),
        )
    )
    return get_compute_node(conn, cid)


def get_compute_node(conn: sqlite3.Connection, node_id: int) -> dict[str, Any]:
    """Reads one compute node (any connection)."""
    row = conn.execute(f"SELECT {CN_COLUMNS} FROM compute_node WHERE id = ?", (node_id,)).fetchone()
    if row is None:
        raise NotFoundError(404, f"compute node {node_id} does not exist")
    model = cn_row_to_model(row)
    if isinstance(model.get("scheduler"), str):
        with contextlib.suppress(orjson.JSONDecodeError):
            model["scheduler"] = orjson.loads(model["scheduler"])
    return model


def update_compute_node(
    conn: sqlite3.Connection, st: ServerState, node_id: int, body: dict[str, Any]
) -> dict[str, Any]:
    """PUT /compute_nodes/{id}: updates is_active, duration_seconds and the other fields given."""
    current = get_compute_node(conn, node_id)
    changes = {}
    for key, kind in (
        ("hostname", str),
        ("pid", int),
        ("start_time", str),
        ("num_cpus", int),
        ("memory_gb", (int, float)),
        ("num_gpus", int),
        ("num_nodes", int),
        ("compute_node_type", str),
        ("time_limit", str),
        ("duration_seconds", (int, float)),
        ("is_active", bool),
    ):
        value = _get(body, key, kind)
        if value is not None:
            changes[key] = int(value) if isinstance(value, bool) else value
    if changes:
        conn.execute(
            f"UPDATE compute_node SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
            (*changes.values(), node_id),
        )
    del current
    return get_compute_node(conn, node_id)


def create_event(conn: sqlite3.Connection, st: ServerState, body: dict[str, Any]) -> dict[str, Any]:
    """POST /events."""
    wid = _get(body, "workflow_id", int, required=True)
    st.workflow(wid)
    ts = _get(body, "timestamp", int, int(time.time() * 1000))
    data = body.get("data")
    eid = _row_id(
        conn.execute(
            "INSERT INTO event (workflow_id, timestamp, data) VALUES (?,?,?)",
            (wid, ts, orjson.dumps(data).decode()),
        )
    )
    return {"id": eid, "workflow_id": wid, "timestamp": ts, "data": data}


__all__ = [name for name in dir() if not name.startswith("_")] + ["N_STATUS"]
