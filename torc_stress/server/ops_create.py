"""Creating a whole workflow in one transaction (an extension of torc's API).

torc's client creates a workflow in many requests (``POST /workflows``, one per resource
requirement, ``POST /bulk_jobs`` per batch, ``initialize_jobs``); a failure half-way (a full
disk, a killed server) leaves a half-created workflow that its deletion may not remove either.
``POST /workflows/create_whole`` takes everything at once and commits it whole or not at all::

    {"workflow": {<workflow_model fields>},
     "resource_requirements": [{<resource_requirements_model fields, no workflow_id>}],
     "levels": [[{<job_model fields, no workflow_id>, "depends_on": [names of earlier levels],
                  "resource_requirements": "<name>"}, ...], ...],
     "initialize": true}
"""

from __future__ import annotations

import sqlite3
from typing import Any

from torc_stress.server.ops_common import _bad
from torc_stress.server.ops_jobs import MAX_BULK_JOBS, create_jobs
from torc_stress.server.ops_nodes import create_resource_requirements
from torc_stress.server.ops_workflows import create_workflow, initialize_jobs
from torc_stress.server.state import ServerState

__all__ = ["create_workflow_whole", "validate_whole"]

MAX_WHOLE_JOBS = 1_000_000


def validate_whole(body: Any) -> tuple[dict[str, Any], list[dict[str, Any]], list[list[Any]]]:
    """Checks the shape and the names of a whole-workflow body before anything is written.

    Returns:
        ``(workflow, resource_requirements, levels)``.

    Raises:
        ApiError: 422 naming what is wrong.
    """
    if not isinstance(body, dict):
        raise _bad("the body must be an object with workflow, resource_requirements and levels")
    workflow = body.get("workflow")
    requirements = body.get("resource_requirements", [])
    levels = body.get("levels")
    if not isinstance(workflow, dict):
        raise _bad("'workflow' must be a workflow_model object")
    if not isinstance(requirements, list) or not all(isinstance(r, dict) for r in requirements):
        raise _bad("'resource_requirements' must be a list of objects")
    if not isinstance(levels, list) or not all(isinstance(level, list) for level in levels):
        raise _bad("'levels' must be a list of lists of job objects")
    if not all(isinstance(r.get("name"), str) for r in requirements):
        raise _bad("every resource requirement needs a string 'name'")
    rr_names = {r["name"] for r in requirements} | {"default"}
    seen: set[str] = set()
    total = 0
    for depth, level in enumerate(levels):
        names_here: set[str] = set()
        for job in level:
            name = job.get("name") if isinstance(job, dict) else None
            if not isinstance(name, str):
                raise _bad(f"levels[{depth}]: every job must be an object with a string name")
            if name in seen or name in names_here:
                raise _bad(f"job {name!r} appears twice")
            ups = job.get("depends_on", [])
            if not isinstance(ups, list) or any(not isinstance(up, str) or up not in seen
                                                for up in ups):
                raise _bad(f"job {name!r}: depends_on must name jobs of earlier levels")
            rr = job.get("resource_requirements")
            if rr is not None and (not isinstance(rr, str) or rr not in rr_names):
                raise _bad(f"job {name!r}: no resource requirements named {rr!r}")
            names_here.add(name)
        seen |= names_here
        total += len(level)
    if total > MAX_WHOLE_JOBS:
        raise _bad(f"at most {MAX_WHOLE_JOBS} jobs per workflow, got {total}")
    return workflow, requirements, levels


def create_workflow_whole(
    conn: sqlite3.Connection, st: ServerState, body: dict[str, Any]
) -> dict[str, Any]:
    """Writer op: the workflow, its requirements and jobs, initialized; all or nothing.

    The writer runs the op in a SAVEPOINT, so a failure rolls every row of it back; memory,
    changed step by step, is then rebuilt from the database after the transaction.
    """
    workflow, requirements, levels = validate_whole(body)
    try:
        return _create(conn, st, workflow, requirements, levels, bool(body.get("initialize")))
    except BaseException:
        st.needs_reload = True
        raise


def _create(
    conn: sqlite3.Connection,
    st: ServerState,
    workflow: dict[str, Any],
    requirements: list[dict[str, Any]],
    levels: list[list[dict[str, Any]]],
    initialize: bool,
) -> dict[str, Any]:
    model = create_workflow(conn, st, workflow)
    wid = int(model["id"])
    rr_ids = {"default": st.workflows[wid].default_rr}
    for rr in requirements:
        created = create_resource_requirements(conn, st, {**rr, "workflow_id": wid})
        rr_ids[rr["name"]] = int(created["id"])
    job_ids: dict[str, int] = {}
    for level in levels:
        for start in range(0, len(level), MAX_BULK_JOBS):
            chunk = level[start : start + MAX_BULK_JOBS]
            bodies = [_job_body(job, wid, rr_ids, job_ids) for job in chunk]
            for job, created in zip(chunk, create_jobs(conn, st, bodies)["jobs"], strict=True):
                job_ids[job["name"]] = int(created["id"])
    if initialize:
        initialize_jobs(conn, st, wid, False)
    return {"workflow": model, "jobs": len(job_ids)}


def _job_body(
    job: dict[str, Any], wid: int, rr_ids: dict[str, int | None], job_ids: dict[str, int]
) -> dict[str, Any]:
    body = {k: v for k, v in job.items() if k not in ("depends_on", "resource_requirements")}
    body["workflow_id"] = wid
    if job.get("depends_on"):
        body["depends_on_job_ids"] = [job_ids[up] for up in job["depends_on"]]
    rr = job.get("resource_requirements")
    if rr is not None:
        body["resource_requirements_id"] = rr_ids[rr]
    return body
