"""The fast lane inside an in-process uvicorn server: no ASGI task, the keep-alive timeout."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.integration.raw_http import RawConnection
from torc_stress.server.app import Api, build_app
from torc_stress.server.fast_lane import fast_lane_protocol
from torc_stress.server.metrics import Metrics
from torc_stress.server.state import ServerState
from torc_stress.server.store import ReadPool, create_schema, open_writer_connection
from torc_stress.server.writer import Writer

pytestmark = pytest.mark.integration

KEEP_ALIVE_S = 0.4


@dataclass
class InProcessServer:
    """A server on a thread of this process, its protocol counting the ASGI tasks it starts."""

    port: int
    protocol: Any

    @property
    def asgi_tasks(self) -> int:
        """ASGI tasks started so far (requests that did not take the fast lane)."""
        return int(self.protocol.asgi_tasks)


@pytest.fixture
def in_process_server(tmp_path: Path) -> Iterator[InProcessServer]:
    db_path = tmp_path / "server.db"
    conn = open_writer_connection(db_path)
    create_schema(conn)
    metrics = Metrics()
    state = ServerState(metrics, 0.0)
    state.conn = conn
    state.load(conn)
    writer = Writer(conn, state, metrics, 45.0)
    reads = ReadPool(db_path)
    app = build_app(Api(state, writer, reads, metrics))
    bound = fast_lane_protocol(app.hot)

    class Counting(bound):  # type: ignore[misc, valid-type]
        asgi_tasks = 0

        def _start_asgi_task(self, cycle: Any, asgi_app: Any) -> None:
            type(self).asgi_tasks += 1
            super()._start_asgi_task(cycle, asgi_app)

    config = uvicorn.Config(app, loop="uvloop", http=Counting, log_config=None, access_log=False,
                            lifespan="off", timeout_keep_alive=KEEP_ALIVE_S)
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started, "the in-process server did not start"
        yield InProcessServer(sock.getsockname()[1], Counting)
    finally:
        server.should_exit = True
        thread.join(15)
        writer.stop()
        reads.close()
        conn.close()
        sock.close()


def _workflow_with_a_claimed_job(conn: RawConnection) -> tuple[int, int, int]:
    wid = conn.request("POST", "/workflows", {"name": "w", "user": "u"}).json()["id"]
    conn.request("POST", "/jobs", {"workflow_id": wid, "name": "a", "command": "true"})
    conn.request("POST", f"/workflows/{wid}/initialize_jobs")
    node = conn.request("POST", "/compute_nodes", {
        "workflow_id": wid, "hostname": "h", "pid": 1, "start_time": "2026-01-01T00:00:00Z",
        "num_cpus": 1, "memory_gb": 1.0, "num_gpus": 0, "num_nodes": 1,
        "compute_node_type": "local"}).json()["id"]
    (job,) = conn.request("POST", f"/workflows/{wid}/claim_next_jobs?limit=1").json()["jobs"]
    return wid, node, job["id"]


def test_hot_routes_take_no_asgi_task_and_other_requests_still_do(in_process_server) -> None:
    conn = RawConnection(in_process_server.port)
    try:
        wid, node, jid = _workflow_with_a_claimed_job(conn)
        before = in_process_server.asgi_tasks
        assert conn.request("PUT", f"/jobs/{jid}/start_job/0/{node}").status == 200
        for _ in range(5):
            assert conn.request("GET", f"/workflows/{wid}/is_complete").status == 200
        assert in_process_server.asgi_tasks == before
        assert conn.request("GET", f"/workflows/{wid}").status == 200
        assert conn.request("GET", f"/workflows/{wid}/is_complete",
                            headers={"Expect": "100-continue"}).status == 200
        assert in_process_server.asgi_tasks == before + 2
    finally:
        conn.close()


@pytest.mark.parametrize("route", ["is_complete", "start_job"], ids=["sync", "via-writer"])
def test_an_idle_connection_after_a_fast_lane_answer_closes_after_the_keep_alive_timeout(
    in_process_server, route: str
) -> None:
    conn = RawConnection(in_process_server.port)
    try:
        wid, node, jid = _workflow_with_a_claimed_job(conn)
        path = (f"/workflows/{wid}/is_complete" if route == "is_complete"
                else f"/jobs/{jid}/start_job/0/{node}")
        method = "GET" if route == "is_complete" else "PUT"
        assert conn.request(method, path).status == 200
        answered = time.monotonic()
        assert conn.closed_by_server(KEEP_ALIVE_S * 10)
        assert time.monotonic() - answered >= KEEP_ALIVE_S * 0.8
    finally:
        conn.close()


def test_the_keep_alive_timeout_counts_from_the_last_answer_not_the_first(
    in_process_server,
) -> None:
    conn = RawConnection(in_process_server.port)
    try:
        wid, _, _ = _workflow_with_a_claimed_job(conn)
        path = f"/workflows/{wid}/is_complete"
        started = time.monotonic()
        answered = started
        while answered - started < KEEP_ALIVE_S * 2.5:  # busy past the first timeout
            time.sleep(KEEP_ALIVE_S / 4)
            assert conn.request("GET", path).status == 200
            answered = time.monotonic()
        assert conn.closed_by_server(KEEP_ALIVE_S * 10)
        assert time.monotonic() - answered >= KEEP_ALIVE_S * 0.8
    finally:
        conn.close()
