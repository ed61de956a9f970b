"""`TorcClient`: the one HTTP client of torc-stress (worker, CLI, harness and benchmark use it).

It speaks the wire format of PyPI ``torc-client==0.35.0`` over libcurl (pycurl: one handle per
thread, so each thread keeps its own keep-alive connection) with orjson bodies, returns plain
dicts, and translates every transport or HTTP failure once into :mod:`torc_stress.errors`:

- HTTP 404 -> :class:`NotFoundError`; 409/422 -> :class:`ConflictError`;
- any other 4xx/5xx -> :class:`ApiError` (``.retryable`` for 5xx and 429);
- connection refused/reset/timed out -> :class:`ServerUnavailable`.

Each request's latency can be recorded into a :class:`LatencyRecorder` (worker metrics file).

NOTE: libcurl rather than urllib3 or http.client: measured on the 2-core box (keep-alive POST
with a small JSON body and answer), client CPU per request was ~0.11 ms for pycurl against
~0.25 ms for http.client and more for urllib3, whose header parsing dominates. The worker makes
~2-3 requests per job, so this is most of the worker's CPU.
"""

from __future__ import annotations

import errno
import io
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import pycurl

from torc_stress.errors import (
    ApiError,
    ConfigError,
    ConflictError,
    NotFoundError,
    ServerUnavailable,
)
from torc_stress.stats import Summary, summarize

# NOTE: summarize is re-exported for callers that import it from here (the worker).
__all__ = ["DEFAULT_URL", "LatencyRecorder", "TorcClient", "rfc3339", "summarize"]

#: The URL used when neither ``--url`` nor ``TORC_API_URL`` is given (torc's default).
DEFAULT_URL = "http://localhost:8080/torc-service/v1"

#: The server refuses more than this many jobs per ``bulk_jobs`` request; torc sends 1000.
BULK_JOBS_BATCH = 1000
#: Page size of list requests (the server's ``max_limit``).
PAGE_SIZE = 10000

_JSON_HEADERS = {"Content-Type": "application/json"}


class LatencyRecorder:
    """Collects per-operation latencies (ms); thread-safe."""

    def __init__(self) -> None:
        self._samples: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def record(self, op: str, ms: float) -> None:
        """Adds one sample of ``op``."""
        with self._lock:
            self._samples.setdefault(op, []).append(ms)

    def summaries(self) -> dict[str, Summary]:
        """Returns ``{op: summary}`` for every operation seen (see :func:`summarize`)."""
        with self._lock:
            return {op: summarize(values) for op, values in sorted(self._samples.items())}


