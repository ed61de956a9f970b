"""What the OpenAPI document declares per operation: query parameters, bodies, answers.

The body schemas are torc-client 0.35.0's models (``torc.openapi_client.models``) cut down to
the fields this server reads; other fields are allowed (torc's clients send them) and ignored.
Integers carry SQLite's INTEGER range, which the server enforces (:mod:`checks`).
"""

from __future__ import annotations

from typing import Any

from torc_stress.server.checks import INT64_MAX, INT64_MIN
from torc_stress.server.http_io import MAX_LIMIT
from torc_stress.statuses import JobStatus

Schema = dict[str, Any]

INT: Schema = {"type": "integer", "format": "int64", "minimum": INT64_MIN, "maximum": INT64_MAX}
NUMBER: Schema = {"type": "number"}
STRING: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}
STATUS: Schema = {"type": "string", "enum": [s.wire for s in JobStatus]}
LIMIT: Schema = {"type": "integer", "minimum": 0, "maximum": MAX_LIMIT}
OFFSET: Schema = {"type": "integer", "format": "int64", "minimum": 0, "maximum": INT64_MAX}


def _null(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    props = {**required, **{k: _null(v) for k, v in (optional or {}).items()}}
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = sorted(required)
    return schema


def _list_of(item: Schema) -> Schema:
    """torc's list envelope (``http_io.paged``)."""
    return _object(
        {"items": {"type": "array", "items": item}, "offset": INT, "max_limit": INT,
         "count": INT, "total_count": INT, "has_more": BOOL},
    )


_JOB = _object(
    {"workflow_id": INT, "name": STRING, "command": STRING},
    {"id": INT, "status": STATUS, "resource_requirements_id": INT, "invocation_script": STRING,
     "cancel_on_blocking_job_failure": BOOL, "supports_termination": BOOL, "scheduler_id": INT,
     "failure_handler_id": INT, "attempt_id": INT, "compute_node_id": INT,
     "depends_on_job_ids": {"type": "array", "items": INT}},
)
_RESULT = _object(
    {"job_id": INT, "workflow_id": INT, "run_id": INT, "compute_node_id": INT,
     "return_code": INT, "exec_time_minutes": NUMBER, "completion_time": TIMESTAMP,
     "status": STATUS},
    {"id": INT, "attempt_id": INT, "peak_memory_bytes": INT, "avg_memory_bytes": INT,
     "peak_cpu_percent": NUMBER, "avg_cpu_percent": NUMBER},
)
_COMPUTE_NODE_FIELDS: dict[str, Schema] = {
    "hostname": STRING, "pid": INT, "start_time": STRING, "num_cpus": INT, "memory_gb": NUMBER,
    "num_gpus": INT, "num_nodes": INT, "compute_node_type": STRING,
}
_COMPUTE_NODE_OPTIONAL: dict[str, Schema] = {
    "id": INT, "is_active": BOOL, "duration_seconds": NUMBER, "time_limit": STRING,
    "scheduler_config_id": INT, "scheduler": {},
}

#: components/schemas
SCHEMAS: dict[str, Schema] = {
    "ErrorResponse": _object(
        {"error": _object({"status": INT, "message": STRING}), "errorMessage": STRING,
         "code": INT},
    ),
    "WorkflowModel": _object(
        {"name": STRING, "user": STRING},
        {"id": INT, "description": STRING, "jobs_sort_method": {
            "type": "string", "enum": ["gpus_runtime_memory", "gpus_memory_runtime", "none"]},
         "compute_node_expiration_buffer_seconds": INT,
         "compute_node_wait_for_new_jobs_seconds": INT,
         "compute_node_wait_for_healthy_database_minutes": INT,
         "compute_node_min_time_for_new_jobs_seconds": INT,
         "compute_node_ignore_workflow_completion": BOOL, "use_pending_failed": BOOL,
         "resource_monitor_config": {}, "slurm_defaults": {}},
    ),
    "WorkflowStatusModel": _object({}, {"run_id": INT, "is_canceled": BOOL}),
    "JobModel": _JOB,
    "JobsModel": _object({"jobs": {"type": "array", "items": _ref("JobModel")}}),
    "ResourceRequirementsModel": _object(
        {"workflow_id": INT, "name": STRING},
        {"id": INT, "num_cpus": INT, "num_gpus": INT, "num_nodes": INT, "memory": STRING,
         "runtime": STRING},
    ),
    "ComputeNodeModel": _object(
        {"workflow_id": INT, **_COMPUTE_NODE_FIELDS}, _COMPUTE_NODE_OPTIONAL
    ),
    "ComputeNodeUpdate": _object({}, {**_COMPUTE_NODE_FIELDS, **_COMPUTE_NODE_OPTIONAL}),
    "ComputeNodesResources": _object(
        {"num_cpus": INT, "memory_gb": NUMBER, "num_gpus": INT, "num_nodes": INT},
        {"time_limit": STRING, "scheduler_config_id": INT},
    ),
    "ResultModel": _RESULT,
    "JobCompletionEntry": _object(
        {"job_id": INT, "run_id": INT, "status": STATUS, "result": _ref("ResultModel")}
    ),
    "BatchCompleteJobsRequest": _object(
        {"completions": {"type": "array", "items": _ref("JobCompletionEntry")}}
    ),
    "BatchStartJobsRequest": _object(
        {"run_id": INT, "compute_node_id": INT,
         "job_ids": {"type": "array", "items": INT, "maxItems": 10000}}
    ),
    "EventModel": _object({"workflow_id": INT}, {"timestamp": INT, "data": {}}),
    "WholeWorkflowRequest": _object(
        {"workflow": _ref("WorkflowModel"),
         "levels": {"type": "array", "items": {"type": "array", "items": _object(
             {"name": STRING, "command": STRING},
             {"depends_on": {"type": "array", "items": STRING},
              "resource_requirements": STRING})}}},
        {"resource_requirements": {"type": "array", "items": _object({"name": STRING})},
         "initialize": BOOL},
    ),
    "LeaseAnswer": _object({"compute_node_id": INT, "lease_s": {"type": "number"}}),
}

_PAGE = {"offset": OFFSET, "limit": LIMIT}

#: query parameters per operation (``"METHOD path"``), all optional
QUERY: dict[str, dict[str, Schema]] = {
    "GET /workflows": _PAGE,
    "GET /jobs": {"workflow_id": INT, "status": STATUS, "upstream_job_id": INT,
                  "active_compute_node_id": INT, "include_relationships": BOOL, **_PAGE},
    "GET /results": {"workflow_id": INT, "job_id": INT, "run_id": INT, "return_code": INT,
                     "status": STATUS, "all_runs": BOOL, **_PAGE},
    "GET /events": {"workflow_id": INT, "after_timestamp": INT, **_PAGE},
    "GET /workflows/{id}/job_dependencies": _PAGE,
    "POST /workflows/{id}/claim_next_jobs": {"limit": LIMIT, "compute_node_id": INT},
    "POST /workflows/{id}/initialize_jobs": {"only_uninitialized": BOOL},
    "POST /workflows/{id}/reset_status": {"force": BOOL},
    "POST /workflows/{id}/reset_job_status": {"failed_only": BOOL},
}

#: path parameters that are not ids (any other is an INTEGER id)
PATH: dict[str, Schema] = {
    "status": {"type": "string", "enum": ["completed", "failed", "canceled", "terminated",
                                          "pending_failed"]},
    "limit": LIMIT,
}

#: the JSON body (a components/schemas name) per operation; each is required
BODY: dict[str, str] = {
    "POST /workflows": "WorkflowModel",
    "PUT /workflows/{id}/status": "WorkflowStatusModel",
    "POST /workflows/{id}/claim_jobs_based_on_resources/{limit}": "ComputeNodesResources",
    "POST /workflows/{id}/batch_start_jobs": "BatchStartJobsRequest",
    "POST /workflows/{id}/batch_complete_jobs": "BatchCompleteJobsRequest",
    "POST /resource_requirements": "ResourceRequirementsModel",
    "POST /bulk_jobs": "JobsModel",
    "POST /jobs": "JobModel",
    "POST /jobs/{id}/complete_job/{status}/{run_id}": "ResultModel",
    "POST /compute_nodes": "ComputeNodeModel",
    "PUT /compute_nodes/{id}": "ComputeNodeUpdate",
    "POST /events": "EventModel",
    "POST /workflows/create_whole": "WholeWorkflowRequest",
}

#: the 200 answer's schema per operation, where it is one of the models (else any JSON)
ANSWER: dict[str, Schema] = {
    "POST /workflows": _ref("WorkflowModel"),
    "GET /workflows": _list_of(_ref("WorkflowModel")),
    "GET /workflows/{id}": _ref("WorkflowModel"),
    "POST /resource_requirements": _ref("ResourceRequirementsModel"),
    "GET /resource_requirements/{id}": _ref("ResourceRequirementsModel"),
    "POST /bulk_jobs": _object({"jobs": {"type": "array", "items": _ref("JobModel")}}),
    "POST /jobs": _ref("JobModel"),
    "GET /jobs": _list_of(_ref("JobModel")),
    "GET /jobs/{id}": _ref("JobModel"),
    "PUT /jobs/{id}/start_job/{run_id}/{compute_node_id}": _ref("JobModel"),
    "POST /jobs/{id}/complete_job/{status}/{run_id}": _ref("JobModel"),
    "POST /workflows/{id}/claim_next_jobs": _object(
        {"jobs": {"type": "array", "items": _ref("JobModel")}}),
    "POST /compute_nodes": _ref("ComputeNodeModel"),
    "GET /compute_nodes/{id}": _ref("ComputeNodeModel"),
    "PUT /compute_nodes/{id}": _ref("ComputeNodeModel"),
    "POST /compute_nodes/{id}/heartbeat": _ref("LeaseAnswer"),
    "GET /results": _list_of(_ref("ResultModel")),
    "GET /workflows/{id}/actions": {"type": "array"},
    "GET /workflows/{id}/actions/pending": {"type": "array"},
}
