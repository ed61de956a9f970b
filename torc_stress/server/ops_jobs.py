"""Write operations on jobs: bulk create, claims, start, complete, batch complete."""

from __future__ import annotations

import heapq
import sqlite3
import time
from typing import Any

from torc_stress.errors import ConflictError
from torc_stress.server.checks import gib_to_bytes
from torc_stress.server.ops_common import (
    _bad,
    _get,
    _job_model,
    _row_id,
    checks_first,
    references_checked,
)
from torc_stress.server.state import (
    MAX_BULK_JOBS,
    JobMem,
    ServerState,
    WorkflowMem,
    utc_timestamp,
)
from torc_stress.server.store import (
    JOB_COLUMNS,
    duration_seconds,
    job_row_to_model,
)
from torc_stress.statuses import JobStatus


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
        jm = JobMem(wid, 0, depth, cancel, rr_id)
        jm.attempt = attempt
        new_mem.append((jid, jm))
    conn.executemany("INSERT INTO job_internal (job_id) VALUES (?)", [(j,) for j, _ in new_mem])
    conn.executemany(
        "INSERT INTO job_depends_on (job_id, depends_on_job_id, workflow_id) VALUES (?,?,?)", edges
    )
    for jid, jm in new_mem:
        st._add_job(jid, jm)
    for jid, up, _ in edges:
        st.tracker.add_edge(jid, up)
    return {"jobs": out}


# -- claims ------------------------------------------------------------------------------------
def _mark_claimed(
    conn: sqlite3.Connection, st: ServerState, ids: list[int], node_id: int | None
) -> list[dict[str, Any]]:
    if not ids:
        return []
    now = time.time()
    if node_id is None:
        conn.executemany(
            "UPDATE job SET status = 3, claim_time = ? WHERE id = ?", [(now, j) for j in ids]
        )
    else:
        conn.executemany(
            "UPDATE job SET status = 3, claim_time = ?, active_compute_node_id = ? WHERE id = ?",
            [(now, node_id, j) for j in ids],
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


@references_checked
@checks_first
def claim_next_jobs(
    conn: sqlite3.Connection,
    st: ServerState,
    workflow_id: int,
    limit: int,
    node_id: int | None = None,
) -> dict[str, Any]:
    """POST /workflows/{id}/claim_next_jobs: up to ``limit`` ready jobs, ascending id.

    With ``node_id`` (the ``compute_node_id`` query parameter, an extension of torc's API)
    the claim is owned: only that compute node may start or complete the jobs, and they go
    back to ready if its lease expires.
    """
    wf = st.workflow(workflow_id)
    if node_id is not None:
        _check_claimant(st, wf, node_id)
    if wf.is_canceled or limit <= 0:
        return {"jobs": []}
    return _claim(conn, st, wf, lambda j, jm: True, limit, node_id)


def _check_claimant(st: ServerState, wf: WorkflowMem, node_id: int) -> None:
    st.check_node(node_id)
    if st.nodes[node_id] != wf.id:
        raise _bad(f"compute node {node_id} belongs to workflow {st.nodes[node_id]}, "
                   f"not {wf.id}")


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
    left = {"cpus": cpus, "mem": gib_to_bytes(mem, "memory_gb"), "gpus": gpus, "nodes": nodes}
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
    conn: sqlite3.Connection,
    st: ServerState,
    wf: WorkflowMem,
    accept: Any,
    limit: int,
    node_id: int | None = None,
) -> dict[str, Any]:
    """Takes up to ``limit`` accepted ready jobs and marks them pending (claimed).

    If writing the claim fails, the jobs go back to the workflow's ready queue.
    """
    taken = _pop_ready(st, wf, accept, limit)
    try:
        models = _mark_claimed(conn, st, taken, node_id)
    except BaseException:
        for j in taken:
            heapq.heappush(wf.ready, j)
        raise
    jobs = st.jobs
    for j in taken:
        jm = jobs[j]
        st._set_status(j, jm, 3)
        jm.node_id = node_id
        st.released.discard(j)
    return {"jobs": models}


def release_unstarted_claims(conn: sqlite3.Connection, st: ServerState) -> dict[str, Any]:
    """Start-up op: claimed jobs that never started and have no leased owner go back to ready.

    A claim the server committed but never answered (it was killed in between) would leave
    its jobs pending forever when no worker knows it holds them and no lease expires for
    them. So such claims do not survive a restart. A worker that did get the answer may still
    start such a job while it is ready again (see :func:`_startable`); if another worker
    claimed it first, that start is refused.

    Claims owned by a leased compute node survive: its worker finds the ones it never heard
    of by listing its pending jobs, and if it is gone its lease expires and requeues them.
    """
    leases = st.leases
    pending = [j for j, jm in st.jobs.items() if jm.status == 3 and jm.node_id not in leases]
    if not pending:
        return {"released": 0}
    conn.executemany(
        "UPDATE job SET status = 2, claim_time = NULL, active_compute_node_id = NULL "
        "WHERE id = ?",
        [(j,) for j in pending],
    )
    for jid in pending:
        jm = st.jobs[jid]
        st._set_status(jid, jm, 2)
        jm.node_id = None
        heapq.heappush(st.workflows[jm.workflow_id].ready, jid)
    st.released.update(pending)
    return {"released": len(pending)}


