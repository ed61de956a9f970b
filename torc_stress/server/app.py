"""HTTP routes under /torc-service/v1 (Starlette). Handlers parse, enqueue or read, and answer."""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from torc_stress.server.hot_routes import HotRoutes
from torc_stress.server.http_io import (
    PREFIX,
    error_response,
)
from torc_stress.server.routes_jobs import JobRoutes
from torc_stress.server.routes_nodes import NodeRoutes
from torc_stress.server.routes_system import SystemRoutes
from torc_stress.server.routes_workflows import WorkflowRoutes

logger = logging.getLogger(__name__)

__all__ = ["PREFIX", "Api", "TorcApp", "build_app", "error_response"]


class Api(SystemRoutes, WorkflowRoutes, JobRoutes, NodeRoutes):
    """The server's routes, bound to its state, writer and read pool."""

    # -- routes ---------------------------------------------------------------------------------
    def _register(self) -> None:  # noqa: PLR0915 - a flat route table reads best
        add = self.add
        add("GET", "/ping", self.ping, "liveness")
        add("GET", "/version", self.version, "server version")
        add("GET", "/metrics", self.get_metrics, "metrics document (torc-stress extension)")
        add("GET", "/openapi.json", self.openapi, "this server's OpenAPI document")
        add("POST", "/workflows", self.create_workflow, "create a workflow")
        add("POST", "/workflows/create_whole", self.create_workflow_whole,
            "create a workflow with its requirements and jobs in one transaction (extension)")
        add("GET", "/workflows", self.list_workflows, "list workflows")
        add("GET", "/workflows/{id}", self.get_workflow, "get a workflow")
        add("DELETE", "/workflows/{id}", self.delete_workflow, "delete a workflow")
        add("GET", "/workflows/{id}/status", self.get_workflow_status, "workflow status summary")
        add("PUT", "/workflows/{id}/status", self.put_workflow_status, "set run_id/is_canceled")
        add("GET", "/workflows/{id}/is_complete", self.is_complete, "is the workflow complete")
        add(
            "GET",
            "/workflows/{id}/is_uninitialized",
            self.is_uninitialized,
            "all jobs uninitialized",
        )
        add("GET", "/workflows/{id}/progress", self.progress, "counts per status and depth")
        add("POST", "/workflows/{id}/initialize_jobs", self.initialize_jobs, "initialize jobs")
        add("POST", "/workflows/{id}/claim_next_jobs", self.claim_next_jobs, "claim ready jobs")
        add(
            "POST",
            "/workflows/{id}/claim_jobs_based_on_resources/{limit}",
            self.claim_by_resources,
            "claim ready jobs that fit the resources",
        )
        add(
            "POST",
            "/workflows/{id}/batch_start_jobs",
            self.batch_start_jobs,
            "start several claimed jobs (extension)",
        )
        add(
            "POST",
            "/workflows/{id}/batch_complete_jobs",
            self.batch_complete_jobs,
            "complete several jobs",
        )
        add("PUT", "/workflows/{id}/cancel", self.cancel_workflow, "cancel a workflow")
        add("POST", "/workflows/{id}/reset_status", self.reset_status, "reset workflow status")
        add("POST", "/workflows/{id}/reset_job_status", self.reset_job_status, "reset job statuses")
        add("GET", "/workflows/{id}/job_dependencies", self.job_dependencies, "list dependencies")
        add("GET", "/workflows/{id}/actions", self.actions, "workflow actions (none)")
        add("GET", "/workflows/{id}/actions/pending", self.actions, "pending actions (none)")
        add("GET", "/workflows/{id}/required_existing_files", self.empty_files, "none")
        add("GET", "/workflows/{id}/missing_user_data", self.empty_user_data, "none")
        add("POST", "/resource_requirements", self.create_rr, "create resource requirements")
        add("GET", "/resource_requirements/{id}", self.get_rr, "get resource requirements")
        add("POST", "/bulk_jobs", self.create_jobs, "create jobs")
        add("POST", "/jobs", self.create_job, "create a job")
        add("GET", "/jobs", self.list_jobs, "list jobs")
        add("GET", "/jobs/{id}", self.get_job, "get a job")
        add("PUT", "/jobs/{id}/start_job/{run_id}/{compute_node_id}", self.start_job, "start a job")
        add(
            "POST", "/jobs/{id}/complete_job/{status}/{run_id}", self.complete_job, "complete a job"
        )
        add("POST", "/compute_nodes", self.create_compute_node, "register a compute node")
        add("GET", "/compute_nodes/{id}", self.get_compute_node, "get a compute node")
        add("PUT", "/compute_nodes/{id}", self.update_compute_node, "update a compute node")
        add("POST", "/compute_nodes/{id}/heartbeat", self.heartbeat,
            "renew a compute node's lease (extension)")
        add("GET", "/results", self.list_results, "list results")
        add("GET", "/events", self.list_events, "list events")
        add("POST", "/events", self.create_event, "create an event")


async def _http_exception(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", str(exc))
    if status == 404:
        detail = f"no route {request.method} {request.url.path}"
    return error_response(status, str(detail))


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error outside a route", exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}")


class TorcApp(Starlette):
    """The Starlette application, with the per-job routes answered before its middleware."""

    def __init__(self, api: Api, lifespan: Any = None) -> None:
        super().__init__(
            routes=api.starlette_routes(),
            exception_handlers={HTTPException: _http_exception, Exception: _unexpected},
            lifespan=lifespan,
        )
        self.hot = HotRoutes(api)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serves a hot route directly, anything else through Starlette."""
        hit = self.hot.match(scope) if scope["type"] == "http" else None
        if hit is not None:
            await self.hot.serve(hit[0], hit[1], scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def build_app(api: Api, lifespan: Any = None) -> TorcApp:
    """The Starlette application serving ``api``'s routes."""
    return TorcApp(api, lifespan)
