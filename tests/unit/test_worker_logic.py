"""Pure worker logic: backoff, output paths, statuses, completion retry policy, metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from torc_stress.errors import ApiError, ConflictError, NotFoundError, ServerUnavailable
from torc_stress.worker import (
    Backoff,
    build_metrics,
    claim_limit,
    classify_failure,
    metrics_path,
    status_for,
    stdio_paths,
)


def test_backoff_doubles_from_its_start_up_to_its_cap() -> None:
    backoff = Backoff(0.001, 0.05)
    delays = [backoff.next() for _ in range(10)]
    assert delays[:4] == pytest.approx([0.001, 0.002, 0.004, 0.008])
    assert max(delays) == pytest.approx(0.05)
    assert delays == sorted(delays)


def test_backoff_reset_starts_again_from_the_initial_delay() -> None:
    backoff = Backoff(0.001, 0.05)
    for _ in range(8):
        backoff.next()
    backoff.reset()
    assert backoff.next() == pytest.approx(0.001)


def test_job_output_files_are_named_as_torc_names_them(tmp_path: Path) -> None:
    out, err = stdio_paths(tmp_path, 3, 1207, 1, 2)
    assert out == tmp_path / "job_stdio" / "job_wf3_j1207_r1_a2.o"
    assert err == tmp_path / "job_stdio" / "job_wf3_j1207_r1_a2.e"


def test_the_metrics_file_is_named_after_node_and_pid(tmp_path: Path) -> None:
    assert metrics_path(tmp_path, "w1", 42).name == "worker_w1_42_metrics.json"


@pytest.mark.parametrize(
    ("returncode", "killed", "expected"),
    [(0, False, "completed"), (1, False, "failed"), (-9, False, "failed"),
     (0, True, "terminated"), (-15, True, "terminated")],
)
def test_a_return_code_maps_to_the_reported_status(returncode: int, killed: bool,
                                                   expected: str) -> None:
    assert status_for(returncode, killed=killed) == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ServerUnavailable("http://x", "connection refused"), "retry"),
        (ApiError(503, "database is locked"), "retry"),
        (ApiError(500, "boom"), "retry"),
        (ApiError(429, "slow down"), "retry"),
        (ConflictError(422, "job is already complete"), "taken"),
        (ConflictError(409, "conflict"), "taken"),
        (NotFoundError(404, "no such job"), "drop"),
        (ApiError(400, "bad request"), "drop"),
    ],
)
def test_a_completion_is_retried_only_when_the_server_may_take_it_later(
        error: Exception, expected: str) -> None:
    assert classify_failure(error) == expected  # type: ignore[arg-type]


def test_the_metrics_document_has_the_contracted_fields() -> None:
    doc = build_metrics(node="w1", pid=7, compute_node_id=3, jobs_run=4, jobs_failed=1,
                        started_at=10.0, finished_at=12.5,
                        latency={"claim": {"count": 1}}, job_wall_ms=[1.0, 2.0, 3.0, 4.0],
                        retries={"complete_job": 2})
    assert doc["schema"] == 1
    assert (doc["node"], doc["pid"], doc["compute_node_id"]) == ("w1", 7, 3)
    assert (doc["jobs_run"], doc["jobs_failed"]) == (4, 1)
    assert doc["finished_at"] - doc["started_at"] == pytest.approx(2.5)
    assert set(doc["job_wall_ms"]) == {"count", "sum", "p50", "p90", "p99", "max"}
    assert doc["job_wall_ms"]["max"] == 4.0
    assert doc["retries"] == {"complete_job": 2}


def test_a_worker_claims_for_every_slot_and_prefetch_when_it_holds_nothing() -> None:
    assert claim_limit(0, 2, 4) == 6
    assert claim_limit(0, 3, 0) == 3


def test_a_worker_holding_its_capacity_claims_nothing() -> None:
    assert claim_limit(6, 2, 4) == 0
    assert claim_limit(7, 2, 4) == 0


def test_a_worker_claims_again_only_when_a_whole_batch_fits() -> None:
    limits = [claim_limit(held, 2, 4) for held in range(7)]
    assert limits == [6, 5, 4, 3, 0, 0, 0]
    assert all(limit == 0 or limit >= 3 for limit in limits)


def test_without_prefetch_a_worker_claims_exactly_its_free_slots() -> None:
    assert [claim_limit(held, 2, 0) for held in range(3)] == [2, 1, 0]
