"""batch_start_jobs over real HTTP: starts claimed jobs, judges each id alone, refuses bad input."""

from __future__ import annotations

import sqlite3

import pytest

from tests.integration.server_http import Http, compute_node, result_body

pytestmark = pytest.mark.integration


def _claimed_workflow(http: Http, n: int, claim: int) -> tuple[int, int, list[int]]:
    wid = http.ok("POST", "/workflows", {"name": "flat", "user": "t"})["id"]
    jobs = [{"workflow_id": wid, "name": f"j{i}", "command": "true"} for i in range(n)]
    ids = [j["id"] for j in http.ok("POST", "/bulk_jobs", {"jobs": jobs})["jobs"]]
    http.ok("POST", f"/workflows/{wid}/initialize_jobs")
    node = http.ok("POST", "/compute_nodes", compute_node(wid))["id"]
    claimed = http.ok("POST", f"/workflows/{wid}/claim_next_jobs?limit={claim}")["jobs"]
    assert [j["id"] for j in claimed] == ids[:claim]
    return wid, node, ids


def test_batch_start_marks_every_claimed_job_running_on_the_node(server) -> None:
    http = Http(server.url)
    wid, node, ids = _claimed_workflow(http, 5, 3)
    answer = http.ok("POST", f"/workflows/{wid}/batch_start_jobs",
                     {"run_id": 0, "compute_node_id": node, "job_ids": ids[:3]})
    assert answer == {"started": ids[:3], "errors": []}
    statuses = {j["id"]: j["status"] for j in http.ok("GET", f"/jobs?workflow_id={wid}")["items"]}
    assert statuses == {ids[0]: "running", ids[1]: "running", ids[2]: "running",
                        ids[3]: "ready", ids[4]: "ready"}
    with sqlite3.connect(server.db_path) as conn:
        nodes = conn.execute("SELECT active_compute_node_id FROM job WHERE id IN "
                             f"({','.join('?' * 3)})", ids[:3]).fetchall()
    assert nodes == [(node,)] * 3
    for job in ids[:3]:
        http.ok("POST", f"/jobs/{job}/complete_job/completed/0", result_body(job, wid, node))


def test_a_repeated_batch_start_counts_the_running_jobs_as_started(server) -> None:
    http = Http(server.url)
    wid, node, ids = _claimed_workflow(http, 2, 2)
    body = {"run_id": 0, "compute_node_id": node, "job_ids": ids}
    first = http.ok("POST", f"/workflows/{wid}/batch_start_jobs", body)
    again = http.ok("POST", f"/workflows/{wid}/batch_start_jobs", body)
    assert first == again == {"started": ids, "errors": []}


def test_each_id_that_cannot_start_is_listed_alone_and_the_others_start(server) -> None:
    http = Http(server.url)
    wid, node, ids = _claimed_workflow(http, 4, 2)
    other, _, other_ids = _claimed_workflow(http, 1, 1)
    body = {"run_id": 0, "compute_node_id": node,
            "job_ids": [ids[0], ids[2], 999999, other_ids[0], ids[1], ids[1]]}
    answer = http.ok("POST", f"/workflows/{wid}/batch_start_jobs", body)
    assert answer["started"] == [ids[0], ids[1]]
    refused = {e["job_id"]: e["message"] for e in answer["errors"]}
    assert set(refused) == {ids[2], 999999, other_ids[0], ids[1]}
    assert "ready, not pending" in refused[ids[2]]
    assert f"not in workflow {wid}" in refused[999999]
    assert other != wid


def test_a_batch_start_with_the_wrong_run_id_starts_nothing(server) -> None:
    http = Http(server.url)
    wid, node, ids = _claimed_workflow(http, 2, 2)
    status, body = http.request("POST", f"/workflows/{wid}/batch_start_jobs",
                                {"run_id": 5, "compute_node_id": node, "job_ids": ids})
    assert status == 422
    assert "run_id 5" in body["errorMessage"]
    statuses = {j["status"] for j in http.ok("GET", f"/jobs?workflow_id={wid}")["items"]}
    assert statuses == {"pending"}


@pytest.mark.parametrize(("body", "expected"), [
    ([1, 2], "must be an object"),
    ({"compute_node_id": 1, "job_ids": [1]}, "run_id"),
    ({"run_id": 0, "job_ids": [1]}, "compute_node_id"),
    ({"run_id": 0, "compute_node_id": 1, "job_ids": "1,2"}, "job_ids"),
    ({"run_id": 0, "compute_node_id": 1, "job_ids": [1, "2"]}, "job_ids"),
    ({"run_id": 0, "compute_node_id": 1, "job_ids": [True]}, "job_ids"),
    ({"run_id": 0, "compute_node_id": 1, "job_ids": list(range(10001))}, "at most 10000"),
])
def test_a_malformed_batch_start_body_gets_a_422_naming_the_field(server, body, expected) -> None:
    http = Http(server.url)
    wid, _, _ = _claimed_workflow(http, 1, 1)
    status, answer = http.request("POST", f"/workflows/{wid}/batch_start_jobs", body)
    assert status == 422, answer
    assert expected in answer["errorMessage"]
