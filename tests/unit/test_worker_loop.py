"""The worker's loop against an in-memory fake server: real `sh -c` children, fake HTTP."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from torc_stress.client import LatencyRecorder
from torc_stress.errors import ConflictError, NotFoundError, ServerUnavailable
from torc_stress.worker import Worker
from torc_stress.worker_records import Report

DONE = {"completed", "failed", "canceled", "terminated"}


class FakeServer:
    """Just enough of the API for a worker: claim, start, complete, is_complete."""

    url = "http://fake/torc-service/v1"

    def __init__(self, jobs: dict[int, dict[str, Any]], *, fail_completions: int = 0) -> None:
        self.jobs = jobs
        self.deps = {jid: set(job.pop("depends_on", ())) for jid, job in jobs.items()}
        for job in jobs.values():
            job.setdefault("status", "uninitialized")
        self.recorder: LatencyRecorder | None = None
        self.fail_completions = fail_completions
        self.completion_calls: list[int] = []
        self.canceled = False
        self.node: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.has_batch_start = True
        self.start_calls: list[str] = []

    def _unblock(self) -> None:
        for jid, job in self.jobs.items():
            if job["status"] in ("uninitialized", "blocked"):
                ready = all(self.jobs[d]["status"] in DONE for d in self.deps[jid])
                job["status"] = "ready" if ready else "blocked"

    def is_uninitialized(self, wf: int) -> bool:
        return all(j["status"] == "uninitialized" for j in self.jobs.values())

    def initialize_jobs(self, wf: int, *, only_uninitialized: bool = False) -> None:
        self._unblock()

    def get_workflow_status(self, wf: int) -> dict[str, Any]:
        return {"id": wf, "run_id": 1, "is_canceled": self.canceled}

    def create_compute_node(self, wf: int, hostname: str, pid: int, **kw: Any) -> dict[str, Any]:
        self.node = {"id": 7, "hostname": hostname, "pid": pid, "is_active": True}
        return dict(self.node)

    def update_compute_node(self, node: dict[str, Any]) -> dict[str, Any]:
        self.node = dict(node)
        return self.node

    def is_complete(self, wf: int) -> dict[str, Any]:
        with self.lock:
            done = all(j["status"] in DONE for j in self.jobs.values())
        return {"is_complete": done or self.canceled, "is_canceled": self.canceled}

    def heartbeat(self, node_id: int) -> dict[str, Any]:
        raise NotFoundError(404, "no route POST /compute_nodes/7/heartbeat")  # as torc's server

    def claim_next_jobs(self, wf: int, limit: int,
                        compute_node_id: int | None = None) -> list[dict[str, Any]]:
        with self.lock:
            if self.canceled:
                return []
            ready = [j for j in self.jobs.values() if j["status"] == "ready"][:limit]
            for job in ready:
                job["status"] = "pending"
            return [dict(j) for j in ready]

    def start_job(self, job_id: int, run_id: int, node_id: int) -> dict[str, Any]:
        self.start_calls.append("start_job")
        self.jobs[job_id]["status"] = "running"
        return dict(self.jobs[job_id])

    def batch_start_jobs(self, wf: int, run_id: int, node_id: int,
                         job_ids: list[int]) -> dict[str, Any]:
        if not self.has_batch_start:
            raise NotFoundError(404, "no route POST /workflows/1/batch_start_jobs")
        self.start_calls.append("batch_start_jobs")
        started, errors = [], []
        for job_id in job_ids:
            try:
                self.start_job(job_id, run_id, node_id)
                started.append(job_id)
            except ConflictError as exc:
                errors.append({"job_id": job_id, "message": str(exc)})
        return {"started": started, "errors": errors}

    def complete_job(self, job_id: int, status: str, run_id: int,
                     result: dict[str, Any]) -> dict[str, Any]:
        self.completion_calls.append(job_id)
        if self.fail_completions > 0:
            self.fail_completions -= 1
            raise ServerUnavailable(self.url, "connection refused")
        with self.lock:
            job = self.jobs[job_id]
            if job["status"] in DONE:
                raise ConflictError(422, "job is already complete")
            job["status"] = status
            job["result"] = result
            self._unblock()
            return dict(job)

    def batch_complete_jobs(self, wf: int, entries: list[dict[str, Any]]) -> dict[str, Any]:
        for entry in entries:
            self.complete_job(entry["job_id"], entry["status"], entry["run_id"], entry["result"])
        return {"completed": [e["job_id"] for e in entries], "errors": []}


def diamond(command: str = "echo hi") -> dict[int, dict[str, Any]]:
    jobs = {i: {"id": i, "name": f"j{i}", "command": f"{command} {i}"} for i in range(1, 7)}
    jobs[5]["depends_on"] = (1, 2, 3, 4)
    jobs[6]["depends_on"] = (5,)
    return jobs


def run_worker(server: FakeServer, tmp_path: Path, **kw: Any) -> tuple[int, Worker]:
    worker = Worker(server, 1, max_parallel_jobs=kw.pop("max_parallel_jobs", 2),  # type: ignore[arg-type]
                    output_dir=tmp_path, node_name="w1", **kw)
    return worker.run(), worker


def test_every_job_runs_once_in_dependency_order_and_the_worker_exits_zero(tmp_path: Path) -> None:
    server = FakeServer(diamond())
    code, worker = run_worker(server, tmp_path)
    assert code == 0
    assert {j["status"] for j in server.jobs.values()} == {"completed"}
    assert sorted(server.completion_calls) == [1, 2, 3, 4, 5, 6]
    assert server.completion_calls[-2:] == [5, 6]
    assert worker.jobs_run == 6


def test_each_job_writes_its_stdout_and_stderr_files(tmp_path: Path) -> None:
    server = FakeServer(diamond("echo out; echo err >&2; echo $TORC_JOB_ID $TORC_WORKFLOW_ID"))
    run_worker(server, tmp_path)
    out = (tmp_path / "job_stdio" / "job_wf1_j3_r1_a1.o").read_text()
    err = (tmp_path / "job_stdio" / "job_wf1_j3_r1_a1.e").read_text()
    assert out.splitlines() == ["out", "3 1 3"]  # job id, workflow id, then the job's arg
    assert err.strip() == "err"


def test_a_failing_command_is_reported_failed_with_its_return_code(tmp_path: Path) -> None:
    jobs = {1: {"id": 1, "name": "bad", "command": "exit 3"}}
    server = FakeServer(jobs)
    code, worker = run_worker(server, tmp_path)
    assert code == 0
    assert jobs[1]["status"] == "failed"
    assert jobs[1]["result"]["return_code"] == 3
    assert worker.jobs_failed == 1


def test_a_completion_the_server_did_not_take_is_retried_until_taken(tmp_path: Path) -> None:
    server = FakeServer(diamond(), fail_completions=5)
    code, worker = run_worker(server, tmp_path)
    assert code == 0
    assert {j["status"] for j in server.jobs.values()} == {"completed"}
    assert worker.retries["complete_job"] == 5
    assert len(server.completion_calls) == 6 + 5


def test_batched_completions_report_every_job(tmp_path: Path) -> None:
    server = FakeServer(diamond())
    code, _ = run_worker(server, tmp_path, batch_completions=True, max_parallel_jobs=4)
    assert code == 0
    assert {j["status"] for j in server.jobs.values()} == {"completed"}


def test_a_canceled_workflow_kills_running_jobs_and_reports_them_terminated(
        tmp_path: Path) -> None:
    jobs = {1: {"id": 1, "name": "slow", "command": "sleep 30"}}
    server = FakeServer(jobs)
    threading.Timer(0.3, lambda: setattr(server, "canceled", True)).start()
    started = time.monotonic()
    code, _ = run_worker(server, tmp_path)
    assert code == 0
    assert time.monotonic() - started < 5
    assert jobs[1]["status"] == "terminated"


def test_a_stop_request_lets_running_jobs_finish_and_claims_nothing_more(tmp_path: Path) -> None:
    jobs = {1: {"id": 1, "name": "a", "command": "sleep 0.5"},
            2: {"id": 2, "name": "b", "command": "echo b", "depends_on": (1,)}}
    server = FakeServer(jobs)
    worker = Worker(server, 1, max_parallel_jobs=1, output_dir=tmp_path,  # type: ignore[arg-type]
                    node_name="w1")
    threading.Timer(0.2, worker.request_stop).start()
    assert worker.run() == 0
    assert jobs[1]["status"] == "completed"
    assert jobs[2]["status"] == "ready"
    assert server.node["is_active"] is False


def test_the_worker_writes_its_metrics_file_at_exit(tmp_path: Path) -> None:
    server = FakeServer(diamond())
    _, worker = run_worker(server, tmp_path)
    doc = orjson.loads((tmp_path / f"worker_w1_{worker.pid}_metrics.json").read_bytes())
    assert doc["jobs_run"] == 6
    assert doc["compute_node_id"] == 7
    assert doc["job_wall_ms"]["count"] == 6


def test_a_job_gets_only_stdin_stdout_and_stderr_of_the_workers_descriptors(
        tmp_path: Path) -> None:
    leaked_r, leaked_w = os.pipe()
    os.dup2(leaked_w, 200, inheritable=True)
    try:
        jobs = {1: {"id": 1, "name": "fds", "command": "ls /proc/$$/fd"}}
        run_worker(FakeServer(jobs), tmp_path)
    finally:
        for fd in (leaked_r, leaked_w, 200):
            os.close(fd)
    listed = (tmp_path / "job_stdio" / "job_wf1_j1_r1_a1.o").read_text().split()
    assert "200" not in listed
    assert {"0", "1", "2"} <= set(listed)


def independent(count: int, command: str) -> dict[int, dict[str, Any]]:
    return {i: {"id": i, "name": f"j{i}", "command": command} for i in range(1, count + 1)}


def test_a_stop_request_runs_the_jobs_already_claimed_before_the_worker_exits(
        tmp_path: Path) -> None:
    server = FakeServer(independent(10, "sleep 0.3"))
    worker = Worker(server, 1, max_parallel_jobs=1, prefetch=2,  # type: ignore[arg-type]
                    output_dir=tmp_path, node_name="w1")
    threading.Timer(0.15, worker.request_stop).start()
    assert worker.run() == 0
    statuses = [job["status"] for job in server.jobs.values()]
    assert set(statuses) <= {"completed", "ready"}
    assert statuses.count("completed") == 3  # the running job and the two claimed ahead
    assert sorted(server.completion_calls) == sorted(set(server.completion_calls))
    assert server.node["is_active"] is False


def test_a_hard_stop_reports_claimed_jobs_that_never_ran_as_terminated(tmp_path: Path) -> None:
    server = FakeServer(independent(10, "sleep 30"))
    worker = Worker(server, 1, max_parallel_jobs=1, prefetch=2,  # type: ignore[arg-type]
                    output_dir=tmp_path, node_name="w1", grace_s=0.3)
    threading.Timer(0.2, worker.request_stop).start()
    started = time.monotonic()
    assert worker.run() == 0
    assert time.monotonic() - started < 10
    statuses = [job["status"] for job in server.jobs.values()]
    assert statuses.count("terminated") == 3
    assert set(statuses) == {"terminated", "ready"}
    assert worker.jobs_run == 1  # only the running one was spawned


def test_a_worker_never_holds_more_than_its_slots_and_prefetch(tmp_path: Path) -> None:
    server = FakeServer(independent(30, "echo hi"))
    worker = Worker(server, 1, max_parallel_jobs=2, prefetch=3,  # type: ignore[arg-type]
                    output_dir=tmp_path, node_name="w1")
    most = 0
    claim = server.claim_next_jobs

    def counting_claim(wf: int, limit: int, **kw: Any) -> list[dict[str, Any]]:
        nonlocal most
        jobs = claim(wf, limit, **kw)
        most = max(most, len(worker.running) + len(worker.claimed) + len(jobs))
        return jobs

    server.claim_next_jobs = counting_claim  # type: ignore[method-assign]
    assert worker.run() == 0
    assert {j["status"] for j in server.jobs.values()} == {"completed"}
    assert 0 < most <= 2 + 3
    assert sorted(server.completion_calls) == list(range(1, 31))


def test_a_job_the_server_refuses_to_start_is_killed_and_not_reported_completed(
        tmp_path: Path) -> None:
    server = FakeServer({1: {"id": 1, "name": "refused", "command": "sleep 30"},
                         2: {"id": 2, "name": "fine", "command": "echo ok"}})
    start = server.start_job

    def refusing_start(job_id: int, run_id: int, node_id: int) -> dict[str, Any]:
        if job_id == 1:
            server.jobs[1]["status"] = "canceled"
            raise ConflictError(422, "job 1 is canceled, not pending")
        return start(job_id, run_id, node_id)

    server.start_job = refusing_start  # type: ignore[method-assign]
    started = time.monotonic()
    code, worker = run_worker(server, tmp_path)
    assert code == 0
    assert time.monotonic() - started < 10
    assert server.jobs[1]["status"] == "canceled"
    assert server.jobs[2]["status"] == "completed"
    assert worker.jobs_failed == 1  # the killed job counts as terminated, not completed


def test_every_start_waiting_for_delivery_goes_in_one_batch_start_request(tmp_path: Path) -> None:
    jobs = {i: {"id": i, "name": f"j{i}", "command": "true", "status": "pending"}
            for i in range(1, 6)}
    server = FakeServer(jobs)
    worker = Worker(server, 1, max_parallel_jobs=2, output_dir=tmp_path,  # type: ignore[arg-type]
                    node_name="w1")
    worker.node = {"id": 7}
    worker._reports.extend([Report("start", 1), Report("start", 2),
                            Report("complete", 1, "completed", {"job_id": 1}),
                            Report("start", 3), Report("start", 4),
                            Report("complete", 2, "completed", {"job_id": 2})])
    assert worker._deliver_head()
    assert server.start_calls == ["batch_start_jobs"] + ["start_job"] * 4
    assert [(r.kind, r.job_id) for r in worker._reports] == [("complete", 1), ("complete", 2)]
    assert [jobs[i]["status"] for i in range(1, 6)] == ["running"] * 4 + ["pending"]


def test_a_server_without_batch_start_jobs_gets_one_start_job_per_job(tmp_path: Path) -> None:
    server = FakeServer(diamond())
    server.has_batch_start = False
    code, _ = run_worker(server, tmp_path)
    assert code == 0
    assert all(job["status"] == "completed" for job in server.jobs.values())
    assert server.start_calls == ["start_job"] * 6


def test_a_crash_in_the_reporter_thread_ends_the_worker_with_an_error_instead_of_hanging(
        tmp_path: Path) -> None:
    server = FakeServer(diamond())

    def broken(*args: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")

    server.batch_start_jobs = broken  # type: ignore[method-assign]
    started = time.monotonic()
    code, _ = run_worker(server, tmp_path)
    assert code == 1
    assert time.monotonic() - started < 30


class InstantClient:
    """Takes every start and completion at once (the race under test is in the worker)."""

    url = "http://fake/torc-service/v1"
    recorder = None

    def batch_start_jobs(self, wf: int, run_id: int, node: int, ids: list[int]) -> dict[str, Any]:
        return {"started": ids, "errors": []}

    def batch_complete_jobs(self, wf: int, entries: list[dict[str, Any]]) -> dict[str, Any]:
        return {"completed": [e["job_id"] for e in entries], "errors": []}


def test_delivering_reports_while_the_main_thread_queues_more_never_trips_over_the_queue(
        tmp_path: Path) -> None:
    worker = Worker(InstantClient(), 1, max_parallel_jobs=2,  # type: ignore[arg-type]
                    output_dir=tmp_path, node_name="w1", batch_completions=True)
    worker.node = {"id": 7}
    stop = threading.Event()

    def queue_reports() -> None:
        job_id = 0
        while not stop.is_set():
            job_id += 1
            worker._report(Report("start", job_id))
            worker._report(Report("complete", job_id, "completed", {"job_id": job_id}))
            if len(worker._reports) > 3000:
                time.sleep(0)

    producer = threading.Thread(target=queue_reports)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over often, as a loaded worker does
    producer.start()
    delivered = 0
    try:
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            if worker._reports:
                assert worker._deliver_head()
                delivered += 1
    finally:
        stop.set()
        producer.join()
        sys.setswitchinterval(switch)
    assert delivered > 100
