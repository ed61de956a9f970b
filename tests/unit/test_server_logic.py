"""Pure server logic: dependency counting, histograms, resource parsing."""

from __future__ import annotations

import pytest

from torc_stress.server.http_io import where_clause
from torc_stress.server.metrics import Histogram
from torc_stress.server.store import duration_seconds, memory_bytes
from torc_stress.server.unblocker import DependencyTracker


def _barrier(width: int) -> DependencyTracker:
    tracker = DependencyTracker()
    for up in range(width):
        tracker.add_edge(100, up)
    tracker.set_blocked(100, width)
    return tracker


def test_a_barrier_becomes_ready_only_when_its_last_dependency_completes() -> None:
    tracker = _barrier(50)
    for up in range(49):
        assert tracker.mark_done([(up, False, 1.0)], lambda j: True).ready == []
    outcome = tracker.mark_done([(49, False, 2.5)], lambda j: True)
    assert outcome.ready == [100]
    assert outcome.upstream_end[100] == 2.5


def test_a_failed_upstream_cancels_its_dependents_transitively() -> None:
    tracker = DependencyTracker()
    tracker.add_edge(2, 1)
    tracker.add_edge(3, 2)
    tracker.add_edge(4, 1)
    for job in (2, 3, 4):
        tracker.set_blocked(job, 1)
    outcome = tracker.mark_done([(1, True, 1.0)], lambda j: j != 4)
    assert sorted(outcome.canceled) == [2, 3]
    assert outcome.ready == [4]


def test_a_dependent_that_does_not_cancel_on_failure_becomes_ready() -> None:
    tracker = _barrier(2)
    tracker.mark_done([(0, True, 1.0)], lambda j: False)
    assert tracker.mark_done([(1, False, 1.0)], lambda j: False).ready == [100]


def test_histogram_percentiles_are_within_the_bucket_error() -> None:
    histogram = Histogram()
    for value in range(1, 1001):
        histogram.add(float(value))
    summary = histogram.summary()
    assert summary["count"] == 1000 and summary["max"] == 1000.0
    assert 500 <= summary["p50"] <= 500 * 1.1
    assert 990 <= summary["p99"] <= 1000


@pytest.mark.parametrize(("text", "expected"), [("1m", 1024**2), ("100m", 100 * 1024**2),
                                                ("2g", 2 * 1024**3), ("512", 512)])
def test_memory_strings_use_powers_of_1024(text: str, expected: int) -> None:
    assert memory_bytes(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("PT1M", 60), ("P0DT1M", 60), ("PT1H30M", 5400),
                                                ("P1D", 86400), ("PT0.5S", 0)])
def test_iso_durations_become_seconds(text: str, expected: int) -> None:
    assert duration_seconds(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "1x"])
def test_bad_memory_strings_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        memory_bytes(text)


@pytest.mark.parametrize(("conditions", "expected"), [
    ((), ("", [])),
    ((("workflow_id = ?", None),), ("", [])),
    ((("workflow_id = ?", 3), ("status = ?", None), ("status = ?", 5)),
     ("WHERE workflow_id = ? AND status = ?", [3, 5])),
    ((("id IN (SELECT result_id FROM workflow_result)", True), ("run_id = ?", 0)),
     ("WHERE id IN (SELECT result_id FROM workflow_result) AND run_id = ?", [0])),
], ids=["no-filters", "none-is-left-out", "values-in-order", "condition-without-parameter"])
def test_a_where_clause_keeps_only_the_filters_that_were_given(
    conditions: tuple[tuple[str, object], ...], expected: tuple[str, list[object]]
) -> None:
    assert where_clause(*conditions) == expected
