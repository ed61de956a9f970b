"""TorcClient against a tiny loopback HTTP stub: paths, batching, paging, error translation."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from torc_stress.client import LatencyRecorder, TorcClient
from torc_stress.errors import ApiError, ConflictError, NotFoundError, ServerUnavailable

Route = Callable[[str, str, dict[str, list[str]], Any], tuple[int, Any]]


class Stub:
    """Records requests; answers with ``route(method, path, query, body)``."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.requests: list[tuple[str, str, dict[str, list[str]], Any, dict[str, str]]] = []
        self.connections = 0


@pytest.fixture(name="stub")
def stub_fixture() -> Iterator[tuple[Stub, str]]:
    state = Stub(lambda method, path, query, body: (200, {}))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            state.connections += 1
            super().setup()

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = orjson.loads(self.rfile.read(length)) if length else None
            query = parse_qs(parts.query)
            state.requests.append((self.command, parts.path, query, body, dict(self.headers)))
            status, answer = state.route(self.command, parts.path, query, body)
            data = answer if isinstance(answer, bytes) else orjson.dumps(answer)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/torc-service/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_bulk_jobs_are_sent_in_batches_of_a_thousand_and_returned_in_order(
        stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.route = lambda m, p, q, body: (200, {"jobs": [
        dict(job, id=int(job["name"][1:]) + 1) for job in body["jobs"]]})
    jobs = [{"workflow_id": 1, "name": f"j{i}", "command": "true"} for i in range(2500)]
    with TorcClient(url) as client:
        created = client.create_jobs(jobs)
    assert [len(r[3]["jobs"]) for r in state.requests] == [1000, 1000, 500]
    assert {r[1] for r in state.requests} == {"/torc-service/v1/bulk_jobs"}
    assert [job["id"] for job in created] == list(range(1, 2501))


def test_list_jobs_pages_through_everything(stub: tuple[Stub, str]) -> None:
    state, url = stub
    total = 25

    def route(method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        offset = int(query["offset"][0])
        items = [{"id": i} for i in range(offset, min(total, offset + 10))]
        return 200, {"items": items, "has_more": offset + len(items) < total}

    state.route = route
    with TorcClient(url) as client:
        jobs = client.list_jobs(4, status="ready")
    assert [job["id"] for job in jobs] == list(range(total))
    assert state.requests[0][2]["workflow_id"] == ["4"]
    assert state.requests[0][2]["status"] == ["ready"]


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [(404, NotFoundError, False), (409, ConflictError, False), (422, ConflictError, False),
     (400, ApiError, False), (500, ApiError, True), (503, ApiError, True)],
)
def test_http_errors_are_translated_once_with_the_servers_message(
        stub: tuple[Stub, str], status: int, kind: type[ApiError], retryable: bool) -> None:
    state, url = stub
    state.route = lambda m, p, q, b: (status, {"error": {"message": "job 5 is not running"}})
    with TorcClient(url) as client, pytest.raises(kind) as caught:
        client.complete_job(5, "completed", 1, {"job_id": 5})
    assert type(caught.value) is kind
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert "job 5 is not running" in str(caught.value)
    assert "/jobs/5/complete_job/completed/1" in str(caught.value)


def test_a_server_that_is_not_listening_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with TorcClient(f"http://127.0.0.1:{port}/torc-service/v1", timeout=2) as client, \
            pytest.raises(ServerUnavailable) as caught:
        client.ping()
    assert "connection refused" in str(caught.value)


def test_requests_reuse_one_keep_alive_connection(stub: tuple[Stub, str]) -> None:
    state, url = stub
    with TorcClient(url) as client:
        for _ in range(20):
            client.get_job(1)
    assert state.connections == 1


def test_the_token_is_sent_as_a_bearer_header(stub: tuple[Stub, str]) -> None:
    state, url = stub
    with TorcClient(url, token="s3cret") as client:
        client.ping()
    assert state.requests[0][4]["Authorization"] == "Bearer s3cret"


def test_latency_is_recorded_per_operation(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.route = lambda m, p, q, b: (200, {"jobs": []})
    recorder = LatencyRecorder()
    with TorcClient(url, recorder=recorder) as client:
        client.claim_next_jobs(1, 4)
        client.claim_next_jobs(1, 4)
        client.start_job(3, 1, 2)
    summaries = recorder.summaries()
    assert summaries["claim"]["count"] == 2
    assert summaries["start_job"]["count"] == 1
    assert state.requests[0][2]["limit"] == ["4"]
    assert state.requests[2][:2] == ("PUT", "/torc-service/v1/jobs/3/start_job/1/2")
