"""Faults against real processes: a dead worker, a server killed and restarted, a server that
stops answering for longer than the lease; owned claims and attempts through the API.

Every test counts executions from the workers' journals (``executions_*.jsonl``), not only
results: a job must never run twice at the same time, and a server restart must make no job
run twice at all.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.test_worker import (
    SEED,
    OwnServer,
    assert_all_completed,
    create,
    running_server,
    sleepers_workflow,
    start_one_worker,
    start_workers,
    stop,
    wait_all,
)
from torc_stress.client import TorcClient
from torc_stress.errors import ConflictError

pytestmark = pytest.mark.integration


def journal(out: Path) -> list[dict[str, Any]]:
    """Every execution record the workers wrote."""
    return [orjson.loads(line) for path in sorted(out.glob("executions_*.jsonl"))
            for line in path.read_bytes().splitlines()]


def executions(out: Path, died: dict[int, float] | None = None
               ) -> dict[int, list[tuple[int, float, float | None]]]:
    """job id -> [(attempt, spawned, exited or None)] from the journals.

    ``died``: worker pid -> when it was SIGKILLed; its jobs without an exit line ended then
    (the jobs are near-instant echo commands).
    """
    runs: dict[int, list[tuple[int, float, float | None]]] = defaultdict(list)
    open_runs: dict[tuple[int, int, int], int] = {}
    for rec in sorted(journal(out), key=lambda r: (r["t"], r["e"] != "spawn")):
        if rec["e"] == "spawn":
            key = (rec["pid"], rec["job_id"], rec["attempt"])
            open_runs[key] = len(runs[rec["job_id"]])
            runs[rec["job_id"]].append((rec["attempt"], rec["t"], None))
        else:
            for key, index in list(open_runs.items()):
                if key[1:] == (rec["job_id"], rec["attempt"]):
                    attempt, spawned, _ = runs[key[1]][index]
                    runs[key[1]][index] = (attempt, spawned, rec["t"])
                    del open_runs[key]
                    break
    for (pid, job, _), index in open_runs.items():
        if died and pid in died:
            attempt, spawned, _ = runs[job][index]
            runs[job][index] = (attempt, spawned, died[pid])
    return runs


def overlapping(runs: dict[int, list[tuple[int, float, float | None]]]) -> list[int]:
    """Jobs with an execution spawned while an earlier one of the same job had not exited."""
    bad = []
    for job, items in runs.items():
        ordered = sorted(items, key=lambda r: r[1])
        for earlier, later in zip(ordered, ordered[1:], strict=False):
            if earlier[2] is None or earlier[2] > later[1]:
                bad.append(job)
    return bad


def successful_results_per_job(db: Path) -> dict[int, int]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute(
            "SELECT job_id, count(*) FROM result WHERE status = 5 GROUP BY job_id"))
    finally:
        conn.close()


def wait_for_completed(url: str, workflow_id: int, count: int, timeout: float = 120) -> None:
    with TorcClient(url) as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = client.progress(workflow_id)["counts"]
            if counts.get("completed", 0) >= count:
                return
            time.sleep(0.05)
    raise AssertionError(f"fewer than {count} jobs completed in {timeout} s: {counts}")


@pytest.fixture
def leased_server(tmp_path: Path) -> Iterator[OwnServer]:
    with running_server(tmp_path, "--lease-s", "2") as server:
        yield server


def test_a_sigkilled_worker_s_jobs_run_elsewhere_and_every_job_completes_once(
        leased_server: OwnServer, tmp_path: Path) -> None:
    url = leased_server.url
    workflow_id = create(url, SEED)
    out = tmp_path / "out"
    workers = start_workers(url, workflow_id, out, 4)
    try:
        wait_for_completed(url, workflow_id, 1500)
        workers[0].send_signal(signal.SIGKILL)
        killed_at = time.time()
        codes = wait_all(workers[1:], timeout=300)
        workers[0].wait(10)
    finally:
        stop(workers)
    assert codes == [0, 0, 0]
    assert_all_completed(url, workflow_id, out, 5005, one_file_per_job=False)
    assert set(successful_results_per_job(leased_server.db).values()) == {1}
    runs = executions(out, died={workers[0].pid: killed_at})
    assert len(runs) == 5005
    assert overlapping(runs) == []
    retried = {job for job, items in runs.items() if any(a > 1 for a, _, _ in items)}
    assert retried, "the killed worker held claimed or running jobs: they must be re-run"
    log = leased_server.log.read_text()
    assert "compute node lease expired" in log
    conn = sqlite3.connect(leased_server.db)
    try:
        (attempt_2_end,) = conn.execute(
            "SELECT max(end_time) FROM job WHERE attempt_id > 1").fetchone()
        (requeued,) = conn.execute("SELECT count(*) FROM job WHERE attempt_id > 1").fetchone()
    finally:
        conn.close()
    print(f"\nkill -> last re-run job completed: {attempt_2_end - killed_at:.2f} s "
          f"(lease 2 s, {requeued} jobs re-queued)")
    assert attempt_2_end - killed_at < 2 + 5


def test_a_server_killed_twice_and_restarted_runs_no_job_twice(
        leased_server: OwnServer, tmp_path: Path) -> None:
    url = leased_server.url
    workflow_id = create(url, SEED)
    out = tmp_path / "out"
    workers = start_workers(url, workflow_id, out, 4)
    try:
        for threshold in (1500, 3000):
            wait_for_completed(url, workflow_id, threshold)
            leased_server.kill()
            time.sleep(0.5)
            leased_server.start()
        codes = wait_all(workers, timeout=300)
    finally:
        stop(workers)
    assert codes == [0, 0, 0, 0]
    assert_all_completed(url, workflow_id, out, 5005)
    assert set(successful_results_per_job(leased_server.db).values()) == {1}
    runs = executions(out)
    twice = {job: items for job, items in runs.items() if len(items) > 1}
    assert twice == {}, f"{len(twice)} jobs ran more than once, e.g. {list(twice.items())[:3]}"


def test_a_worker_whose_server_stops_answering_fences_itself_before_its_jobs_move(
        server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory("--lease-s", "1")
    workflow_id = sleepers_workflow(srv.url, tmp_path, 2, 2)
    out = tmp_path / "out"
    worker = start_one_worker(srv.url, workflow_id, out, 2)
    try:
        with TorcClient(srv.url) as client:
            deadline = time.monotonic() + 30
            while len(client.list_jobs(workflow_id, status="running")) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        srv.proc.send_signal(signal.SIGSTOP)  # the server stops answering: a hung host
        time.sleep(2.0)
        srv.proc.send_signal(signal.SIGCONT)
        assert worker.wait(timeout=60) == 0
    finally:
        srv.proc.send_signal(signal.SIGCONT)
        stop([worker])
    runs = executions(out)
    assert sorted(len(items) for items in runs.values()) == [2, 2]
    assert overlapping(runs) == []
    assert {a for items in runs.values() for a, _, _ in items} == {1, 2}
    log = (out / "worker.log").read_text()
    assert "fencing" in log and "new compute node registered" in log


def _one_job_workflow(url: str, tmp_path: Path) -> int:
    spec = tmp_path / "one.json"
    spec.write_bytes(orjson.dumps({"name": "one", "jobs": [{"name": "a", "command": "true"}]}))
    return create(url, spec)


def test_an_expired_attempt_is_refused_and_another_node_finishes_the_job(
        server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory("--lease-s", "0.5")
    workflow_id = _one_job_workflow(srv.url, tmp_path)
    with TorcClient(srv.url) as client:
        run_id = int(client.get_workflow_status(workflow_id)["run_id"])
        node_a = client.create_compute_node(workflow_id, "a", 1, num_cpus=1)["id"]
        node_b = client.create_compute_node(workflow_id, "b", 2, num_cpus=1)["id"]
        assert client.heartbeat(node_a)["lease_s"] == 0.5
        (job,) = client.claim_next_jobs(workflow_id, 1, compute_node_id=node_a)
        with pytest.raises(ConflictError, match="claimed by compute node"):
            client.start_job(job["id"], run_id, node_b)  # an owned claim
        client.start_job(job["id"], run_id, node_a)
        deadline = time.monotonic() + 10
        while client.get_job(job["id"])["status"] != "ready":
            assert time.monotonic() < deadline, "the lease of node a never expired"
            time.sleep(0.05)
        assert client.get_job(job["id"])["attempt_id"] == 2
        late = {"job_id": job["id"], "workflow_id": workflow_id, "run_id": run_id,
                "compute_node_id": node_a, "attempt_id": 1, "return_code": 0,
                "exec_time_minutes": 0.0, "completion_time": "2026-12-03T00:00:00.000Z",
                "status": "completed"}
        with pytest.raises(ConflictError):
            client.complete_job(job["id"], "completed", run_id, late)
        with pytest.raises(ConflictError, match="lease"):
            client.heartbeat(node_a)
        (again,) = client.claim_next_jobs(workflow_id, 1, compute_node_id=node_b)
        assert again["attempt_id"] == 2
        client.start_job(job["id"], run_id, node_b)
        node_c = client.create_compute_node(workflow_id, "c", 3, num_cpus=1)["id"]
        with pytest.raises(ConflictError, match="held by compute node"):
            client.complete_job(job["id"], "completed", run_id,
                                dict(late, compute_node_id=node_c, attempt_id=2))
        assert client.get_job(job["id"])["status"] == "running"
        client.complete_job(job["id"], "completed", run_id,
                            dict(late, compute_node_id=node_b, attempt_id=2))
        results = client.request("GET", "/results", params={"workflow_id": workflow_id,
                                                            "all_runs": True})["items"]
        metrics = client.metrics()
    assert [(r["attempt_id"], r["compute_node_id"]) for r in results] == [(2, node_b)]
    assert metrics["leases"]["expired_nodes"] == 1
    assert metrics["leases"]["requeued_jobs"] == 1


def test_a_node_that_never_heartbeats_is_never_expired(
        server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory("--lease-s", "0.3")
    workflow_id = _one_job_workflow(srv.url, tmp_path)
    with TorcClient(srv.url) as client:
        run_id = int(client.get_workflow_status(workflow_id)["run_id"])
        node = client.create_compute_node(workflow_id, "torc", 1, num_cpus=1)["id"]
        (job,) = client.claim_next_jobs(workflow_id, 1)
        client.start_job(job["id"], run_id, node)
        time.sleep(1.0)
        assert client.get_job(job["id"])["status"] == "running"
        assert client.metrics()["leases"]["expired_nodes"] == 0


def _stage_and_barrier(tmp_path: Path) -> Path:
    spec = tmp_path / "stage.json"
    spec.write_bytes(orjson.dumps({"name": "stage", "jobs": [
        *({"name": f"s_{i}", "command": "true"} for i in range(3)),
        {"name": "barrier", "command": "true", "depends_on": ["s_0", "s_1", "s_2"]}]}))
    return spec


def _run_one(client: TorcClient, workflow_id: int, run_id: int, node: int) -> int:
    (job,) = client.claim_next_jobs(workflow_id, 1, compute_node_id=node)
    client.start_job(job["id"], run_id, node)
    client.complete_job(job["id"], "completed", run_id, {
        "job_id": job["id"], "workflow_id": workflow_id, "run_id": run_id,
        "compute_node_id": node, "attempt_id": job["attempt_id"], "return_code": 0,
        "exec_time_minutes": 0.0, "completion_time": "2026-12-03T00:00:00.000Z",
        "status": "completed"})
    return int(job["id"])


def test_a_second_initialize_of_only_uninitialized_jobs_changes_nothing(
        server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory()
    workflow_id = create(srv.url, _stage_and_barrier(tmp_path))
    with TorcClient(srv.url) as client:
        client.initialize_jobs(workflow_id, only_uninitialized=True)
        run_id = int(client.get_workflow_status(workflow_id)["run_id"])
        node = client.create_compute_node(workflow_id, "w", 1, num_cpus=1)["id"]
        _run_one(client, workflow_id, run_id, node)
        _run_one(client, workflow_id, run_id, node)
        before = {j["id"]: j["status"] for j in client.list_jobs(workflow_id)}
        client.initialize_jobs(workflow_id, only_uninitialized=True)
        assert {j["id"]: j["status"] for j in client.list_jobs(workflow_id)} == before
        _run_one(client, workflow_id, run_id, node)
        barrier = _run_one(client, workflow_id, run_id, node)  # ready once the third is done
        assert client.is_complete(workflow_id)["is_complete"]
    assert barrier == max(before)


def test_a_restart_makes_a_blocked_job_whose_dependencies_are_done_ready(
        tmp_path: Path) -> None:
    server = OwnServer(db=tmp_path / "server.db", log=tmp_path / "server.log")
    server.start()
    try:
        workflow_id = create(server.url, _stage_and_barrier(tmp_path))
        with TorcClient(server.url) as client:
            client.initialize_jobs(workflow_id)
            run_id = int(client.get_workflow_status(workflow_id)["run_id"])
            node = client.create_compute_node(workflow_id, "w", 1, num_cpus=1)["id"]
            for _ in range(3):
                _run_one(client, workflow_id, run_id, node)
        server.kill()
        conn = sqlite3.connect(server.db)  # what the initialize bug used to leave behind
        with conn:
            conn.execute("UPDATE job SET status = 1 WHERE name = 'barrier'")
        conn.close()
        server.start()
        with TorcClient(server.url) as client:
            barrier = [j for j in client.list_jobs(workflow_id) if j["name"] == "barrier"]
        assert barrier[0]["status"] == "ready"
        assert "blocked jobs with every dependency done are ready again" in server.log.read_text()
    finally:
        server.kill()


def test_initializing_a_running_seed_again_changes_nothing_and_it_completes(
        server: Any, tmp_path: Path) -> None:
    workflow_id = create(server.url, SEED)
    out = tmp_path / "out"
    workers = start_workers(server.url, workflow_id, out, 4)
    try:
        wait_for_completed(server.url, workflow_id, 1000)
        with TorcClient(server.url) as client:
            for _ in range(2):  # what workers racing to initialize, or a retry, would send
                client.initialize_jobs(workflow_id, only_uninitialized=True)
        codes = wait_all(workers, timeout=300)
    finally:
        stop(workers)
    assert codes == [0, 0, 0, 0]
    assert_all_completed(server.url, workflow_id, out, 5005)
