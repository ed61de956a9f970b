"""HTTP routes under /torc-service/v1 (Starlette). Handlers parse, enqueue or read, and answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from torc_stress import __version__
from torc_stress.errors import ApiError, NotFoundError
from torc_stress.server import ops
from torc_stress.server.metrics import Metrics
from torc_stress.server.state import ServerState
from torc_stress.server.store import (
    JOB_COLUMNS,
    RESULT_COLUMNS,
    WORKFLOW_COLUMNS,
    ReadPool,
    job_row_to_model,
    result_row_to_model,
    workflow_row_to_model,
)
from torc_stress.server.writer import Writer
from torc_stress.statuses import JobStatus

logger = logging.getLogger(__name__)

PREFIX = "/torc-service/v1"
MAX_LIMIT = 10000
Handler = Callable[[Request], Awaitable[Response]]


class JsonResponse(Response):
    """orjson-encoded JSON with ``None`` fields of top-level and nested models omitted."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Encodes ``content`` with nulls dropped."""
        return orjson.dumps(_drop_nulls(content))


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def error_response(status: int, message: str) -> Response:
    """The JSON error body torc clients understand."""
    return JsonResponse(
        {"error": {"status": status, "message": message}, "errorMessage": message, "code": status},
        status_code=status,
    )


def _api_message(exc: ApiError) -> str:
    text = str(exc)
    prefix = f"HTTP {exc.status}: "
    return text.split(prefix, 1)[1] if prefix in text else text


# -- request parsing helpers --------------------------------------------------------------------
def path_int(request: Request, name: str) -> int:
    """An integer path parameter, or 400."""
    raw = request.path_params[name]
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"path parameter {name!r} must be an integer, got {raw!r}") from None


def query_int(request: Request, name: str, default: int | None = None) -> int | None:
    """An integer query parameter, or 400."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r} must be an integer, got {raw!r}") from None


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    """A boolean query parameter (true/false/1/0), or 400."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ApiError(400, f"query parameter {name!r} must be true or false, got {raw!r}")


def status_param(raw: str, what: str) -> int:
    """A job status wire name, or 400."""
    try:
        return int(JobStatus.from_wire(raw))
    except ValueError as exc:
        raise ApiError(400, f"{what}: {exc}") from None


async def json_body(request: Request, *, required: bool = True) -> Any:
    """The parsed JSON body; 400 if malformed, ``{}`` if empty and not required."""
    raw = await request.body()
    if not raw.strip():
        if required:
            raise ApiError(400, "the request needs a JSON body")
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None


async def json_object(request: Request, *, required: bool = True) -> dict[str, Any]:
    """A JSON object body, or 400/422."""
    body = await json_body(request, required=required)
    if not isinstance(body, dict):
        raise ApiError(422, "the JSON body must be an object")
    return body


def paged(items: list[Any], offset: int, total: int) -> dict[str, Any]:
    """torc's list envelope."""
    return {
        "items": items,
        "offset": offset,
        "max_limit": MAX_LIMIT,
        "count": len(items),
        "total_count": total,
        "has_more": offset + len(items) < total,
    }


def page_params(request: Request) -> tuple[int, int]:
    """``offset`` and ``limit`` (default and maximum 10000)."""
    offset = query_int(request, "offset", 0) or 0
    limit = query_int(request, "limit", MAX_LIMIT)
    assert limit is not None
    if offset < 0 or limit < 0:
        raise ApiError(400, "offset and limit must be >= 0")
    if limit > MAX_LIMIT:
        raise ApiError(422, f"limit must be <= {MAX_LIMIT}")
    return offset, limit