def ready_unblocked_orphans(conn: sqlite3.Connection, st: ServerState) -> dict[str, Any]:
    """Start-up op: blocked jobs with nothing left to wait for become ready.

    Runs after unblocking lost at the last stop was redone: a job still blocked then with no
    unfinished upstream job would wait forever (an earlier bug could leave such jobs behind).
    """
    tracker = st.tracker
    orphans = [j for j, jm in st.jobs.items()
               if jm.status == 1 and tracker.remaining.get(j, 0) <= 0]
    if not orphans:
        return {"ready": 0}
    now = time.time()
    conn.executemany(
        "UPDATE job SET status = 2, ready_time = ? WHERE id = ?", [(now, j) for j in orphans]
    )
    for jid in orphans:
        jm = st.jobs[jid]
        st._set_status(jid, jm, 2)
        heapq.heappush(st.workflows[jm.workflow_id].ready, jid)
    return {"ready": len(orphans)}


def _startable(st: ServerState, job_id: int, jm: JobMem) -> bool:
    """Claimed (pending), or released at the last restart and not claimed since."""
    return jm.status == 3 or (jm.status == 2 and job_id in st.released)


def _check_owner(job_id: int, jm: JobMem, node_id: int) -> None:
    """Raises 409 when the job was claimed by another compute node (owned claims)."""
    if jm.node_id is not None and jm.node_id != node_id and jm.status == 3:
        raise ConflictError(
            409, f"job {job_id} is claimed by compute node {jm.node_id}, not {node_id}"
        )


# -- run ---------------------------------------------------------------------------------------
@references_checked
@checks_first
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
    st.check_node(node_id)
    if not _startable(st, job_id, jm):
        raise ConflictError(
            422,
            f"job {job_id} is {JobStatus(jm.status).wire}, not pending; "
            "only a claimed job can start",
        )
    _check_owner(job_id, jm, node_id)
    st.released.discard(job_id)
    now = time.time()
    conn.execute(
        "UPDATE job SET status = 4, start_time = ?, active_compute_node_id = ? WHERE id = ?",
        (now, node_id, job_id),
    )
    st._set_status(job_id, jm, 4)
    jm.node_id = node_id
    return _job_model(conn, st, job_id, compute_node_id=node_id, start_time=utc_timestamp(now))


MAX_BATCH_START = 10000


def validate_batch_start(body: Any) -> tuple[int, int, list[int]]:
    """Checks a ``batch_start_jobs`` body (pure; raises ApiError 422).

    Returns:
        ``(run_id, compute_node_id, job_ids)``.
    """
    if not isinstance(body, dict):
        raise _bad("the body must be an object with run_id, compute_node_id and job_ids")
    run_id = _get(body, "run_id", int, required=True)
    node_id = _get(body, "compute_node_id", int, required=True)
    job_ids = body.get("job_ids")
    if not isinstance(job_ids, list) or not all(
        isinstance(j, int) and not isinstance(j, bool) for j in job_ids
    ):
        raise _bad("'job_ids' must be a list of integer job ids")
    if len(job_ids) > MAX_BATCH_START:
        raise _bad(f"at most {MAX_BATCH_START} job_ids per request, got {len(job_ids)}")
    return run_id, node_id, job_ids


@references_checked
@checks_first
def batch_start_jobs(
    conn: sqlite3.Connection,
    st: ServerState,
    workflow_id: int,
    run_id: int,
    node_id: int,
    job_ids: list[int],
) -> dict[str, Any]:
    """POST /workflows/{id}/batch_start_jobs: ``start_job`` for several claimed jobs at once.

    An extension of torc's API (torc starts jobs one request at a time). Each id is judged on
    its own, as ``start_job`` would: a job already running on this node counts as started
    (a retried request), anything else that is not pending is listed in ``errors``.
    """
    wf = st.workflow(workflow_id)
    if run_id != wf.run_id:
        raise ConflictError(
            422, f"run_id {run_id} does not match workflow {wf.id}'s run_id {wf.run_id}"
        )
    st.check_node(node_id)
    jobs = st.jobs
    started: list[int] = []
    fresh: list[int] = []
    seen: set[int] = set()
    errors: list[dict[str, Any]] = []
    for jid in job_ids:
        jm = jobs.get(jid)
        if jm is None or jm.workflow_id != workflow_id:
            errors.append({"job_id": jid, "message": f"job {jid} is not in workflow {wf.id}"})
        elif jm.status == 4 and jm.node_id == node_id:
            started.append(jid)
        elif not _startable(st, jid, jm) or jid in seen:
            wire = JobStatus(jm.status).wire
            errors.append({"job_id": jid, "message": f"job {jid} is {wire}, not pending; "
                           "only a claimed job can start"})
        elif jm.node_id is not None and jm.node_id != node_id and jm.status == 3:
            errors.append({"job_id": jid, "message": f"job {jid} is claimed by compute node "
                           f"{jm.node_id}, not {node_id}"})
        else:
            fresh.append(jid)
            seen.add(jid)
    if fresh:
        now = time.time()
        conn.executemany(
            "UPDATE job SET status = 4, start_time = ?, active_compute_node_id = ? WHERE id = ?",
            [(now, node_id, j) for j in fresh],
        )
        for jid in fresh:
            jm = jobs[jid]
            st._set_status(jid, jm, 4)
            jm.node_id = node_id
            st.released.discard(jid)
        started.extend(fresh)
    return {"started": started, "errors": errors}
