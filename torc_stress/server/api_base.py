"""The base of the HTTP API: route registration, wrapping, and the write/read plumbing."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from torc_stress.errors import ApiError, NotFoundError
from torc_stress.server.http_io import (
    PREFIX,
    Handler,
    _api_message,
    error_response,
)
from torc_stress.server.metrics import Metrics
from torc_stress.server.state import ServerState
from torc_stress.server.store import (
    ReadPool,
)
from torc_stress.server.writer import Writer

logger = logging.getLogger(__name__)  # the name its log lines always had


class ApiBase:
    """The routes' plumbing: state, writer, read pool, metrics and the route table."""

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

    def _register(self) -> None:
        """Adds the routes (the route table is :class:`Api`'s)."""
        raise NotImplementedError


def _dispatch(methods: dict[str, Handler]) -> Handler:
    async def endpoint(request: Request) -> Response:
        return await methods[request.method](request)

    return endpoint
