"""The result-model check: its fast path accepts exactly what its precise path accepts."""

from __future__ import annotations

from typing import Any

import pytest

from torc_stress.errors import ApiError
from torc_stress.server.ops_complete import validate_result

GOOD: dict[str, Any] = {"job_id": 1, "workflow_id": 1, "run_id": 0, "compute_node_id": 2,
                        "return_code": 0, "exec_time_minutes": 0.5,
                        "completion_time": "2026-01-01T00:00:00Z", "status": "completed"}


@pytest.mark.parametrize("change", [
    {}, {"exec_time_minutes": 1}, {"return_code": -15, "status": "terminated"},
    {"peak_memory_bytes": 1024, "attempt_id": 2},
    {"return_code": 2**63 - 1, "job_id": -(2**63), "avg_cpu_percent": 12, "peak_cpu_percent": 1.5},
    {"completion_time": "2026-12-03T13:11:53.123456789+00:00"},
])
def test_a_well_formed_result_is_accepted_unchanged(change: dict[str, Any]) -> None:
    body = GOOD | change
    assert validate_result(body) is body


@pytest.mark.parametrize(("change", "named"), [
    ({"job_id": True}, "job_id"),
    ({"return_code": 1.0}, "return_code"),
    ({"run_id": "0"}, "run_id"),
    ({"exec_time_minutes": "1"}, "exec_time_minutes"),
    ({"completion_time": 5}, "completion_time"),
    ({"status": "finished"}, "finished"),
    ({"status": None}, "status"),
    ({"compute_node_id": None}, "compute_node_id"),
    ({"return_code": 2**63}, "return_code"),
    ({"job_id": -(2**63) - 1}, "job_id"),
    ({"exec_time_minutes": 2**64}, "exec_time_minutes"),
    ({"exec_time_minutes": float("nan")}, "exec_time_minutes"),
    ({"completion_time": ""}, "completion_time"),
    ({"completion_time": "yesterday"}, "completion_time"),
    ({"attempt_id": "a"}, "attempt_id"),
    ({"attempt_id": 1.5}, "attempt_id"),
    ({"peak_memory_bytes": [1]}, "peak_memory_bytes"),
    ({"avg_memory_bytes": 2**63}, "avg_memory_bytes"),
    ({"avg_cpu_percent": "x"}, "avg_cpu_percent"),
    ({"peak_cpu_percent": True}, "peak_cpu_percent"),
])
def test_a_malformed_result_gets_a_422_naming_what_is_wrong(change: dict[str, Any],
                                                            named: str) -> None:
    with pytest.raises(ApiError) as caught:
        validate_result(GOOD | change)
    assert caught.value.status == 422
    assert named in str(caught.value)


def test_a_result_that_is_not_an_object_gets_a_422() -> None:
    with pytest.raises(ApiError, match="result_model object"):
        validate_result([GOOD])
