"""Turns a `WorkflowPlan` into a workflow on a server, the way torc's client does.

One ``POST /workflows``, one ``POST /resource_requirements`` per named requirement, then the jobs
level by level with ``POST /bulk_jobs`` (batches of 1000) carrying ``depends_on_job_ids`` of
earlier levels, then ``initialize_jobs``. Any failure deletes the half-made workflow before the
error propagates: nothing half-created is left behind. The plan is already validated (the spec
layer raises :class:`~torc_stress.errors.SpecError` before any request is sent).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torc_stress.errors import StressError
from torc_stress.logs import kv

if TYPE_CHECKING:
    from torc_stress.client import TorcClient
    from torc_stress.spec import PlannedJob, WorkflowPlan

__all__ = ["job_body", "submit_plan"]

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


def job_body(job: PlannedJob, workflow_id: int, requirement_ids: Mapping[str, int],
             job_ids: Mapping[str, int]) -> dict[str, Any]:
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