def _error_message(body: bytes) -> str:
    """Extracts the human message from an error body (JSON or text)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()[:300] or "(empty body)"
    if isinstance(doc, dict):
        for key in ("message", "errorMessage", "detail", "error"):
            value = doc.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, dict):
                inner = value.get("message") or value.get("detail")
                return str(inner) if inner else orjson.dumps(value).decode()
    return orjson.dumps(doc).decode()[:300]


def api_error(status: int, body: bytes, method: str, path: str) -> ApiError:
    """Builds the exception for an HTTP error status (404, 409/422, anything else)."""
    message = _error_message(body)
    if status == 404:
        return NotFoundError(status, message, method=method, path=path)
    if status in (409, 422):
        return ConflictError(status, message, method=method, path=path)
    return ApiError(status, message, method=method, path=path)


class TorcClient:
    """A client of a torc-compatible server (our own or the original).

    Args:
        url: the API base, e.g. ``http://127.0.0.1:8080/torc-service/v1``.
        token: bearer token sent with every request, if the server requires one.
        timeout: seconds to wait for a connection and for each response.
        recorder: where request latencies go, if anywhere.

    Raises:
        ConfigError: the URL is not an http(s) URL.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        recorder: LatencyRecorder | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"bad server URL {url!r}: expected http://HOST:PORT/torc-service/v1")
        self.url = url.rstrip("/")
        self._headers = dict(_JSON_HEADERS)
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.recorder = recorder
        # NOTE: an empty "Expect:" stops libcurl from waiting for "100 Continue" on big bodies;
        # an empty "Accept:" drops libcurl's "Accept: */*" (every answer is JSON anyway, and
        # each header line costs the server a parser callback).
        headers = [f"{k}: {v}" for k, v in self._headers.items()] + ["Expect:", "Accept:"]
        self._token = token
        self._pool = _CurlPool(timeout, headers)

    def with_timeout(self, timeout: float) -> TorcClient:
        """A client of the same server and token whose requests give up after ``timeout`` s."""
        return TorcClient(self.url, token=self._token, timeout=timeout, recorder=self.recorder)

    def close(self) -> None:
        """Closes the pooled connections."""
        self._pool.close()

    def __enter__(self) -> TorcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        op: str | None = None,
    ) -> Any:
        """Sends one request and returns the decoded JSON answer.

        Args:
            method: HTTP verb.
            path: path under the API base, e.g. ``/workflows/1``.
            body: JSON-serializable body (``None`` sends none).
            params: query parameters; ``None`` values are left out.
            op: the operation name latencies are recorded under (default: ``method path``).

        Returns:
            The decoded JSON body (``None`` for an empty body).

        Raises:
            NotFoundError, ConflictError, ApiError: the server answered with an error.
            ServerUnavailable: the server could not be reached or did not answer in time.
        """
        target = self.url + path
        if params:
            query = {k: _query_value(v) for k, v in params.items() if v is not None}
            if query:
                target += "?" + urlencode(query)
        payload = orjson.dumps(body) if body is not None else None
        started = time.perf_counter()
        try:
            status, data = self._pool.roundtrip(method, target, payload)
        except pycurl.error as exc:
            refused = bool(exc.args) and exc.args[0] == pycurl.E_COULDNT_CONNECT \
                and self._pool.os_errno() == errno.ECONNREFUSED
            raise ServerUnavailable(self.url, _reason(exc), refused=refused) from None
        if self.recorder is not None:
            self.recorder.record(op or f"{method} {path}", (time.perf_counter() - started) * 1e3)
        if status >= 400:
            raise api_error(status, data, method, path)
        if not data:
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ApiError(status, "the answer is not JSON", method=method,
                           path=path) from None

    # ------------------------------------------------------------------ system

    def ping(self) -> dict[str, Any]:
        """Returns the server's ping answer (``{"status": "ok"}``)."""
        return self.request("GET", "/ping", op="ping")

    def metrics(self) -> dict[str, Any]:
        """Returns the server's metrics document (our extension ``GET /metrics``)."""
        return self.request("GET", "/metrics", op="metrics")

    # ------------------------------------------------------------------ workflows

    def create_workflow(self, name: str, user: str, description: str | None = None,
                        **fields: Any) -> dict[str, Any]:
        """Creates a workflow and returns it (with ``id``)."""
        body = {"name": name, "user": user, **fields}
        if description is not None:
            body["description"] = description
        return self.request("POST", "/workflows", body=body, op="create_workflow")

    def create_workflow_whole(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Creates a workflow with its requirements and jobs in one transaction (an extension
        of torc's API); returns ``{"workflow": {...}, "jobs": N}``."""
        return self.request("POST", "/workflows/create_whole", body=dict(body),
                            op="create_workflow_whole")

    def get_workflow(self, workflow_id: int) -> dict[str, Any]:
        """Returns one workflow."""
        return self.request("GET", f"/workflows/{workflow_id}", op="get_workflow")

    def list_workflows(self, **filters: Any) -> list[dict[str, Any]]:
        """Returns every workflow (all pages), optionally filtered (``name``, ``user``...)."""
        return list(self._pages("/workflows", filters, op="list_workflows"))

    def delete_workflow(self, workflow_id: int) -> Any:
        """Deletes a workflow and everything in it."""
        return self.request("DELETE", f"/workflows/{workflow_id}", op="delete_workflow")

    def cancel_workflow(self, workflow_id: int) -> Any:
        """Cancels a workflow: nothing more is claimed, workers kill their jobs."""
        return self.request("PUT", f"/workflows/{workflow_id}/cancel", body={},
                            op="cancel_workflow")

    def get_workflow_status(self, workflow_id: int) -> dict[str, Any]:
        """Returns ``GET /workflows/{id}/status``."""
        return self.request("GET", f"/workflows/{workflow_id}/status",
                            op="get_workflow_status")

    def initialize_jobs(self, workflow_id: int, *, only_uninitialized: bool = False) -> Any:
        """Moves the workflow's jobs to ready/blocked (``initialize_jobs``)."""
        return self.request("POST", f"/workflows/{workflow_id}/initialize_jobs", body={},
                            params={"only_uninitialized": only_uninitialized},
                            op="initialize_jobs")

    def is_uninitialized(self, workflow_id: int) -> bool:
        """Whether every job of the workflow is still uninitialized (or disabled)."""
        doc = self.request("GET", f"/workflows/{workflow_id}/is_uninitialized",
                           op="is_uninitialized")
        return bool(doc["is_uninitialized"])

    def is_complete(self, workflow_id: int) -> dict[str, Any]:
        """Returns ``{"is_complete": bool, "is_canceled": bool, ...}``."""
        return self.request("GET", f"/workflows/{workflow_id}/is_complete",
                            op="is_complete")

    def progress(self, workflow_id: int) -> dict[str, Any]:
        """Returns our extension ``GET /workflows/{id}/progress``."""
        return self.request("GET", f"/workflows/{workflow_id}/progress",
                            op="progress")

    # ------------------------------------------------------------------ creation

    def create_resource_requirements(self, workflow_id: int, name: str,
                                     **fields: Any) -> dict[str, Any]:
        """Creates named resource requirements (``num_cpus``, ``memory``, ``runtime``...)."""
        body = {"workflow_id": workflow_id, "name": name, **fields}
        return self.request("POST", "/resource_requirements", body=body,
                            op="create_resource_requirements")

    def create_jobs(self, jobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Creates jobs with ``POST /bulk_jobs`` in batches of 1000; returns them in order."""
        created: list[dict[str, Any]] = []
        for start in range(0, len(jobs), BULK_JOBS_BATCH):
            batch = list(jobs[start:start + BULK_JOBS_BATCH])
            doc = self.request("POST", "/bulk_jobs", body={"jobs": batch}, op="create_jobs")
            created.extend(doc.get("jobs") or [])
        return created

    # ------------------------------------------------------------------ running

    def create_compute_node(self, workflow_id: int, hostname: str, pid: int,
                            **fields: Any) -> dict[str, Any]:
        """Registers a compute node (a worker) and returns it (with ``id``)."""
        body = {
            "workflow_id": workflow_id, "hostname": hostname, "pid": pid,
            "start_time": rfc3339(time.time()), "num_cpus": 1, "memory_gb": 1.0,
            "num_gpus": 0, "num_nodes": 1, "compute_node_type": "local", "is_active": True,
            **fields,
        }
        return self.request("POST", "/compute_nodes", body=body,
                            op="create_compute_node")

    def heartbeat(self, compute_node_id: int) -> dict[str, Any]:
        """Renews the node's lease (an extension of torc's API); ``{"lease_s": S}``.

        Raises:
            ConflictError: 409, the lease expired: the node's jobs went to others.
        """
        return self.request("POST", f"/compute_nodes/{int(compute_node_id)}/heartbeat",
                            body={}, op="heartbeat")

    def update_compute_node(self, node: Mapping[str, Any]) -> dict[str, Any]:
        """Replaces a compute node (``PUT``, full model with ``id``)."""
        return self.request("PUT", f"/compute_nodes/{node['id']}", body=dict(node),
                            op="update_compute_node")

    def claim_next_jobs(self, workflow_id: int, limit: int,
                        compute_node_id: int | None = None) -> list[dict[str, Any]]:
        """Claims up to ``limit`` ready jobs (they become pending) and returns them.

        With ``compute_node_id`` (an extension of torc's API) the claim is owned by that node.
        """
        path = f"/workflows/{workflow_id}/claim_next_jobs?limit={int(limit)}"
        if compute_node_id is not None:
            path += f"&compute_node_id={int(compute_node_id)}"
        doc = self.request("POST", path, body={}, op="claim")
        return list(doc.get("jobs") or [])

    def claim_jobs_based_on_resources(self, workflow_id: int, limit: int,
                                      resources: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Claims ready jobs that fit ``resources`` (``num_cpus``, ``memory_gb``...)."""
        path = f"/workflows/{workflow_id}/claim_jobs_based_on_resources/{limit}"
        doc = self.request("POST", path, body=dict(resources), op="claim")
        return list(doc.get("jobs") or [])

    def start_job(self, job_id: int, run_id: int, compute_node_id: int) -> dict[str, Any]:
        """Marks a claimed job running on a compute node."""
        return self.request("PUT", f"/jobs/{job_id}/start_job/{run_id}/{compute_node_id}",
                            body={}, op="start_job")

    def batch_start_jobs(self, workflow_id: int, run_id: int, compute_node_id: int,
                         job_ids: Sequence[int]) -> dict[str, Any]:
        """Marks several claimed jobs running in one request (an extension of torc's API).

        Returns:
            ``{"started": [ids], "errors": [{"job_id", "message"}]}``; a job already running on
            this node counts as started, so a retried request is harmless.
        """
        return self.request("POST", f"/workflows/{workflow_id}/batch_start_jobs",
                            body={"run_id": run_id, "compute_node_id": compute_node_id,
                                  "job_ids": list(job_ids)}, op="batch_start_jobs")

    def complete_job(self, job_id: int, status: str, run_id: int,
                     result: Mapping[str, Any]) -> dict[str, Any]:
        """Reports one job's result (``status`` is a wire name such as ``completed``)."""
        return self.request("POST", f"/jobs/{job_id}/complete_job/{status}/{run_id}",
                            body=dict(result), op="complete_job")

    def batch_complete_jobs(self, workflow_id: int,
                            completions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Reports many results at once; returns ``{"completed": [ids], "errors": [...]}``.

        Args:
            workflow_id: the workflow.
            completions: entries ``{"job_id", "run_id", "status", "result"}``.
        """
        return self.request("POST", f"/workflows/{workflow_id}/batch_complete_jobs",
                            body={"completions": list(completions)}, op="batch_complete_jobs")

    # ------------------------------------------------------------------ jobs

    def get_job(self, job_id: int) -> dict[str, Any]:
        """Returns one job."""
        return self.request("GET", f"/jobs/{job_id}", op="get_job")

    def list_jobs(self, workflow_id: int, *, status: str | None = None,
                  **filters: Any) -> list[dict[str, Any]]:
        """Returns every job of a workflow (all pages), optionally of one status."""
        params = {"workflow_id": workflow_id, "status": status, **filters}
        return list(self._pages("/jobs", params, op="list_jobs"))

    def _pages(self, path: str, params: Mapping[str, Any], *, op: str) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            doc = self.request("GET", path, params={**params, "offset": offset,
                                                    "limit": PAGE_SIZE}, op=op)
            items = doc.get("items") or []
            yield from items
            offset += len(items)
            if not doc.get("has_more") or not items:
                return


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


#: libcurl error codes and what they mean to an operator.
_CURL_REASONS = {
    pycurl.E_COULDNT_CONNECT: "connection refused",
    pycurl.E_COULDNT_RESOLVE_HOST: "cannot resolve the host name",
    pycurl.E_OPERATION_TIMEDOUT: "timed out",
    pycurl.E_GOT_NOTHING: "connection reset (empty answer)",
    pycurl.E_RECV_ERROR: "connection reset",
    pycurl.E_SEND_ERROR: "connection reset",
}


def _reason(exc: Exception) -> str:
    """A short reason for a transport error (refused, reset, timed out)."""
    if isinstance(exc, pycurl.error):
        code = exc.args[0] if exc.args else -1
        return _CURL_REASONS.get(code) or f"libcurl error {code}: {exc.args[-1]}"[:200]
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "connection reset"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ValueError | IndexError):
        return "the answer is not HTTP"
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "timed out", "Name or service"):
        if marker.lower() in text.lower():
            return marker.lower()
    return f"{type(exc).__name__}: {text}"[:200]


def rfc3339(epoch: float) -> str:
    """Formats a UNIX time as torc does: ``2026-11-28T21:30:12.123Z``."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{whole}.{int(epoch % 1 * 1000):03d}Z"


class _CurlPool:
    """One libcurl handle per thread; libcurl keeps that thread's connection alive and
    reconnects by itself when the server has closed it."""

    def __init__(self, timeout: float, headers: Sequence[str]) -> None:
        self.timeout_ms = int(timeout * 1000)
        self.headers = list(headers)
        self._local = threading.local()
        self._all: list[tuple[pycurl.Curl, io.BytesIO]] = []
        self._lock = threading.Lock()

    def roundtrip(self, method: str, url: str, payload: bytes | None) -> tuple[int, bytes]:
        """Sends one request; returns ``(status, body)``; raises ``pycurl.error``."""
        curl, buf = self._handle()
        buf.seek(0)
        buf.truncate()
        curl.setopt(pycurl.URL, url)
        if method == "GET" and payload is None:
            curl.setopt(pycurl.HTTPGET, 1)
        else:
            curl.setopt(pycurl.POSTFIELDS, payload or b"")
            curl.setopt(pycurl.CUSTOMREQUEST, method)
        try:
            curl.perform()
        finally:
            if method != "GET" or payload is not None:
                curl.unsetopt(pycurl.CUSTOMREQUEST)
        return int(curl.getinfo(pycurl.RESPONSE_CODE)), buf.getvalue()

    def os_errno(self) -> int:
        """The errno of this thread's last failed connect (0 if none)."""
        handle = getattr(self._local, "handle", None)
        return int(handle[0].getinfo(pycurl.OS_ERRNO)) if handle is not None else 0

    def _handle(self) -> tuple[pycurl.Curl, io.BytesIO]:
        handle: tuple[pycurl.Curl, io.BytesIO] | None = getattr(self._local, "handle", None)
        if handle is None:
            curl, buf = pycurl.Curl(), io.BytesIO()
            curl.setopt(pycurl.NOSIGNAL, 1)
            curl.setopt(pycurl.TCP_NODELAY, 1)
            curl.setopt(pycurl.CONNECTTIMEOUT_MS, min(self.timeout_ms, 10_000))
            curl.setopt(pycurl.TIMEOUT_MS, self.timeout_ms)
            curl.setopt(pycurl.HTTPHEADER, self.headers)
            curl.setopt(pycurl.WRITEDATA, buf)
            handle = self._local.handle = (curl, buf)
            with self._lock:
                self._all.append(handle)
        return handle

    def close(self) -> None:
        """Closes every thread's handle (and its connection)."""
        with self._lock:
            handles, self._all = self._all, []
        for curl, _ in handles:
            curl.close()
        self._local = threading.local()
