"""Turns a `WorkflowPlan` into a workflow on a server.

Against torc-stress's server, one ``POST /workflows/create_whole`` creates the workflow, its
resource requirements and jobs and initializes it in one transaction: whole or not at all,
even when the server's disk is full or it dies half-way. Against a server without it (404 or
405), the way torc's client does: one ``POST /workflows``, one ``POST /resource_requirements``
per named requirement, then the jobs level by level with ``POST /bulk_jobs`` carrying
``depends_on_job_ids`` of earlier levels, then ``initialize_jobs``; a failure then deletes the
half-made workflow before the error propagates. The plan is already validated (the spec layer
raises :class:`~torc_stress.errors.SpecError` before any request is sent).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torc_stress.errors import ApiError, ConflictError, StressError
from torc_stress.logs import kv

if TYPE_CHECKING:
    from torc_stress.client import TorcClient
    from torc_stress.spec import PlannedJob, WorkflowPlan

__all__ = ["job_body", "submit_plan", "whole_body"]

log = logging.getLogger(__name__)


def submit_plan(client: TorcClient, plan: WorkflowPlan, *, user: str) -> int:
    """Creates the plan's workflow, requirements and jobs, and initializes it.

    Args:
        client: the server to create it on.
        plan: an expanded, validated workflow plan.
        user: the workflow's owner.

    Returns:
        The new workflow's id.

    Raises:
        StressError: any API or transport error; the workflow was deleted again.
    """
    try:
        created = client.create_workflow_whole(whole_body(plan, user=user))
    except ApiError as exc:
        if exc.status not in (404, 405) or isinstance(exc, ConflictError):
            raise
        log.info("the server cannot create a whole workflow at once; creating it step by step",
                 extra=kv(error=str(exc)))
    else:
        workflow_id = int(created["workflow"]["id"])
        log.info("workflow created", extra=kv(workflow_id=workflow_id, jobs=created["jobs"]))
        return workflow_id
    workflow = client.create_workflow(plan.name, user, plan.description or None)
    workflow_id = int(workflow["id"])
    try:
        _create_contents(client, plan, workflow_id)
    except BaseException:
        _delete_quietly(client, workflow_id)
        raise
    log.info("workflow created", extra=kv(workflow_id=workflow_id, jobs=len(plan.jobs)))
    return workflow_id


def _create_contents(client: TorcClient, plan: WorkflowPlan, workflow_id: int) -> None:
    requirement_ids = {
        rr.name: int(client.create_resource_requirements(
            workflow_id, rr.name, num_cpus=rr.num_cpus, num_gpus=rr.num_gpus,
            num_nodes=rr.num_nodes, memory=rr.memory, runtime=rr.runtime)["id"])
        for rr in plan.resource_requirements
    }
    jobs_by_name = {job.name: job for job in plan.jobs}
    job_ids: dict[str, int] = {}
    for level in plan.levels:
        bodies = [job_body(jobs_by_name[name], workflow_id, requirement_ids, job_ids)
                  for name in level]
        created = client.create_jobs(bodies)
        if len(created) != len(bodies):
            raise StressError(f"the server created {len(created)} of {len(bodies)} jobs of "
                              f"workflow {workflow_id}; check the server log")
        for body, job in zip(bodies, created, strict=True):
            job_ids[body["name"]] = int(job["id"])
    client.initialize_jobs(workflow_id)


def whole_body(plan: WorkflowPlan, *, user: str) -> dict[str, Any]:
    """The ``POST /workflows/create_whole`` body of a plan (names in place of ids)."""
    workflow: dict[str, Any] = {"name": plan.name, "user": user}
    if plan.description:
        workflow["description"] = plan.description
    jobs_by_name = {job.name: job for job in plan.jobs}
    rr_names = [rr.name for rr in plan.resource_requirements] + ["default"]
    levels = []
    for level in plan.levels:
        bodies = []
        for name in level:
            job = jobs_by_name[name]
            # names for ids: the server resolves them inside its one transaction
            body = job_body(job, 0, {rr: rr for rr in rr_names}, {up: up for up in job.depends_on})
            del body["workflow_id"]
            if job.depends_on:
                body["depends_on"] = body.pop("depends_on_job_ids")
            if job.resource_requirements:
                body["resource_requirements"] = body.pop("resource_requirements_id")
            bodies.append(body)
        levels.append(bodies)
    return {
        "workflow": workflow,
        "resource_requirements": [
            {"name": rr.name, "num_cpus": rr.num_cpus, "num_gpus": rr.num_gpus,
             "num_nodes": rr.num_nodes, "memory": rr.memory, "runtime": rr.runtime}
            for rr in plan.resource_requirements
        ],
        "levels": levels,
        "initialize": True,
    }


def job_body(job: PlannedJob, workflow_id: int, requirement_ids: Mapping[str, Any],
             job_ids: Mapping[str, Any]) -> dict[str, Any]:
    """Builds the ``job_model`` body of one planned job.

    Args:
        job: the planned job.
        workflow_id: its workflow.
        requirement_ids: resource requirement name -> id.
        job_ids: ids of jobs created in earlier levels, by name.

    Returns:
        The JSON body; optional fields left unset are omitted.
    """
    body: dict[str, Any] = {"workflow_id": workflow_id, "name": job.name, "command": job.command}
    if job.invocation_script:
        body["invocation_script"] = job.invocation_script
    if job.resource_requirements:
        body["resource_requirements_id"] = requirement_ids[job.resource_requirements]
    if job.depends_on:
        body["depends_on_job_ids"] = [job_ids[name] for name in job.depends_on]
    if job.cancel_on_blocking_job_failure is not None:
        body["cancel_on_blocking_job_failure"] = bool(job.cancel_on_blocking_job_failure)
    if job.supports_termination:
        body["supports_termination"] = True
    return body


def _delete_quietly(client: TorcClient, workflow_id: int) -> None:
    try:
        client.delete_workflow(workflow_id)
    except StressError as exc:
        log.warning("could not delete the half-created workflow; delete it by hand",
                    extra=kv(workflow_id=workflow_id, error=str(exc)))
    else:
        log.info("half-created workflow deleted", extra=kv(workflow_id=workflow_id))
