"""The per-job hot routes: plain handlers shared by the ASGI path and the protocol's fast lane."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from time import perf_counter
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl

import orjson

from torc_stress.errors import ApiError
from torc_stress.server import ops
from torc_stress.server.checks import INT64_MAX, INT64_MIN, parse_int
from torc_stress.server.http_io import (
    MAX_LIMIT,
    PREFIX,
    _api_message,
    status_param,
)

if TYPE_CHECKING:
    from torc_stress.server.app import Api
    from torc_stress.server.metrics import RequestStats

logger = logging.getLogger(__name__)  # the name its log lines always had

_JSON_HEADER = (b"content-type", b"application/json")

class Write(NamedTuple):
    """A handler's answer that needs the writer: the op to queue (its result is the payload)."""

    kind: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]


Handler = Callable[[list[str], bytes, bytes], Any]
"""A hot route's handler: ``(path parts, query string, body)`` -> payload or a :class:`Write`."""

Reply = Callable[[int, bytes], None]
"""Receives a finished answer: ``(status, JSON body)``."""


class HotRoute(NamedTuple):
    """One hot route: its metrics key, its stats object and its handler."""

    key: str
    stats: RequestStats
    handler: Handler


def error_body(status: int, message: str) -> bytes:
    """torc's JSON error body (what ``http_io.error_response`` renders)."""
    return orjson.dumps(
        {"error": {"status": status, "message": message}, "errorMessage": message, "code": status}
    )


def _int_part(raw: str, name: str) -> int:
    try:
        value = int(raw)
        if INT64_MIN <= value <= INT64_MAX:
            return value
    except ValueError:
        pass
    return parse_int(raw, f"path parameter {name!r}")  # raises the 400 that names it


