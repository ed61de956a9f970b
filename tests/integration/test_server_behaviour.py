"""Server behaviour over real HTTP: exclusivity, idempotence, bad input, crash recovery, locks."""

from __future__ import annotations

import re
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.integration.server_http import Http, compute_node, result_body, staged_workflow

pytestmark = pytest.mark.integration


def _flat_workflow(http: Http, n: int) -> tuple[int, list[int]]:
    wid = http.ok("POST", "/workflows", {"name": "flat", "user": "t"})["id"]
    jobs = [{"workflow_id": wid, "name": f"j{i}", "command": "true"} for i in range(n)]
    ids = [j["id"] for j in http.ok("POST", "/bulk_jobs", {"jobs": jobs})["jobs"]]
    http.ok("POST", f"/workflows/{wid}/initialize_jobs")
    return wid, ids


def test_eight_threads_claiming_concurrently_never_get_the_same_job(server) -> None:
    http = Http(server.url)
    wid, ids = _flat_workflow(http, 400)
    claims: list[list[int]] = [[] for _ in range(8)]

    def claimer(slot: int) -> None:
        client = Http(server.url)
        while True:
            got = client.ok("POST", f"/workflows/{wid}/claim_next_jobs?limit=3")["jobs"]
            if not got:
                break
            claims[slot].extend(j["id"] for j in got)
        client.close()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = [j for c in claims for j in c]
    assert len(everything) == len(set(everything))
    assert sorted(everything) == ids
    assert sum(1 for c in claims if c) > 1


def test_a_job_completed_twice_gets_a_4xx_the_second_time_and_nothing_changes(server) -> None:
    http = Http(server.url)
    wid, (job,) = _flat_workflow(http, 1)
    node = http.ok("POST", "/compute_nodes", compute_node(wid))["id"]
    http.ok("POST", f"/workflows/{wid}/claim_next_jobs")
    http.ok("PUT", f"/jobs/{job}/start_job/0/{node}")
    http.ok("PUT", f"/jobs/{job}/start_job/0/{node}")  # idempotent for the same node
    http.ok("POST", f"/jobs/{job}/complete_job/completed/0", result_body(job, wid, node))
    status, body = http.request(
        "POST",
        f"/jobs/{job}/complete_job/failed/0",
        result_body(job, wid, node, return_code=3, status="failed"),
    )
    assert status == 422 and "already completed" in body["errorMessage"]
    assert http.ok("GET", f"/jobs/{job}")["status"] == "completed"
    results = http.ok("GET", f"/results?workflow_id={wid}")
    assert [r["return_code"] for r in results["items"]] == [0]


