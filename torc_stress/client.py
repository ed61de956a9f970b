"""`TorcClient`: the one HTTP client of torc-stress (worker, CLI, harness and benchmark use it).

It speaks the wire format of PyPI ``torc-client==0.35.0`` over a pool of keep-alive HTTP/1.1
connections (TCP_NODELAY, one ``sendall`` per request) with orjson bodies, returns plain dicts, and
translates every transport or HTTP failure once into :mod:`torc_stress.errors`:

- HTTP 404 -> :class:`NotFoundError`; 409/422 -> :class:`ConflictError`;
- any other 4xx/5xx -> :class:`ApiError` (``.retryable`` for 5xx and 429);
- connection refused/reset/timed out -> :class:`ServerUnavailable`.

Each request's latency can be recorded into a :class:`LatencyRecorder` (worker metrics file).

NOTE: the transport is a small HTTP/1.1 client of our own rather than urllib3: measured on the
2-core box against our server, 0.065 ms of client CPU per request against 0.34-0.43 ms for
urllib3 (whose http.client/email header parsing dominates). The worker makes ~3 requests per job,
so this is most of the worker's CPU.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from torc_stress.errors import (
    ApiError,
    ConfigError,
    ConflictError,
    NotFoundError,
    ServerUnavailable,
)

__all__ = ["DEFAULT_URL", "LatencyRecorder", "TorcClient", "rfc3339", "summarize"]

#: The URL used when neither ``--url`` nor ``TORC_API_URL`` is given (torc's default).
DEFAULT_URL = "http://localhost:8080/torc-service/v1"

#: The server refuses more than this many jobs per ``bulk_jobs`` request; torc sends 1000.
BULK_JOBS_BATCH = 1000
#: Page size of list requests (the server's ``max_limit``).
PAGE_SIZE = 10000

_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Summarizes samples as the metrics documents do.

    Args:
        values: samples (milliseconds), in any order.

    Returns:
        ``{"count", "sum", "p50", "p90", "p99", "max"}``; all zero when there are no samples.
    """
    if not values:
        return {"count": 0, "sum": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    def pct(p: float) -> float:
        rank = max(0, math.ceil(p / 100.0 * len(ordered)) - 1)
        return round(ordered[rank], 3)

    return {
        "count": len(ordered),
        "sum": round(sum(ordered), 3),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": round(ordered[-1], 3),
    }


class LatencyRecorder:
    """Collects per-operation latencies (ms); thread-safe."""

    def __init__(self) -> None:
        self._samples: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def record(self, op: str, ms: float) -> None:
        """Adds one sample of ``op``."""
        with self._lock:
            self._samples.setdefault(op, []).append(ms)

    def summaries(self) -> dict[str, dict[str, float]]:
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
        maxsize: connections kept open (one per concurrent thread is enough).

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
        maxsize: int = 32,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"bad server URL {url!r}: expected http://HOST:PORT/torc-service/v1")
        self.url = url.rstrip("/")
        self._base = parts.path.rstrip("/")
        self._headers = dict(_JSON_HEADERS)
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.recorder = recorder
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        self._pool = _Pool(parts.hostname, port, timeout, maxsize, tls)
        host = parts.netloc.rpartition("@")[2]
        self._head_tail = "".join(f"{k}: {v}\r\n" for k, v in
                                  {"Host": host, **self._headers}.items())

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
        target = self._base + path
        if params:
            query = {k: _query_value(v) for k, v in params.items() if v is not None}
            if query:
                target += "?" + urlencode(query)
        payload = orjson.dumps(body) if body is not None else b""
        request = (f"{method} {target} HTTP/1.1\r\n{self._head_tail}"
                   f"Content-Length: {len(payload)}\r\n\r\n").encode("latin-1") + payload
        started = time.perf_counter()
        try:
            status, data = self._pool.roundtrip(request)
        except (OSError, ValueError, IndexError) as exc:
            raise ServerUnavailable(self.url, _reason(exc)) from None
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

    def update_compute_node(self, node: Mapping[str, Any]) -> dict[str, Any]:
        """Replaces a compute node (``PUT``, full model with ``id``)."""
        return self.request("PUT", f"/compute_nodes/{node['id']}", body=dict(node),
                            op="update_compute_node")

    def claim_next_jobs(self, workflow_id: int, limit: int) -> list[dict[str, Any]]:
        """Claims up to ``limit`` ready jobs (they become pending) and returns them."""
        doc = self.request("POST", f"/workflows/{workflow_id}/claim_next_jobs", body={},
                           params={"limit": limit}, op="claim")
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


def _reason(exc: Exception) -> str:
    """A short reason for a transport error (refused, reset, timed out)."""
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


class _Connection:
    """One keep-alive HTTP/1.1 connection; a request is one ``sendall``, a reply one parse."""

    def __init__(self, host: str, port: int, timeout: float, tls: bool) -> None:
        sock = socket.create_connection((host, port), timeout=min(timeout, 10.0))
        if tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def is_dropped(self) -> bool:
        """Whether the idle connection was closed by the server (readable while idle)."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def roundtrip(self, request: bytes) -> tuple[int, bytes, bool]:
        """Sends a request; returns ``(status, body, keep_alive)``."""
        self.sock.sendall(request)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4:]
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            body = self._read_exact(int(headers.get("content-length") or 0))
        keep_alive = headers.get("connection", "").lower() != "close"
        return status, body, keep_alive

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        self.buf += chunk

    def _read_exact(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            while (end := self.buf.find(b"\r\n")) < 0:
                self._fill()
            size = int(self.buf[:end].split(b";")[0], 16)
            self.buf = self.buf[end + 2:]
            data = self._read_exact(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(data[:-2])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _Pool:
    """Idle keep-alive connections, shared by threads."""

    def __init__(self, host: str, port: int, timeout: float, maxsize: int, tls: bool) -> None:
        self.host, self.port, self.timeout, self.maxsize = host, port, timeout, maxsize
        self.tls = tls
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        conn = self._checkout()
        try:
            status, body, keep_alive = conn.roundtrip(request)
        except BaseException:
            conn.close()
            raise
        if keep_alive:
            self._checkin(conn)
        else:
            conn.close()
        return status, body

    def _checkout(self) -> _Connection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.is_dropped():
                    return conn
                conn.close()
        return _Connection(self.host, self.port, self.timeout, self.tls)

    def _checkin(self, conn: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self.maxsize:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