def _json(raw: bytes) -> Any:
    if not raw.strip():
        raise ApiError(400, "the request needs a JSON body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None


def _json_object(raw: bytes) -> dict[str, Any]:
    body = _json(raw)
    if not isinstance(body, dict):
        raise ApiError(422, "the JSON body must be an object")
    return body


def _failure(exc: BaseException, key: str) -> tuple[int, bytes]:
    if isinstance(exc, ApiError):
        return exc.status, error_body(exc.status, _api_message(exc))
    logger.error("unexpected error", exc_info=exc, extra={"torc_kv": {"route": key}})
    return 500, error_body(500, f"internal error: {type(exc).__name__}: {exc}")


class HotRoutes:
    """The per-job routes, answered without Starlette (and usually without ASGI at all).

    A worker sends 2-3 requests per job (its share of a claim, ``start_job``, ``complete_job``,
    now and then ``is_complete``). Matching ~40 route regexes, building Request/Response objects
    and walking the middleware stack cost more server CPU than the work itself. These routes
    are matched by splitting the path; each handler is a plain function of
    ``(parts, query_string, body)`` returning the JSON payload or the writer's Future of it
    (errors are :class:`ApiError`, raised or set on the future). The protocol's fast lane
    (:mod:`torc_stress.server.fast_lane`) calls :meth:`respond` straight from the parser;
    :meth:`serve` is the ASGI path :class:`TorcApp` uses when the fast lane declines. Behaviour,
    error bodies and metrics keys are those of the Starlette routes.
    """

    def __init__(self, api: Api) -> None:
        self.api = api
        self._prefix = PREFIX + "/"
        self._cut = len(self._prefix)
        self._debug = logger.isEnabledFor(logging.DEBUG)
        requests = api.metrics.request_stats
        self._routes = {
            name: HotRoute(key, requests(key), getattr(self, handler))
            for name, key, handler in (
                ("complete", "POST /jobs/{id}/complete_job/{status}/{run_id}", "_complete_job"),
                ("start", "PUT /jobs/{id}/start_job/{run_id}/{compute_node_id}", "_start_job"),
                ("claim", "POST /workflows/{id}/claim_next_jobs", "_claim_next_jobs"),
                ("is_complete", "GET /workflows/{id}/is_complete", "_is_complete"),
                ("batch", "POST /workflows/{id}/batch_complete_jobs", "_batch_complete_jobs"),
                ("batch_start", "POST /workflows/{id}/batch_start_jobs", "_batch_start_jobs"),
            )
        }

    @property
    def prefix(self) -> str:
        """The path prefix every hot route starts with (``/torc-service/v1/``)."""
        return self._prefix

    def match(self, scope: Any) -> tuple[HotRoute, list[str]] | None:
        """The hot route an ASGI request is for (with its path split), or None."""
        if scope["type"] != "http":
            return None
        return self.match_path(scope["method"], scope["path"])

    def match_path(self, method: str, path: str) -> tuple[HotRoute, list[str]] | None:
        """The hot route for ``method`` and a decoded ``path`` (with the path split), or None."""
        if not path.startswith(self._prefix):
            return None
        parts = path[self._cut :].split("/")
        route = self._match(method, parts)
        return None if route is None else (route, parts)

    def _match(self, method: str, parts: list[str]) -> HotRoute | None:
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
            if action == "batch_start_jobs" and method == "POST":
                return self._routes["batch_start"]
        return None

    # -- answering ------------------------------------------------------------------------------
    def respond(
        self, route: HotRoute, parts: list[str], query: bytes, body: bytes, reply: Reply
    ) -> None:
        """Runs a hot route's handler and hands ``(status, JSON body)`` to ``reply``.

        ``reply`` is called at once when the handler answers synchronously (a payload or an
        error), else by the writer once the op's transaction has committed (no future, no
        task). The request is recorded in the route's metrics just before ``reply`` is called.
        """
        started = perf_counter()
        try:
            result = route.handler(parts, query, body)
        except Exception as exc:  # noqa: BLE001 - ApiError or the catch-all 500 JSON body
            self._finish(route, started, reply, *_failure(exc, route.key))
            return
        if type(result) is Write:
            self.api.writer.submit_callback(
                result.kind, result.fn, result.args, partial(self._written, route, started, reply)
            )
        else:
            self._finish(route, started, reply, 200, orjson.dumps(result))

    def _written(
        self,
        route: HotRoute,
        started: float,
        reply: Reply,
        result: Any,
        error: BaseException | None,
    ) -> None:
        try:
            if error is not None:
                raise error
            status, body = 200, orjson.dumps(result)
        except Exception as exc:  # noqa: BLE001 - ApiError, or the catch-all 500 JSON body
            status, body = _failure(exc, route.key)
        self._finish(route, started, reply, status, body)

    def _finish(
        self, route: HotRoute, started: float, reply: Reply, status: int, body: bytes
    ) -> None:
        elapsed = (perf_counter() - started) * 1000
        route.stats.record(elapsed, status >= 400)
        if self._debug:
            logger.debug(
                "request", extra={"torc_kv": {"route": route.key, "status": status, "ms": elapsed}}
            )
        reply(status, body)

    async def serve(
        self, route: HotRoute, parts: list[str], scope: Any, receive: Any, send: Any
    ) -> None:
        """Answers one hot-route request over ASGI (when the fast lane did not take it)."""
        body = await self._body(receive)
        answer: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def reply(status: int, data: bytes) -> None:
            if not answer.done():
                answer.set_result((status, data))

        self.respond(route, parts, scope.get("query_string", b""), body, reply)
        status, data = await answer
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [_JSON_HEADER, (b"content-length", b"%d" % len(data))],
            }
        )
        await send({"type": "http.response.body", "body": data})

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

    # -- handlers: (parts, query, body) -> payload | Future ------------------------------------
    def _start_job(self, parts: list[str], query: bytes, body: bytes) -> Any:
        jid = _int_part(parts[1], "id")
        run_id = _int_part(parts[3], "run_id")
        node = _int_part(parts[4], "compute_node_id")
        return Write("start_job", ops.start_job, (self.api.state, jid, run_id, node))

    def _complete_job(self, parts: list[str], query: bytes, body: bytes) -> Any:
        jid = _int_part(parts[1], "id")
        status = status_param(parts[3], "status")
        run_id = _int_part(parts[4], "run_id")
        result = ops.validate_result(_json(body))
        return Write(
            "complete_job", ops.complete_job, (self.api.state, jid, status, run_id, result)
        )

    def _claim_next_jobs(self, parts: list[str], query: bytes, body: bytes) -> Any:
        wid = _int_part(parts[1], "id")
        limit = 10
        node: int | None = None
        if query:
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                if name == "limit" and value != "":
                    limit = _query_int(name, value)
                elif name == "compute_node_id" and value != "":
                    node = _query_int(name, value)
        if limit < 0 or limit > MAX_LIMIT:
            raise ApiError(400, f"limit must be between 0 and {MAX_LIMIT}")
        api = self.api
        wf = api.state.workflows.get(wid)
        if wf is not None and not wf.ready and (node is None or node not in api.state.expired):
            # nothing ready: answer without a transaction (the writer runs on this loop, so
            # the in-memory ready queue is the committed truth between batches)
            return {"jobs": []}
        return Write("claim", ops.claim_next_jobs, (api.state, wid, limit, node))

    def _is_complete(self, parts: list[str], query: bytes, body: bytes) -> Any:
        snap = self.api.snapshot(_int_part(parts[1], "id"))
        return {
            "is_complete": snap.is_complete,
            "is_canceled": snap.is_canceled,
            "needs_to_run_completion_script": False,
        }

    def _batch_complete_jobs(self, parts: list[str], query: bytes, body: bytes) -> Any:
        wid = _int_part(parts[1], "id")
        data = _json(body)
        if not isinstance(data, dict):
            raise ApiError(422, "the JSON body must be an object")
        entries = data.get("completions")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ApiError(422, "'completions' must be a list of job completion entries")
        return Write("batch_complete_jobs", ops.batch_complete_jobs, (self.api.state, wid, entries))

    def _batch_start_jobs(self, parts: list[str], query: bytes, body: bytes) -> Any:
        wid = _int_part(parts[1], "id")
        run_id, node, job_ids = ops.validate_batch_start(_json_object(body))
        return Write(
            "batch_start_jobs", ops.batch_start_jobs, (self.api.state, wid, run_id, node, job_ids)
        )


def _query_int(name: str, value: str) -> int:
    return parse_int(value, f"query parameter {name!r}")  # raises the 400 that names it
