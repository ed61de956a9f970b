"""Completions written together: each still judged alone, stored as if written one by one.

The writer hands consecutive ``complete_job`` ops of a transaction to ``complete_jobs``; these
tests run such batches through the real writer, state and SQLite file, without HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.writer_ops import run_batch_of
from torc_stress.client import rfc3339
from torc_stress.server import ops
from torc_stress.server.main import _open_database
from torc_stress.server.metrics import Metrics
from torc_stress.server.state import ServerState
from torc_stress.server.writer import Writer


@dataclass
class Bench:
    """A server's write path on a real file: one workflow, a compute node, started jobs."""

    writer: Writer
    state: ServerState
    workflow_id: int
    run_id: int
    node_id: int

    def run(self, *calls: tuple[Any, ...]) -> list[Any]:
        """Runs ``(fn, *args)`` calls as one batch; each outcome is a result or an HTTP status."""
        return run_batch_of(self.writer, [(fn, (self.state, *args)) for fn, *args in calls])

    def add_jobs(self, count: int, depends_on: list[int] | None = None) -> list[int]:
        jobs = [{"workflow_id": self.workflow_id, "name": f"j{time.perf_counter_ns()}-{i}",
                 "command": "true", **({"depends_on_job_ids": depends_on} if depends_on else {})}
                for i in range(count)]
        return [job["id"] for job in self.run((ops.create_jobs, jobs))[0]["jobs"]]

    def start(self, count: int) -> list[int]:
        claimed = self.run((ops.claim_next_jobs, self.workflow_id, count))[0]["jobs"]
        ids = [job["id"] for job in claimed]
        self.run((ops.batch_start_jobs, self.workflow_id, self.run_id, self.node_id, ids))
        return ids

    def completion(self, job_id: int, node_id: int | None = None) -> tuple[Any, ...]:
        result = {"job_id": job_id, "workflow_id": self.workflow_id, "run_id": self.run_id,
                  "compute_node_id": node_id or self.node_id, "return_code": 0,
                  "exec_time_minutes": 0.0, "completion_time": rfc3339(time.time()),
                  "status": "completed"}
        return (ops.complete_job, job_id, 5, self.run_id, result)

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return self.writer.conn.execute(sql, args).fetchall()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    conn = _open_database(tmp_path / "server.db", 5.0)
    metrics = Metrics()
    state = ServerState(metrics, 0.0)
    state.conn = conn
    state.load(conn)
    writer = Writer(conn, state, metrics)
    b = Bench(writer, state, 0, 0, 0)
    b.workflow_id = b.run((ops.create_workflow, {"name": "w", "user": "u"}))[0]["id"]
    b.add_jobs(4)
    b.run((ops.initialize_jobs, b.workflow_id, False))
    b.run_id = state.workflows[b.workflow_id].run_id
    b.node_id = b.run((ops.create_compute_node, {
        "workflow_id": b.workflow_id, "hostname": "h", "pid": 1,
        "start_time": rfc3339(time.time()), "num_cpus": 1, "memory_gb": 1.0, "num_gpus": 0,
        "num_nodes": 1, "compute_node_type": "local", "is_active": True}))[0]["id"]
    yield b
    conn.close()


def test_completions_written_together_are_stored_as_if_written_one_by_one(bench: Bench) -> None:
    ids = bench.start(3)
    outcomes = bench.run(*(bench.completion(j) for j in ids))
    assert [(o["id"], o["status"]) for o in outcomes] == [(j, "completed") for j in ids]
    links = bench.rows("SELECT wr.job_id, r.job_id, r.status FROM workflow_result wr "
                       "JOIN result r ON r.id = wr.result_id ORDER BY wr.job_id")
    assert links == [(j, j, 5) for j in ids]
    jobs = bench.rows("SELECT id, status, unblocking_processed, active_compute_node_id FROM job "
                      f"WHERE id IN ({','.join('?' * 3)}) ORDER BY id", *ids)
    assert jobs == [(j, 5, 1, None) for j in ids]


def test_a_completion_naming_an_unknown_node_is_refused_alone(bench: Bench) -> None:
    ids = bench.start(3)
    outcomes = bench.run(bench.completion(ids[0]), bench.completion(ids[1], node_id=999),
                         bench.completion(ids[2]))
    assert [o if isinstance(o, int) else o["status"] for o in outcomes] == \
        ["completed", 422, "completed"]
    stored = bench.rows("SELECT job_id FROM result ORDER BY job_id")
    assert stored == [(ids[0],), (ids[2],)]


def test_the_second_completion_of_a_job_in_one_batch_is_refused(bench: Bench) -> None:
    ids = bench.start(2)
    outcomes = bench.run(bench.completion(ids[0]), bench.completion(ids[1]),
                         bench.completion(ids[0]))
    assert [o if isinstance(o, int) else o["status"] for o in outcomes] == \
        ["completed", "completed", 422]
    assert bench.rows("SELECT count(*) FROM result") == [(2,)]


def test_a_dependent_is_ready_once_its_last_upstream_completes_in_a_batch(bench: Bench) -> None:
    ups = bench.start(4)
    (dependent,) = bench.add_jobs(1, depends_on=ups)
    bench.run((ops.initialize_jobs, bench.workflow_id, True))
    bench.run(*(bench.completion(j) for j in ups))
    assert bench.rows("SELECT status FROM job WHERE id = ?", dependent) == [(2,)]


def test_a_failed_unblock_pass_leaves_its_completions_to_be_unblocked_again(
        bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    (job,) = bench.start(1)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the pass")

    monkeypatch.setattr(bench.state.tracker, "mark_done", broken)
    assert bench.run(bench.completion(job))[0]["status"] == "completed"
    assert bench.rows("SELECT status, unblocking_processed FROM job WHERE id = ?", job) == \
        [(5, 0)]


def test_a_start_naming_an_unknown_node_is_refused_and_starts_nothing(bench: Bench) -> None:
    claimed = bench.run((ops.claim_next_jobs, bench.workflow_id, 2))[0]["jobs"]
    ids = [job["id"] for job in claimed]
    outcomes = bench.run((ops.batch_start_jobs, bench.workflow_id, bench.run_id, 999, ids),
                         (ops.start_job, ids[0], bench.run_id, 999))
    assert outcomes == [422, 422]
    assert bench.rows("SELECT DISTINCT status FROM job WHERE id IN (?, ?)", *ids) == [(3,)]


def test_a_deleted_workflows_compute_nodes_are_forgotten(bench: Bench) -> None:
    assert bench.node_id in bench.state.nodes
    bench.run((ops.delete_workflow, bench.workflow_id))
    assert bench.node_id not in bench.state.nodes


def test_a_pass_that_fails_half_way_through_its_writes_undoes_them(
        bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    ups = bench.start(4)
    (dependent,) = bench.add_jobs(1, depends_on=ups)
    bench.run((ops.initialize_jobs, bench.workflow_id, True))
    write_pass = ServerState._write_pass

    def half(conn: Any, outcome: Any, unmarked: Any, now: float) -> None:
        write_pass(conn, outcome, unmarked, now)
        raise RuntimeError("a bug after the pass wrote")

    monkeypatch.setattr(ServerState, "_write_pass", staticmethod(half))
    bench.run(*(bench.completion(j) for j in ups))
    assert bench.rows("SELECT status FROM job WHERE id = ?", dependent) == [(1,)]
    assert bench.rows(f"SELECT DISTINCT unblocking_processed FROM job WHERE id IN "
                      f"({','.join('?' * 4)})", *ups) == [(0,)]
