"""Job routes: dependencies, resource requirements, jobs, start, complete (Starlette handlers)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from torc_stress.errors import ApiError, NotFoundError
from torc_stress.server import ops
from torc_stress.server.api_base import ApiBase
from torc_stress.server.http_io import (
    JsonResponse,
    json_body,
    json_object,
    page_params,
    paged,
    path_int,
    query_bool,
    query_int,
    status_param,
    where_clause,
)
from torc_stress.server.store import (
    JOB_COLUMNS,
    job_row_to_model,
)


class JobRoutes(ApiBase):
    """Job routes: dependencies, resource requirements, jobs, start, complete."""

    async def job_dependencies(self, request: Request) -> Response:
        wid = path_int(request, "id")
        self.snapshot(wid)
        offset, limit = page_params(request)

        def run(conn: Any) -> dict[str, Any]:
            total = conn.execute(
                "SELECT COUNT(*) FROM job_depends_on WHERE workflow_id = ?", (wid,)
            ).fetchone()[0]
            rows = conn.execute(
                "SELECT d.job_id, j.name, d.depends_on_job_id, u.name, d.workflow_id "
                "FROM job_depends_on d JOIN job j ON j.id = d.job_id "
                "JOIN job u ON u.id = d.depends_on_job_id WHERE d.workflow_id = ? "
                "ORDER BY d.job_id, d.depends_on_job_id LIMIT ? OFFSET ?",
                (wid, limit, offset),
            ).fetchall()
            items = [
                {
                    "job_id": r[0],
                    "job_name": r[1],
                    "depends_on_job_id": r[2],
                    "depends_on_job_name": r[3],
                    "workflow_id": r[4],
                }
                for r in rows
            ]
            return paged(items, offset, total)

        return JsonResponse(await self.read(run))

    async def actions(self, request: Request) -> Response:
        self.snapshot(path_int(request, "id"))
        return JsonResponse([])

    async def empty_files(self, request: Request) -> Response:
        self.snapshot(path_int(request, "id"))
        return JsonResponse({"files": []})

    async def empty_user_data(self, request: Request) -> Response:
        self.snapshot(path_int(request, "id"))
        return JsonResponse({"user_data": []})

    async def create_rr(self, request: Request) -> Response:
        body = await json_object(request)
        return JsonResponse(
            await self.write("create_resource_requirements", ops.create_resource_requirements, body)
        )

    async def get_rr(self, request: Request) -> Response:
        rr_id = path_int(request, "id")
        model = self.state.rr_models.get(rr_id)
        if model is None:
            raise NotFoundError(404, f"resource requirements {rr_id} do not exist")
        return JsonResponse(model)

    async def create_jobs(self, request: Request) -> Response:
        body = await json_object(request)
        if "jobs" not in body:
            raise ApiError(422, "missing required field 'jobs'")
        return JsonResponse(await self.write("create_jobs", ops.create_jobs, body["jobs"]))

    async def create_job(self, request: Request) -> Response:
        body = await json_object(request)
        result = await self.write("create_jobs", ops.create_jobs, [body])
        return JsonResponse(result["jobs"][0])

    async def list_jobs(self, request: Request) -> Response:
        wid = query_int(request, "workflow_id")
        status_raw = request.query_params.get("status")
        status = status_param(status_raw, "status") if status_raw else None
        upstream = query_int(request, "upstream_job_id")
        node = query_int(request, "active_compute_node_id")
        offset, limit = page_params(request)
        include = query_bool(request, "include_relationships", False)
        if wid is not None:
            self.snapshot(wid)

        def run(conn: Any) -> dict[str, Any]:
            clause, args = where_clause(
                ("workflow_id = ?", wid),
                ("status = ?", status),
                ("id IN (SELECT job_id FROM job_depends_on WHERE depends_on_job_id = ?)", upstream),
                ("active_compute_node_id = ?", node),
            )
            total = conn.execute(f"SELECT COUNT(*) FROM job {clause}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM job {clause} ORDER BY id LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            items = [job_row_to_model(r) for r in rows]
            if include and items:
                deps: dict[int, list[int]] = {}
                ids = [m["id"] for m in items]
                for j, up in conn.execute(
                    f"SELECT job_id, depends_on_job_id FROM job_depends_on WHERE job_id IN "
                    f"({','.join('?' * len(ids))}) ORDER BY depends_on_job_id",
                    ids,
                ):
                    deps.setdefault(j, []).append(up)
                for m in items:
                    if m["id"] in deps:
                        m["depends_on_job_ids"] = deps[m["id"]]
            return paged(items, offset, total)

        return JsonResponse(await self.read(run))

    async def get_job(self, request: Request) -> Response:
        jid = path_int(request, "id")

        def run(conn: Any) -> dict[str, Any]:
            row = conn.execute(f"SELECT {JOB_COLUMNS} FROM job WHERE id = ?", (jid,)).fetchone()
            if row is None:
                raise NotFoundError(404, f"job {jid} does not exist")
            model = job_row_to_model(row)
            ups = [
                r[0]
                for r in conn.execute(
                    "SELECT depends_on_job_id FROM job_depends_on WHERE job_id = ? ORDER BY 1",
                    (jid,),
                )
            ]
            if ups:
                model["depends_on_job_ids"] = ups
            node = conn.execute(
                "SELECT active_compute_node_id FROM job WHERE id = ?", (jid,)
            ).fetchone()
            if node and node[0] is not None:
                model["compute_node_id"] = node[0]
            return model

        return JsonResponse(await self.read(run))

    async def start_job(self, request: Request) -> Response:
        jid = path_int(request, "id")
        run_id = path_int(request, "run_id")
        node = path_int(request, "compute_node_id")
        return JsonResponse(await self.write("start_job", ops.start_job, jid, run_id, node))

    async def complete_job(self, request: Request) -> Response:
        jid = path_int(request, "id")
        status = status_param(request.path_params["status"], "status")
        run_id = path_int(request, "run_id")
        body = ops.validate_result(await json_body(request))
        return JsonResponse(
            await self.write("complete_job", ops.complete_job, jid, status, run_id, body)
        )