def test_a_batch_completion_stores_the_good_entries_and_refuses_the_bad_ones_alone(server) -> None:
    http = Http(server.url)
    wid, (good, twice, bad_node) = _flat_workflow(http, 3)
    node = http.ok("POST", "/compute_nodes", compute_node(wid))["id"]
    http.ok("POST", f"/workflows/{wid}/claim_next_jobs?limit=3")
    for job in (good, twice, bad_node):
        http.ok("PUT", f"/jobs/{job}/start_job/0/{node}")
    http.ok("POST", f"/jobs/{twice}/complete_job/completed/0", result_body(twice, wid, node))

    def entry(job: int, node_id: int) -> dict:
        return {
            "job_id": job,
            "run_id": 0,
            "status": "completed",
            "result": result_body(job, wid, node_id),
        }

    answer = http.ok(
        "POST",
        f"/workflows/{wid}/batch_complete_jobs",
        {"completions": [entry(good, node), entry(twice, node), entry(bad_node, node + 999)]},
    )
    assert answer["completed"] == [good]
    assert sorted(e["job_id"] for e in answer["errors"]) == [twice, bad_node]
    assert http.ok("GET", f"/jobs/{bad_node}")["status"] == "running"
    results = http.ok("GET", f"/results?workflow_id={wid}")["items"]
    assert sorted(r["job_id"] for r in results) == [good, twice]
    http.ok("POST", f"/jobs/{bad_node}/complete_job/completed/0", result_body(bad_node, wid, node))
    assert http.ok("GET", f"/workflows/{wid}/is_complete")["is_complete"] is True


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", "/workflows/999", None, 404),
        ("GET", "/workflows/abc", None, 400),
        ("GET", "/jobs/999", None, 404),
        ("GET", "/workflows/999/is_complete", None, 404),
        ("POST", "/workflows/999/claim_next_jobs", None, 404),
        ("POST", "/workflows/{wid}/claim_next_jobs?limit=x", None, 400),
        ("POST", "/jobs/{job}/complete_job/finished/0", "result", 400),
        ("POST", "/jobs/999/complete_job/completed/0", "result", 404),
        ("POST", "/jobs/{job}/complete_job/completed/7", "result", 422),
        ("POST", "/jobs/{job}/complete_job/completed/0", {"job_id": 1}, 422),
        ("POST", "/jobs/{job}/complete_job/completed/0", b"{not json", 400),
        ("PUT", "/jobs/{job}/start_job/0/1", None, 422),
        ("POST", "/workflows", {"name": "no user"}, 422),
        ("POST", "/workflows", b"[1, 2", 400),
        ("POST", "/workflows", [1, 2], 422),
        ("POST", "/bulk_jobs", {"jobs": [{"workflow_id": 999, "name": "a", "command": "x"}]}, 404),
        ("POST", "/bulk_jobs", {"jobs": [{"workflow_id": "{wid}", "name": "a"}]}, 422),
        (
            "POST",
            "/bulk_jobs",
            {
                "jobs": [
                    {
                        "workflow_id": "{wid}",
                        "name": "a",
                        "command": "x",
                        "depends_on_job_ids": [424242],
                    }
                ]
            },
            422,
        ),
        (
            "POST",
            "/resource_requirements",
            {"workflow_id": "{wid}", "name": "r", "memory": "lots"},
            422,
        ),
        ("GET", "/jobs?workflow_id={wid}&status=sleepy", None, 400),
        ("POST", "/workflows/{wid}/claim_jobs_based_on_resources/5", {"num_cpus": 1}, 422),
        ("DELETE", "/workflows/999", None, 404),
        ("GET", "/no/such/route", None, 404),
    ],
)
def test_bad_requests_get_a_4xx_json_error_and_never_a_5xx(
    shared_server, method, path, body, expected
) -> None:
    http = Http(shared_server.url)
    wid, (job,) = _flat_workflow(http, 1)
    path = path.replace("{wid}", str(wid)).replace("{job}", str(job))
    if body == "result":
        body = result_body(job, wid, 1)
    if isinstance(body, dict) and "jobs" in body:
        for j in body["jobs"]:
            if j.get("workflow_id") == "{wid}":
                j["workflow_id"] = wid
    if isinstance(body, dict) and body.get("workflow_id") == "{wid}":
        body["workflow_id"] = wid
    if isinstance(body, bytes):
        status, data = http.request(method, path, raw=body)
    else:
        status, data = http.request(method, path, body)
    assert status == expected, data
    assert isinstance(data["errorMessage"], str) and data["error"]


def _run_job(http: Http, wid: int, node: int, job_id: int) -> None:
    """Starts and completes one claimed job over HTTP."""
    http.ok("PUT", f"/jobs/{job_id}/start_job/0/{node}")
    http.ok("POST", f"/jobs/{job_id}/complete_job/completed/0", result_body(job_id, wid, node))


def _run_jobs(http: Http, wid: int, node: int, count: int) -> list[int]:
    done: list[int] = []
    while len(done) < count:
        got = http.ok("POST", f"/workflows/{wid}/claim_next_jobs?limit={count - len(done)}")["jobs"]
        assert got, "no ready job to run"
        for job in got:
            _run_job(http, wid, node, job["id"])
            done.append(job["id"])
    return done


