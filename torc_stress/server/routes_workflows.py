"""Workflow routes: create, list, status, claims, cancel, reset (Starlette handlers)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from torc_stress.errors import ApiError
from torc_stress.server import ops
from torc_stress.server.api_base import ApiBase
from torc_stress.server.http_io import (
    MAX_LIMIT,
    JsonResponse,
    json_body,
    json_object,
    page_params,
    paged,
    path_int,
    query_bool,
    query_int,
)
from torc_stress.server.store import (
    WORKFLOW_COLUMNS,
    workflow_row_to_model,
)
from torc_stress.statuses import JobStatus


class WorkflowRoutes(ApiBase):
    """Workflow routes: create, list, status, claims, cancel, reset."""

    async def create_workflow(self, request: Request) -> Response:
        body = await json_object(request)
        return JsonResponse(await self.write("create_workflow", ops.create_workflow, body))

    async def create_workflow_whole(self, request: Request) -> Response:
        """Extension: a whole workflow in one transaction (see ops_create)."""
        body = await json_object(request)
        return JsonResponse(
            await self.write("create_workflow_whole", ops.create_workflow_whole, body)
        )

    async def list_workflows(self, request: Request) -> Response:
        offset, limit = page_params(request)

        def run(conn: Any) -> dict[str, Any]:
            total = conn.execute("SELECT COUNT(*) FROM workflow").fetchone()[0]
            rows = conn.execute(
                f"SELECT {WORKFLOW_COLUMNS} FROM workflow w "
                "JOIN workflow_status s ON s.id = w.status_id "
                "ORDER BY w.id LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
            return paged([workflow_row_to_model(r) for r in rows], offset, total)

        return JsonResponse(await self.read(run))

    async def get_workflow(self, request: Request) -> Response:
        wid = path_int(request, "id")
        return JsonResponse(await self.read(ops._workflow_model, wid))

    async def delete_workflow(self, request: Request) -> Response:
        wid = path_int(request, "id")
        return JsonResponse(await self.write("delete_workflow", ops.delete_workflow, wid))

    async def get_workflow_status(self, request: Request) -> Response:
        wid = path_int(request, "id")
        snap = self.snapshot(wid)
        model = await self.read(ops._workflow_model, wid)

        def nodes(conn: Any) -> tuple[int, float]:
            active = conn.execute(
                "SELECT COUNT(*) FROM compute_node WHERE workflow_id = ? AND is_active = 1", (wid,)
            ).fetchone()[0]
            exec_min = conn.execute(
                "SELECT COALESCE(SUM(exec_time_minutes), 0) FROM result WHERE workflow_id = ?",
                (wid,),
            ).fetchone()[0]
            return active, exec_min

        active, exec_min = await self.read(nodes)
        return JsonResponse(
            {
                "workflow_id": wid,
                "workflow_name": model["name"],
                "workflow_user": model["user"],
                "is_canceled": snap.is_canceled,
                "is_complete": snap.is_complete,
                "total_jobs": snap.total,
                "jobs_by_status": {s.wire: snap.counts[s] for s in JobStatus},
                "active_compute_nodes": active,
                "active_scheduled_nodes": 0,
                "pending_scheduled_nodes": 0,
                "total_exec_time_minutes": exec_min,
                "id": wid,
                "run_id": snap.run_id,
                "is_archived": False,
                "has_detected_need_to_run_completion_script": False,
            }
        )

    async def put_workflow_status(self, request: Request) -> Response:
        wid = path_int(request, "id")
        body = await json_object(request)
        return JsonResponse(
            await self.write("update_workflow_status", ops.update_workflow_status, wid, body)
        )

    async def is_complete(self, request: Request) -> Response:
        snap = self.snapshot(path_int(request, "id"))
        return JsonResponse(
            {
                "is_complete": snap.is_complete,
                "is_canceled": snap.is_canceled,
                "needs_to_run_completion_script": False,
            }
        )

    async def is_uninitialized(self, request: Request) -> Response:
        snap = self.snapshot(path_int(request, "id"))
        return JsonResponse({"is_uninitialized": snap.is_uninitialized})

    async def progress(self, request: Request) -> Response:
        snap = self.snapshot(path_int(request, "id"))

        def named(counts: tuple[int, ...]) -> dict[str, int]:
            return {JobStatus(i).wire: n for i, n in enumerate(counts) if n}

        return JsonResponse(
            {
                "workflow_id": snap.workflow_id,
                "total": snap.total,
                "counts": named(snap.counts),
                "is_complete": snap.is_complete,
                "is_canceled": snap.is_canceled,
                "by_depth": [
                    {"depth": d, "total": t, "counts": named(c)} for d, t, c in snap.by_depth
                ],
            }
        )

    async def initialize_jobs(self, request: Request) -> Response:
        wid = path_int(request, "id")
        only = query_bool(request, "only_uninitialized", False)
        await json_body(request, required=False)
        return JsonResponse(await self.write("initialize_jobs", ops.initialize_jobs, wid, only))

    async def claim_next_jobs(self, request: Request) -> Response:
        wid = path_int(request, "id")
        limit = query_int(request, "limit", 10)
        assert limit is not None
        if limit < 0 or limit > MAX_LIMIT:
            raise ApiError(400, f"limit must be between 0 and {MAX_LIMIT}")
        return JsonResponse(await self.write("claim", ops.claim_next_jobs, wid, limit))

    async def claim_by_resources(self, request: Request) -> Response:
        wid = path_int(request, "id")
        limit = path_int(request, "limit")
        if limit < 0 or limit > MAX_LIMIT:
            raise ApiError(400, f"limit must be between 0 and {MAX_LIMIT}")
        body = await json_object(request)
        return JsonResponse(
            await self.write("claim", ops.claim_jobs_based_on_resources, wid, limit, body)
        )

    async def batch_complete_jobs(self, request: Request) -> Response:
        wid = path_int(request, "id")
        body = await json_object(request)
        entries = body.get("completions")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ApiError(422, "'completions' must be a list of job completion entries")
        return JsonResponse(
            await self.write("batch_complete_jobs", ops.batch_complete_jobs, wid, entries)
        )

    async def batch_start_jobs(self, request: Request) -> Response:
        wid = path_int(request, "id")
        run_id, node_id, job_ids = ops.validate_batch_start(await json_object(request))
        return JsonResponse(
            await self.write(
                "batch_start_jobs", ops.batch_start_jobs, wid, run_id, node_id, job_ids
            )
        )

    async def cancel_workflow(self, request: Request) -> Response:
        wid = path_int(request, "id")
        return JsonResponse(await self.write("cancel_workflow", ops.cancel_workflow, wid))

    async def reset_status(self, request: Request) -> Response:
        wid = path_int(request, "id")
        force = query_bool(request, "force", False)
        return JsonResponse(await self.write("reset_status", ops.reset_workflow_status, wid, force))

    async def reset_job_status(self, request: Request) -> Response:
        wid = path_int(request, "id")
        failed_only = query_bool(request, "failed_only", False)
        return JsonResponse(
            await self.write("reset_job_status", ops.reset_job_status, wid, failed_only)
        )
