"""The write operations. Each runs on the writer thread as ``fn(conn, state, *args)``.

Each op validates first (raising ApiError), then writes SQL, then changes memory. The ops live
in :mod:`ops_workflows`, :mod:`ops_jobs`, :mod:`ops_complete` and :mod:`ops_nodes`; this module
names them all.
"""

from __future__ import annotations

from torc_stress.server.ops_common import _workflow_model as _workflow_model
from torc_stress.server.ops_complete import batch_complete_jobs, complete_job, validate_result
from torc_stress.server.ops_create import create_workflow_whole
from torc_stress.server.ops_jobs import (
    batch_start_jobs,
    claim_jobs_based_on_resources,
    claim_next_jobs,
    create_jobs,
    ready_unblocked_orphans,
    release_unstarted_claims,
    start_job,
    validate_batch_start,
)
from torc_stress.server.ops_nodes import (
    create_compute_node,
    create_event,
    create_resource_requirements,
    get_compute_node,
    update_compute_node,
)
from torc_stress.server.ops_workflows import (
    cancel_workflow,
    create_workflow,
    delete_workflow,
    initialize_jobs,
    reset_job_status,
    reset_workflow_status,
    update_workflow_status,
)

__all__ = [
    "batch_complete_jobs",
    "batch_start_jobs",
    "cancel_workflow",
    "claim_jobs_based_on_resources",
    "claim_next_jobs",
    "complete_job",
    "create_compute_node",
    "create_event",
    "create_jobs",
    "create_resource_requirements",
    "create_workflow",
    "create_workflow_whole",
    "delete_workflow",
    "get_compute_node",
    "initialize_jobs",
    "ready_unblocked_orphans",
    "release_unstarted_claims",
    "reset_job_status",
    "reset_workflow_status",
    "start_job",
    "update_compute_node",
    "update_workflow_status",
    "validate_batch_start",
    "validate_result",
]