class Api:
    """The server's routes, bound to its state, writer and read pool."""

    def __init__(
        self, state: ServerState, writer: Writer, reads: ReadPool, metrics: Metrics
    ) -> None:
        self.state = state
        self.writer = writer
        self.reads = reads
        self.metrics = metrics
        self.routes: list[tuple[str, str, Handler, str]] = []
        self._register()

    # -- plumbing -------------------------------------------------------------------------------
    def _wrap(self, method: str, path: str, fn: Handler) -> Handler:
        key = f"{method} {path}"
        record = self.metrics.record_request
        debug = logger.isEnabledFor(logging.DEBUG)

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await fn(request)
            except ApiError as exc:
                response = error_response(exc.status, _api_message(exc))
            except Exception as exc:  # noqa: BLE001 - the catch-all: a logged 500 JSON body
                logger.exception("unexpected error", extra={"torc_kv": {"route": key}})
                response = error_response(500, f"internal error: {type(exc).__name__}: {exc}")
            elapsed = (time.perf_counter() - started) * 1000
            record(key, elapsed, response.status_code >= 400)
            if debug:
                logger.debug(
                    "request",
                    extra={
                        "torc_kv": {"route": key, "status": response.status_code, "ms": elapsed}
                    },
                )
            return response

        return endpoint

    def add(self, method: str, path: str, fn: Handler, summary: str) -> None:
        """Registers one route."""
        self.routes.append((method, path, fn, summary))

    def starlette_routes(self) -> list[Route]:
        """The routes as Starlette objects (one Route per path, several methods)."""
        by_path: dict[str, dict[str, Handler]] = {}
        for method, path, fn, _ in self.routes:
            by_path.setdefault(path, {})[method] = self._wrap(method, path, fn)
        out = []
        for path, methods in by_path.items():
            if len(methods) == 1:
                ((method, handler),) = methods.items()
                out.append(Route(PREFIX + path, handler, methods=[method]))
            else:
                out.append(Route(PREFIX + path, _dispatch(methods), methods=list(methods)))
        return out

    async def write(self, kind: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs a write op through the single writer and waits for its commit."""
        return await self.writer.submit(kind, fn, self.state, *args)

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs a read on a per-thread read-only connection in the thread pool."""
        reads = self.reads
        return await run_in_threadpool(lambda: fn(reads.conn(), *args))

    def snapshot(self, workflow_id: int) -> Any:
        """The committed in-memory figures of a workflow, or 404."""
        snap = self.state.snapshot(workflow_id)
        if snap is None:
            raise NotFoundError(404, f"workflow {workflow_id} does not exist")
        return snap

    # -- routes ---------------------------------------------------------------------------------
    def _register(self) -> None:  # noqa: PLR0915 - a flat route table reads best
        add = self.add
        add("GET", "/ping", self.ping, "liveness")
        add("GET", "/version", self.version, "server version")
        add("GET", "/metrics", self.get_metrics, "metrics document (torc-stress extension)")
        add("GET", "/openapi.json", self.openapi, "this server's OpenAPI document")
        add("POST", "/workflows", self.create_workflow, "create a workflow")
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
        add("GET", "/results", self.list_results, "list results")
        add("GET", "/events", self.list_events, "list events")
        add("POST", "/events", self.create_event, "create an event")

    async def ping(self, request: Request) -> Response:
        return JsonResponse({"status": "ok"})

    async def version(self, request: Request) -> Response:
        return JsonResponse(
            {"version": __version__, "api_version": "0.21.0", "git_hash": "torc-stress"}
        )

    async def get_metrics(self, request: Request) -> Response:
        return JsonResponse(self.metrics.document())

    async def openapi(self, request: Request) -> Response:
        from torc_stress.server.openapi import build_document

        return JsonResponse(build_document(self.routes, PREFIX))

    async def create_workflow(self, request: Request) -> Response:
        body = await json_object(request)
        return JsonResponse(await self.write("create_workflow", ops.create_workflow, body))

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
        offset, limit = page_params(request)
        include = query_bool(request, "include_relationships", False)
        if wid is not None:
            self.snapshot(wid)

        def run(conn: Any) -> dict[str, Any]:
            where, args = [], []
            if wid is not None:
                where.append("workflow_id = ?")
                args.append(wid)
            if status is not None:
                where.append("status = ?")
                args.append(status)
            if upstream is not None:
                where.append(
                    "id IN (SELECT job_id FROM job_depends_on WHERE depends_on_job_id = ?)"
                )
                args.append(upstream)
            clause = f"WHERE {' AND '.join(where)}" if where else ""
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
                "SELECT active_compute_node_id FROM job_internal WHERE job_id = ?", (jid,)
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
            where, args = [], []
            for column, value in (
                ("r.workflow_id", wid),
                ("r.job_id", jid),
                ("r.run_id", run_id),
                ("r.return_code", rc),
                ("r.status", status),
            ):
                if value is not None:
                    where.append(f"{column} = ?")
                    args.append(value)
            if not all_runs and run_id is None:
                where.append("r.id IN (SELECT result_id FROM workflow_result)")
            clause = f"WHERE {' AND '.join(where)}" if where else ""
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
            where, args = [], []
            if wid is not None:
                where.append("workflow_id = ?")
                args.append(wid)
            if after is not None:
                where.append("timestamp > ?")
                args.append(after)
            clause = f"WHERE {' AND '.join(where)}" if where else ""
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


_JSON_HEADER = (b"content-type", b"application/json")


def _int_part(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"path parameter {name!r} must be an integer, got {raw!r}") from None


class HotRoutes:
    """The per-job routes, served as a bare ASGI callable ahead of Starlette's middleware.

    A worker sends 2-3 requests per job (its share of a claim, ``start_job``, ``complete_job``,
    now and then ``is_complete``). Matching ~40 route regexes, building Request/Response objects
    and walking the middleware stack cost more server CPU than the work itself, so
    :class:`TorcApp` asks :meth:`match` first: these routes are matched by splitting the path
    and answered with one raw ``http.response.start`` and body. Behaviour, error bodies and
    metrics keys are those of the Starlette routes; everything else goes to Starlette.
    """

    def __init__(self, api: Api) -> None:
        self.api = api
        self._prefix = PREFIX + "/"
        self._cut = len(self._prefix)
        self._debug = logger.isEnabledFor(logging.DEBUG)
        requests = api.metrics.request_stats
        self._routes = {
            name: (key, requests(key), getattr(self, handler))
            for name, key, handler in (
                ("complete", "POST /jobs/{id}/complete_job/{status}/{run_id}", "_complete_job"),
                ("start", "PUT /jobs/{id}/start_job/{run_id}/{compute_node_id}", "_start_job"),
                ("claim", "POST /workflows/{id}/claim_next_jobs", "_claim_next_jobs"),
                ("is_complete", "GET /workflows/{id}/is_complete", "_is_complete"),
                ("batch", "POST /workflows/{id}/batch_complete_jobs", "_batch_complete_jobs"),
            )
        }

    def match(self, scope: Any) -> tuple[tuple[str, Any, Any], list[str]] | None:
        """The hot route a request is for (with its path split), or None."""
        path = scope["path"]
        if not path.startswith(self._prefix) or scope["type"] != "http":
            return None
        parts = path[self._cut :].split("/")
        route = self._match(scope["method"], parts)
        return None if route is None else (route, parts)

    def _match(self, method: str, parts: list[str]) -> tuple[str, Any, Any] | None:
        n = len(parts)
        if n == 5 and parts[0] == "jobs" and all(parts):
            if parts[2] == "complete_job" and method == "POST":
                return self._routes["complete"]
            if parts[2] == "start_job" and method == "PUT":
                return self._routes["start"]
        elif n == 3 and parts[0] == "workflows" and parts[1]:
            action = parts[2]
            if action == "claim_next_jobs" and method == "POST":
                return self._routes["claim"]
            if action == "is_complete" and method == "GET":
                return self._routes["is_complete"]
            if action == "batch_complete_jobs" and method == "POST":
                return self._routes["batch"]
        return None

    async def serve(
        self, route: tuple[str, Any, Any], parts: list[str], scope: Any, receive: Any, send: Any
    ) -> None:
        """Answers one hot-route request (errors become torc's JSON error bodies)."""
        key, stats, handler = route
        started = perf_counter()
        status = 200
        try:
            payload = await handler(parts, scope, receive)
        except ApiError as exc:
            status = exc.status
            message = _api_message(exc)
            payload = {
                "error": {"status": status, "message": message},
                "errorMessage": message,
                "code": status,
            }
        except Exception as exc:  # noqa: BLE001 - the catch-all: a logged 500 JSON body
            logger.exception("unexpected error", extra={"torc_kv": {"route": key}})
            status = 500
            message = f"internal error: {type(exc).__name__}: {exc}"
            payload = {
                "error": {"status": status, "message": message},
                "errorMessage": message,
                "code": status,
            }
        body = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [_JSON_HEADER, (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
        elapsed = (perf_counter() - started) * 1000
        stats.record(elapsed, status >= 400)
        if self._debug:
            logger.debug(
                "request", extra={"torc_kv": {"route": key, "status": status, "ms": elapsed}}
            )

    @staticmethod
    async def _body(receive: Any) -> bytes:
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        chunks = [body]
        while message.get("more_body", False):
            message = await receive()
            chunks.append(message.get("body", b""))
        return b"".join(chunks)

    async def _json(self, receive: Any) -> Any:
        raw = await self._body(receive)
        if not raw.strip():
            raise ApiError(400, "the request needs a JSON body")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"malformed JSON body: {exc}") from None

    async def _start_job(self, parts: list[str], scope: Any, receive: Any) -> Any:
        jid = _int_part(parts[1], "id")
        run_id = _int_part(parts[3], "run_id")
        node = _int_part(parts[4], "compute_node_id")
        api = self.api
        return await api.writer.submit("start_job", ops.start_job, api.state, jid, run_id, node)

    async def _complete_job(self, parts: list[str], scope: Any, receive: Any) -> Any:
        jid = _int_part(parts[1], "id")
        status = status_param(parts[3], "status")
        run_id = _int_part(parts[4], "run_id")
        body = ops.validate_result(await self._json(receive))
        api = self.api
        return await api.writer.submit(
            "complete_job", ops.complete_job, api.state, jid, status, run_id, body
        )

    async def _claim_next_jobs(self, parts: list[str], scope: Any, receive: Any) -> Any:
        wid = _int_part(parts[1], "id")
        limit = 10
        query = scope.get("query_string", b"")
        if query:
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                if name == "limit" and value != "":
                    try:
                        limit = int(value)
                    except ValueError:
                        raise ApiError(
                            400, f"query parameter 'limit' must be an integer, got {value!r}"
                        ) from None
        if limit < 0 or limit > MAX_LIMIT:
            raise ApiError(400, f"limit must be between 0 and {MAX_LIMIT}")
        api = self.api
        wf = api.state.workflows.get(wid)
        if wf is not None and not wf.ready:
            # nothing ready: answer without a transaction (the writer runs on this loop, so
            # the in-memory ready queue is the committed truth between batches)
            return {"jobs": []}
        return await api.writer.submit("claim", ops.claim_next_jobs, api.state, wid, limit)

    async def _is_complete(self, parts: list[str], scope: Any, receive: Any) -> Any:
        snap = self.api.snapshot(_int_part(parts[1], "id"))
        return {
            "is_complete": snap.is_complete,
            "is_canceled": snap.is_canceled,
            "needs_to_run_completion_script": False,
        }

    async def _batch_complete_jobs(self, parts: list[str], scope: Any, receive: Any) -> Any:
        wid = _int_part(parts[1], "id")
        body = await self._json(receive)
        if not isinstance(body, dict):
            raise ApiError(422, "the JSON body must be an object")
        entries = body.get("completions")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ApiError(422, "'completions' must be a list of job completion entries")
        api = self.api
        return await api.writer.submit(
            "batch_complete_jobs", ops.batch_complete_jobs, api.state, wid, entries
        )


def _dispatch(methods: dict[str, Handler]) -> Handler:
    async def endpoint(request: Request) -> Response:
        return await methods[request.method](request)

    return endpoint


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


def build_app(api: Api, lifespan: Any = None) -> Starlette:
    """The Starlette application serving ``api``'s routes."""
    return TorcApp(api, lifespan)
