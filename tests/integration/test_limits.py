"""Request and connection limits against a real server: body, head, idle time, connection cap."""

from __future__ import annotations

import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from tests.conftest import ServerProcess
from tests.integration.raw_http import PREFIX, RawConnection, RawResponse, request_bytes
from tests.integration.server_http import Http, compute_node, result_body

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def _claimed_job(url: str) -> tuple[int, int, int]:
    """``(workflow id, node id, job id)`` of a fresh workflow's one running job."""
    http = Http(url)
    try:
        wid = http.ok("POST", "/workflows", {"name": "limits", "user": "t"})["id"]
        http.ok("POST", "/bulk_jobs", {"jobs": [{"workflow_id": wid, "name": "j",
                                                 "command": "true"}]})
        http.ok("POST", f"/workflows/{wid}/initialize_jobs")
        node = http.ok("POST", "/compute_nodes", compute_node(wid))["id"]
        (job,) = http.ok("POST", f"/workflows/{wid}/claim_next_jobs?limit=1")["jobs"]
        http.ok("PUT", f"/jobs/{job['id']}/start_job/0/{node}")
        return wid, node, job["id"]
    finally:
        http.close()


def _send_chunked(port: int, path: str, total: int, chunk: int = MIB) -> tuple[RawResponse, int]:
    """Streams a chunked body of ``total`` bytes until the server answers; returns the answer
    and how many body bytes were sent before it did."""
    conn = RawConnection(port, timeout=30)
    head = (f"POST {PREFIX}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.send(head.encode())
    answer: list[RawResponse] = []
    reader = threading.Thread(target=lambda: answer.append(conn.read_response()), daemon=True)
    reader.start()
    piece = b"%x\r\n%s\r\n" % (chunk, b" " * chunk)
    sent = 0
    try:
        while sent < total and reader.is_alive():
            conn.send(piece)
            sent += chunk
        conn.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server closed the connection once it had answered
    reader.join(30)
    conn.close()
    assert answer, "no answer to the oversized body"
    return answer[0], sent


class _PeakRss:
    """Samples a process's RSS every 20 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("route", ["hot", "starlette"])
def test_a_200_mib_chunked_body_gets_a_413_without_the_server_buffering_it(
    server: ServerProcess, route: str
) -> None:
    wid, node, job = _claimed_job(server.url)
    path = (f"/jobs/{job}/complete_job/completed/0" if route == "hot"
            else "/workflows")
    with _PeakRss(server.proc.pid) as rss:
        answer, sent = _send_chunked(server.port, path, 200 * MIB)
    assert answer.status == 413
    assert "--max-body-bytes" in answer.json()["errorMessage"]
    assert answer.header("connection") == "close"
    assert sent < 200 * MIB  # refused while the body was still coming
    grown = (rss.peak - rss.base) / MIB
    assert grown < 100, f"server RSS grew by {grown:.0f} MiB"
    http = Http(server.url)  # and the server carries on
    assert http.ok("GET", f"/jobs/{job}")["status"] == "running"
    http.close()


def test_a_declared_content_length_over_the_limit_is_refused_before_the_body_is_sent(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--max-body-bytes", "1000")
    conn = RawConnection(srv.port)
    try:
        conn.send(f"POST {PREFIX}/workflows HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n"
                  "Expect: 100-continue\r\n\r\n".encode())
        answer = conn.read_response()
        assert answer.status == 413 and conn.closed_by_server(5)
    finally:
        conn.close()
    http = Http(srv.url)
    try:  # a body at the limit is fine
        status, _ = http.request("POST", "/workflows", raw=b'{"name": "n", "user": "u"}'
                                 + b" " * 974)
        assert status == 200
    finally:
        http.close()


def _head_with(headers: dict[str, str]) -> bytes:
    return request_bytes("GET", "/ping", headers=headers)


@pytest.mark.parametrize(("headers", "says"), [
    ({f"x-h{i}": "v" for i in range(101)}, "header fields"),
    ({"x-big": "v" * (65 * 1024)}, "head is larger"),
], ids=["101 header fields", "a 65 KiB header"])
def test_a_request_head_over_a_limit_gets_a_431(
    shared_server: ServerProcess, headers: dict[str, str], says: str
) -> None:
    conn = RawConnection(shared_server.port)
    try:
        conn.send(_head_with(headers))
        answer = conn.read_response()
    finally:
        conn.close()
    assert answer.status == 431 and says in answer.json()["errorMessage"]


def test_a_head_that_never_ends_is_refused_once_it_passes_the_limit(
    shared_server: ServerProcess,
) -> None:
    conn = RawConnection(shared_server.port)
    try:
        conn.send(f"GET {PREFIX}/ping HTTP/1.1\r\nHost: x\r\nX-Endless: ".encode())
        answer: RawResponse | None = None
        for _ in range(40):  # 40 x 8 KiB, well past 64 KiB, in separate reads
            try:
                conn.send(b"v" * 8192)
            except OSError:
                break
            time.sleep(0.005)
        answer = conn.read_response()
    finally:
        conn.close()
    assert answer is not None and answer.status == 431


def test_a_head_within_the_limits_is_answered(shared_server: ServerProcess) -> None:
    conn = RawConnection(shared_server.port)
    try:
        conn.send(_head_with({f"x-h{i}": "v" * 500 for i in range(90)}))
        assert conn.read_response().status == 200
    finally:
        conn.close()


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _wait_closed(socks: list[socket.socket], timeout: float) -> float:
    """Waits until the server has closed every socket; returns the seconds it took."""
    started = time.monotonic()
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    left = len(socks)
    while left and time.monotonic() - started < timeout:
        for key, _ in selector.select(0.2):
            sock: Any = key.fileobj
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                selector.unregister(sock)
                left -= 1
    selector.close()
    assert left == 0, f"{left} of {len(socks)} connections still open after {timeout} s"
    return time.monotonic() - started


def test_2000_idle_connections_are_closed_within_the_idle_timeout_and_others_still_served(
    server_factory: Callable[..., ServerProcess],
) -> None:
    _raise_fd_limit(2400)
    srv = server_factory("--idle-timeout", "2")
    socks: list[socket.socket] = []
    try:
        opened = time.monotonic()
        for i in range(2000):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            if i % 2:  # half never send anything, half stop in the middle of a head
                sock.sendall(f"GET {PREFIX}/ping HTTP/1.1\r\nHost: x\r\n".encode())
            socks.append(sock)
        http = Http(srv.url)
        try:
            assert http.ok("GET", "/ping") == {"status": "ok"}
        finally:
            http.close()
        _wait_closed(socks, timeout=10)
        took = time.monotonic() - opened
        assert took < 2 + 4, f"closing the idle connections took {took:.1f} s"
    finally:
        for sock in socks:
            sock.close()
    assert " ERROR " not in srv.log_text()


def test_a_connection_is_kept_while_it_sends_requests_within_the_idle_timeout(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--idle-timeout", "1")
    conn = RawConnection(srv.port)
    try:
        for _ in range(4):  # 2 s in all, each gap shorter than the timeout
            assert conn.request("GET", "/ping").status == 200
            time.sleep(0.5)
        assert conn.closed_by_server(3)
    finally:
        conn.close()


def test_connections_over_the_cap_get_a_503_and_one_warning(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--max-connections", "20")
    kept = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(20)]
    try:
        time.sleep(0.3)  # let the server accept them all
        for _ in range(5):
            conn = RawConnection(srv.port)
            try:
                answer = conn.read_response()
                assert answer.status == 503 and conn.closed_by_server(5)
            finally:
                conn.close()
    finally:
        for sock in kept:
            sock.close()
    time.sleep(0.3)
    http = Http(srv.url)
    try:
        assert http.ok("GET", "/ping") == {"status": "ok"}
    finally:
        http.close()
    warnings = [line for line in srv.log_text().splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and "connection limit reached" in warnings[0]


def test_a_completion_still_works_under_the_default_limits(server: ServerProcess) -> None:
    wid, node, job = _claimed_job(server.url)
    http = Http(server.url)
    try:
        done = http.ok("POST", f"/jobs/{job}/complete_job/completed/0",
                       result_body(job, wid, node))
        assert done["status"] == "completed"
    finally:
        http.close()
