"""The per-job hot routes, served as a bare ASGI callable ahead of Starlette."""

from __future__ import annotations

import logging
from time import perf_counter
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson

from torc_stress.errors import ApiError
from torc_stress.server import ops
from torc_stress.server.http_io import (
    MAX_LIMIT,
    PREFIX,
    _api_message,
    status_param,
)

if TYPE_CHECKING:
    from torc_stress.server.app import Api

logger = logging.getLogger(__name__)  # the name its log lines always had


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