def test_sigkill_after_completions_then_restart_keeps_state_and_redoes_unblocking(
    server_factory, tmp_path: Path
) -> None:
    first = server_factory("--unblock-delay", "30")
    http = Http(first.url)
    wid, stages, barriers = staged_workflow(http, 2, 20)
    http.ok("POST", f"/workflows/{wid}/initialize_jobs")
    node = http.ok("POST", "/compute_nodes", compute_node(wid))["id"]
    _run_jobs(http, wid, node, 20)
    # the delayed unblocker has not run: the barrier is still blocked, the completions durable
    assert http.ok("GET", f"/jobs/{barriers[0]}")["status"] == "blocked"
    http.close()
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = server_factory(db_path=first.db_path, log_name="server2.log")
    http = Http(second.url)
    progress = http.ok("GET", f"/workflows/{wid}/progress")
    assert progress["counts"]["completed"] == 20
    assert http.ok("GET", f"/jobs/{barriers[0]}")["status"] == "ready"
    _run_jobs(http, wid, node, 1)  # the barrier
    _run_jobs(http, wid, node, 20)
    _run_jobs(http, wid, node, 1)
    assert http.ok("GET", f"/workflows/{wid}/is_complete")["is_complete"] is True
    with sqlite3.connect(second.db_path) as conn:
        rows = conn.execute(
            "SELECT COUNT(*), SUM(unblocking_processed) FROM job WHERE status = 5"
        ).fetchone()
    assert rows == (42, 42)
    assert "redoing unblocking" in second.log_text()


def test_unstarted_claims_are_ready_again_after_a_restart_and_their_claimant_may_start_them(
    server_factory,
) -> None:
    # a claim committed but never answered (server killed in between) must not strand its jobs
    first = server_factory()
    http = Http(first.url)
    wid, ids = _flat_workflow(http, 4)
    node = http.ok("POST", "/compute_nodes", compute_node(wid))["id"]
    claim = http.ok("POST", f"/workflows/{wid}/claim_next_jobs?limit=3")
    claimed = [j["id"] for j in claim["jobs"]]
    http.close()
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = server_factory(db_path=first.db_path, log_name="server2.log")
    http = Http(second.url)
    assert {http.ok("GET", f"/jobs/{j}")["status"] for j in claimed} == {"ready"}
    # the claimant that did get the answer starts one; another worker claims the others
    _run_job(http, wid, node, claimed[0])
    again = http.ok("POST", f"/workflows/{wid}/claim_next_jobs?limit=10")
    others = [j["id"] for j in again["jobs"]]
    assert sorted(others) == sorted(set(ids) - {claimed[0]})
    for job in others:
        _run_job(http, wid, node, job)
    assert http.ok("GET", f"/workflows/{wid}/is_complete")["is_complete"] is True
    assert "claimed jobs that never started are ready again" in second.log_text()
    http.close()


