"""The protocol's fast lane over real sockets: framing, keep-alive, pipelining, errors, token."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.raw_http import RawConnection, RawResponse, request_bytes
from tests.integration.server_http import Http, compute_node, result_body

pytestmark = pytest.mark.integration


def _claimed(url: str, n: int) -> tuple[int, int, list[int]]:
    """A fresh workflow of ``n`` jobs, all claimed: ``(workflow id, node id, job ids)``."""
    http = Http(url)
    try:
        wid = http.ok("POST", "/workflows", {"name": "fast", "user": "t"})["id"]
        jobs = [{"workflow_id": wid, "name": f"j{i}", "command": "true"} for i in range(n)]
        http.ok("POST", "/bulk_jobs", {"jobs": jobs})
        http.ok("POST", f"/workflows/{wid}/initialize_jobs")
        node = http.ok("POST", "/compute_nodes", compute_node(wid))["id"]
        claimed = http.ok("POST", f"/workflows/{wid}/claim_next_jobs?limit={n}")["jobs"]
        return wid, node, sorted(job["id"] for job in claimed)
    finally:
        http.close()


def _assert_json_ok(response: RawResponse) -> Any:
    assert (response.status, response.reason) == (200, "OK"), response
    names = [name for name, _ in response.headers]
    assert names[:2] == ["date", "server"], names
    assert response.header("content-type") == "application/json"
    assert "transfer-encoding" not in names
    return response.json()


def test_many_requests_on_one_keep_alive_connection_each_get_one_whole_json_answer(
    shared_server,
) -> None:
    wid, node, ids = _claimed(shared_server.url, 20)
    conn = RawConnection(shared_server.port)
    try:
        for jid in ids:
            started = _assert_json_ok(conn.request("PUT", f"/jobs/{jid}/start_job/0/{node}"))
            assert started["id"] == jid and started["status"] == "running"
            done = conn.request(
                "POST", f"/jobs/{jid}/complete_job/completed/0", result_body(jid, wid, node)
            )
            assert _assert_json_ok(done)["id"] == jid
            assert done.header("connection") is None
        state = _assert_json_ok(conn.request("GET", f"/workflows/{wid}/is_complete"))
        assert state["is_complete"] is True
        assert conn.buffer == b""
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("version", "headers"),
    [("1.1", {"Connection": "close"}), ("1.0", {})],
    ids=["connection-close", "http-1.0"],
)
def test_a_request_that_ends_the_connection_gets_connection_close_and_the_socket_closes(
    shared_server, version: str, headers: dict[str, str]
) -> None:
    wid, _, _ = _claimed(shared_server.url, 1)
    conn = RawConnection(shared_server.port)
    try:
        conn.send(request_bytes("GET", f"/workflows/{wid}/is_complete", headers=headers,
                                version=version))
        response = conn.read_response()
        assert _assert_json_ok(response)["is_complete"] is False
        assert response.header("connection") == "close"
        assert conn.closed_by_server(5)
    finally:
        conn.close()


def test_a_body_split_across_several_tcp_reads_is_collected_whole(shared_server) -> None:
    wid, node, (jid,) = _claimed(shared_server.url, 1)
    conn = RawConnection(shared_server.port)
    try:
        _assert_json_ok(conn.request("PUT", f"/jobs/{jid}/start_job/0/{node}"))
        whole = request_bytes("POST", f"/jobs/{jid}/complete_job/completed/0",
                              result_body(jid, wid, node))
        head_end = whole.index(b"\r\n\r\n") + 4
        for piece in (whole[:20], whole[20:head_end], whole[head_end:head_end + 7],
                      whole[head_end + 7:]):
            conn.send(piece)
            time.sleep(0.05)
        assert _assert_json_ok(conn.read_response())["status"] == "completed"
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("POST", "/jobs/{job}/complete_job/completed/0", b"{not json", 400),
        ("POST", "/jobs/{job}/complete_job/completed/0", b"", 400),
        ("POST", "/jobs/{job}/complete_job/finished/0", "result", 400),
        ("POST", "/jobs/{job}/complete_job/completed/0", {"job_id": 1}, 422),
        ("PUT", "/jobs/abc/start_job/0/1", None, 400),
        ("PUT", "/jobs/{job}/start_job/7/{node}", None, 422),
        ("POST", "/workflows/{wid}/claim_next_jobs?limit=x", None, 400),
        ("POST", "/workflows/999999/claim_next_jobs", None, 404),
        ("GET", "/workflows/x/is_complete", None, 400),
        ("POST", "/workflows/{wid}/batch_complete_jobs", [1], 422),
        ("POST", "/workflows/{wid}/batch_start_jobs", [1], 422),
        ("POST", "/workflows/{wid}/batch_start_jobs", {"run_id": 0, "job_ids": [1]}, 422),
        ("POST", "/workflows/{wid}/batch_start_jobs",
         {"run_id": 0, "compute_node_id": "{node}", "job_ids": ["1"]}, 422),
        ("POST", "/workflows/{wid}/batch_start_jobs",
         {"run_id": 0, "compute_node_id": "{node}", "job_ids": list(range(10001))}, 422),
    ],
)
def test_a_bad_request_gets_the_same_error_from_the_fast_lane_and_the_asgi_path(
    shared_server, method: str, path: str, body: Any, expected: int
) -> None:
    wid, node, (jid,) = _claimed(shared_server.url, 1)
    path = path.replace("{wid}", str(wid)).replace("{job}", str(jid)).replace("{node}", str(node))
    if body == "result":
        body = result_body(jid, wid, node)
    elif isinstance(body, dict) and body.get("compute_node_id") == "{node}":
        body = dict(body, compute_node_id=node)
    conn = RawConnection(shared_server.port)
    try:
        fast = conn.request(method, path, body)
        # Expect: 100-continue keeps a request out of the fast lane: uvicorn + HotRoutes.serve
        slow = conn.request(method, path, body, headers={"Expect": "100-continue"})
    finally:
        conn.close()
    assert fast.status == expected, fast
    assert (slow.status, slow.body) == (fast.status, fast.body)
    error = fast.json()
    assert error["code"] == expected and error["error"]["message"] == error["errorMessage"]


def test_batch_start_jobs_starts_a_claim_in_one_request_and_counts_in_its_metrics_key(
    shared_server,
) -> None:
    wid, node, ids = _claimed(shared_server.url, 5)
    conn = RawConnection(shared_server.port)
    try:
        answer = _assert_json_ok(conn.request(
            "POST", f"/workflows/{wid}/batch_start_jobs",
            {"run_id": 0, "compute_node_id": node, "job_ids": [*ids, 999999]},
        ))
        metrics = _assert_json_ok(conn.request("GET", "/metrics"))
    finally:
        conn.close()
    assert sorted(answer["started"]) == ids
    assert [e["job_id"] for e in answer["errors"]] == [999999]
    assert metrics["requests"]["POST /workflows/{id}/batch_start_jobs"]["count"] >= 1


@pytest.mark.parametrize(
    "order",
    [("start", "is_complete"), ("start", "workflow"), ("workflow", "start"),
     ("is_complete", "start", "complete", "is_complete", "workflow")],
    ids=["hot-hot", "hot-normal", "normal-hot", "five-mixed"],
)
def test_pipelined_requests_in_one_write_are_answered_whole_and_in_order(
    shared_server, order: tuple[str, ...]
) -> None:
    wid, node, (jid,) = _claimed(shared_server.url, 1)
    requests = {
        "start": (request_bytes("PUT", f"/jobs/{jid}/start_job/0/{node}"),
                  lambda r: r["status"] == "running"),
        "complete": (request_bytes("POST", f"/jobs/{jid}/complete_job/completed/0",
                                   result_body(jid, wid, node)),
                     lambda r: r["status"] == "completed"),
        "is_complete": (request_bytes("GET", f"/workflows/{wid}/is_complete"),
                        lambda r: "is_canceled" in r),
        "workflow": (request_bytes("GET", f"/workflows/{wid}"), lambda r: r["id"] == wid),
    }
    conn = RawConnection(shared_server.port)
    try:
        conn.send(b"".join(requests[name][0] for name in order))
        for name in order:
            payload = _assert_json_ok(conn.read_response())
            assert requests[name][1](payload), (name, payload)
        assert not conn.closed_by_server(0.2) and conn.buffer == b""
    finally:
        conn.close()


def _hold_write_lock(db_path: Path) -> sqlite3.Connection:
    blocker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def test_a_client_that_disconnects_while_its_write_is_queued_leaves_the_server_healthy(
    server,
) -> None:
    wid, node, ids = _claimed(server.url, 3)
    blocker = _hold_write_lock(server.db_path)
    try:
        for jid in ids:
            conn = RawConnection(server.port)
            conn.send(request_bytes("PUT", f"/jobs/{jid}/start_job/0/{node}"))
            time.sleep(0.1)  # parsed and queued behind the lock
            conn.close(reset=ids.index(jid) % 2 == 0)
        time.sleep(0.3)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    conn = RawConnection(server.port)
    try:
        for jid in ids:
            # the queued starts happened; starting again on the same node is idempotent
            answer = _assert_json_ok(conn.request("PUT", f"/jobs/{jid}/start_job/0/{node}"))
            assert answer["status"] == "running"
    finally:
        conn.close()
    log = server.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log


def test_sigterm_lets_an_in_flight_fast_lane_answer_finish_then_closes(server) -> None:
    _, node, (jid,) = _claimed(server.url, 1)
    conn = RawConnection(server.port)
    blocker = _hold_write_lock(server.db_path)
    try:
        conn.send(request_bytes("PUT", f"/jobs/{jid}/start_job/0/{node}"))
        time.sleep(0.2)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.proc.poll() is None, "the server quit with an answer in flight"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    try:
        response = conn.read_response()
        assert _assert_json_ok(response)["status"] == "running"
        assert response.header("connection") == "close"
        assert conn.closed_by_server(5)
    finally:
        conn.close()
    assert server.proc.wait(15) == 0


def test_a_fast_lane_route_answers_401_without_the_token_and_200_with_it(
    server_factory, tmp_path: Path
) -> None:
    import base64

    token = "s3cret-token-for-the-fast-lane"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n", encoding="utf-8")
    srv = server_factory("--token-file", str(token_file))
    bearer = {"Authorization": f"Bearer {token}"}
    conn = RawConnection(srv.port)
    try:
        wid = conn.request("POST", "/workflows", {"name": "t", "user": "t"},
                           headers=bearer).json()["id"]
        path = f"/workflows/{wid}/is_complete"
        missing = conn.request("GET", path)
        wrong = conn.request("GET", path, headers={"Authorization": "Bearer nope"})
        slow_route = conn.request("GET", f"/workflows/{wid}")
        basic = base64.b64encode(f"anyone:{token}".encode()).decode()
        accepted = [conn.request("GET", path, headers=h)
                    for h in (bearer, {"Authorization": f"Basic {basic}"})]
    finally:
        conn.close()
    assert missing.status == wrong.status == 401
    assert missing.body == wrong.body == slow_route.body  # the middleware's own 401 body
    assert "token" in missing.json()["errorMessage"]
    assert [_assert_json_ok(r)["is_canceled"] for r in accepted] == [False, False]
