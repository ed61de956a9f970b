"""Compute node, result and event routes (Starlette handlers)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from torc_stress.server import leases, ops
from torc_stress.server.api_base import ApiBase
from torc_stress.server.http_io import (
    JsonResponse,
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
    RESULT_COLUMNS,
    result_row_to_model,
)


class NodeRoutes(ApiBase):
    """Compute node, result and event routes."""

    async def create_compute_node(self, request: Request) -> Response:
        body = await json_object(request)
        return JsonResponse(await self.write("create_compute_node", ops.create_compute_node, body))

    async def get_compute_node(self, request: Request) -> Response:
        return JsonResponse(await self.read(ops.get_compute_node, path_int(request, "id")))

    async def update_compute_node(self, request: Request) -> Response:
        nid = path_int(request, "id")
        body = await json_object(request)
        return JsonResponse(
            await self.write("update_compute_node", ops.update_compute_node, nid, body)
        )

    async def heartbeat(self, request: Request) -> Response:
        """Extension: renews a compute node's lease (the first heartbeat leases the node)."""
        nid = path_int(request, "id")
        answer = leases.heartbeat_answer(self.state, nid)
        if answer is None:
            answer = await self.write("lease_node", leases.lease_node, nid)
        return JsonResponse(answer)

    async def list_results(self, request: Request) -> Response:
        wid = query_int(request, "workflow_id")
        jid = query_int(request, "job_id")
        run_id = query_int(request, "run_id")
        rc = query_int(request, "return_code")
        status_raw = request.query_params.get("status")
        status = status_param(status_raw, "status") if status_raw else None
        all_runs = query_bool(request, "all_runs", False)
        offset, limit = page_params(request)

        def run(conn: Any) -> dict[str, Any]:
            latest_only = True if not all_runs and run_id is None else None
            clause, args = where_clause(
                ("r.workflow_id = ?", wid),
                ("r.job_id = ?", jid),
                ("r.run_id = ?", run_id),
                ("r.return_code = ?", rc),
                ("r.status = ?", status),
                ("r.id IN (SELECT result_id FROM workflow_result)", latest_only),
            )
            total = conn.execute(f"SELECT COUNT(*) FROM result r {clause}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT {RESULT_COLUMNS} FROM result r JOIN job j ON j.id = r.job_id "
                f"{clause} ORDER BY r.id LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            return paged([result_row_to_model(r) for r in rows], offset, total)

        return JsonResponse(await self.read(run))

    async def list_events(self, request: Request) -> Response:
        wid = query_int(request, "workflow_id")
        after = query_int(request, "after_timestamp")
        offset, limit = page_params(request)

        def run(conn: Any) -> dict[str, Any]:
            clause, args = where_clause(("workflow_id = ?", wid), ("timestamp > ?", after))
            total = conn.execute(f"SELECT COUNT(*) FROM event {clause}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT id, workflow_id, timestamp, data FROM event {clause} "
                "ORDER BY id LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            items = [
                {
                    "id": r[0],
                    "workflow_id": r[1],
                    "timestamp": r[2],
                    "data": orjson.loads(r[3]) if r[3] else None,
                }
                for r in rows
            ]
            return paged(items, offset, total)

        return JsonResponse(await self.read(run))

    async def create_event(self, request: Request) -> Response:
        body = await json_object(request)
        return JsonResponse(await self.write("create_event", ops.create_event, body))