def test_a_write_blocked_by_another_process_is_retried_then_fails_with_503(server_factory) -> None:
    srv = server_factory("--lock-error-after", "1", "--log-level", "debug")
    http = Http(srv.url)
    wid = http.ok("POST", "/workflows", {"name": "locked", "user": "t"})["id"]
    blocker = sqlite3.connect(srv.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        status, body = http.request(
            "POST", "/bulk_jobs", {"jobs": [{"workflow_id": wid, "name": "a", "command": "true"}]}
        )
        elapsed = time.monotonic() - started
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert status == 503 and "locked" in body["errorMessage"]
    assert 0.9 <= elapsed < 10
    log = srv.log_text()
    assert re.search(
        r" DEBUG torc_stress\.server\.writer database is locked, retrying .*attempt=", log
    )
    assert re.search(r" ERROR torc_stress\.server\.writer database is locked ", log)
    # the lock is gone: the same write now succeeds and the metrics counted the trouble
    http.ok("POST", "/bulk_jobs", {"jobs": [{"workflow_id": wid, "name": "a", "command": "true"}]})
    metrics = http.ok("GET", "/metrics")
    assert metrics["lock_errors"] == 1
    assert metrics["write_path"]["create_jobs"]["busy_retries"] >= 1


def test_a_write_blocked_briefly_by_another_process_succeeds_after_retries(server_factory) -> None:
    srv = server_factory("--log-level", "debug")
    http = Http(srv.url)
    blocker = sqlite3.connect(srv.db_path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.5, lambda: blocker.execute("ROLLBACK"))
    timer.start()
    try:
        wid = http.ok("POST", "/workflows", {"name": "later", "user": "t"})["id"]
    finally:
        timer.join()
        blocker.close()
    assert http.ok("GET", f"/workflows/{wid}")["name"] == "later"
    assert "database is locked, retrying" in srv.log_text()
    assert " ERROR " not in srv.log_text()


def test_openapi_lists_every_route_and_metrics_has_the_documented_keys(server) -> None:
    from torc_stress.server.app import PREFIX

    http = Http(server.url)
    wid, _ = _flat_workflow(http, 3)
    document = http.ok("GET", "/openapi.json")
    listed = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    # every route the server answers is documented: probe each documented path's neighbours
    assert ("POST", "/jobs/{id}/complete_job/{status}/{run_id}") in listed
    assert ("GET", "/workflows/{id}/progress") in listed
    assert ("GET", "/metrics") in listed
    assert len(listed) >= 38
    assert document["servers"][0]["url"] == PREFIX
    metrics = http.ok("GET", "/metrics")
    assert metrics["schema"] == 1
    assert set(metrics) >= {
        "server",
        "write_path",
        "transactions",
        "unblock",
        "requests",
        "lock_errors",
    }
    assert set(metrics["server"]) >= {
        "version",
        "pid",
        "started_at",
        "uptime_s",
        "cpu_user_s",
        "cpu_system_s",
        "rss_bytes",
        "peak_rss_bytes",
    }
    summary = metrics["write_path"]["create_jobs"]["wait_ms"]
    assert set(summary) == {"count", "sum", "p50", "p90", "p99", "max"}
    assert set(metrics["unblock"]) >= {
        "passes",
        "completions",
        "ready",
        "canceled",
        "batch_size",
        "duration_ms",
        "hop_ms",
    }
    assert metrics["requests"]["POST /bulk_jobs"]["count"] == 1
    progress = http.ok("GET", f"/workflows/{wid}/progress")
    assert progress["total"] == 3 and progress["counts"] == {"ready": 3}
    assert progress["by_depth"] == [{"depth": 0, "total": 3, "counts": {"ready": 3}}]


def test_sigterm_flushes_and_writes_the_final_metrics_file(server) -> None:
    http = Http(server.url)
    _flat_workflow(http, 2)
    http.close()
    assert server.stop() == 0
    import json

    document = json.loads(server.metrics_path.read_text())
    assert document["write_path"]["create_jobs"]["count"] == 1


def test_the_final_metrics_file_counts_every_completion_up_to_the_stop(server) -> None:
    # completions keep arriving across a periodic dump (every 2 s) and right up to SIGTERM
    http = Http(server.url)
    wid, ids = _flat_workflow(http, 600)
    node = http.ok("POST", "/compute_nodes", compute_node(wid))["id"]
    done = 0
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline or done == 0:
        jobs = http.ok("POST", f"/workflows/{wid}/claim_next_jobs?limit=10")["jobs"]
        if not jobs:
            break
        for job in jobs:
            _run_job(http, wid, node, job["id"])
            done += 1
    http.close()
    assert server.stop() == 0
    import json

    document = json.loads(server.metrics_path.read_text())
    assert document["write_path"]["complete_job"]["count"] == done
    assert document["unblock"]["completions"] == done
    assert document["requests"]["POST /jobs/{id}/complete_job/{status}/{run_id}"]["count"] == done
    assert not list(server.metrics_path.parent.glob("metrics.json*.tmp"))
