"""The shared statistics: one percentile definition, the metrics summary, slopes and hops."""

from __future__ import annotations

from typing import Any

import pytest

from torc_stress import client
from torc_stress.stats import hop_latencies, linear_slope, percentile, summarize


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([5.0], 99, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),
        ([4.0, 1.0, 3.0, 2.0], 100, 4.0),
        ([0.0, 10.0], 90, 9.0),
        ([float(v) for v in range(100, 0, -1)], 50, 50.5),
        ([float(v) for v in range(100, 0, -1)], 99, 99.01),
        ([], 50, None),
    ],
)
def test_a_percentile_interpolates_between_the_closest_ranks_of_the_sorted_sample(
    values: list[float], q: float, expected: float | None
) -> None:
    assert percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize("q", [-1, 100.5, 101])
def test_a_percentile_outside_0_to_100_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], q)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, 2.0, 3.0], {"count": 3, "sum": 6.0, "p50": 2.0, "p90": 2.8, "p99": 2.98,
                           "max": 3.0}),
        ([7.5], {"count": 1, "sum": 7.5, "p50": 7.5, "p90": 7.5, "p99": 7.5, "max": 7.5}),
        ([], {"count": 0, "sum": 0.0, "p50": None, "p90": None, "p99": None, "max": None}),
    ],
)
def test_a_summary_has_the_metrics_document_shape_and_no_percentiles_without_samples(
    values: list[float], expected: dict[str, float | None]
) -> None:
    assert summarize(values) == pytest.approx(expected)


def test_the_client_still_exports_the_shared_summary() -> None:
    assert client.summarize is summarize


@pytest.mark.parametrize(
    ("ys", "expected"),
    [([1.0, 3.0, 5.0, 7.0], 2.0), ([2.0, 2.0, 2.0], 0.0), ([4.0], None), ([], None)],
)
def test_a_linear_slope_is_the_step_of_the_least_squares_line(
    ys: list[float], expected: float | None
) -> None:
    assert linear_slope(ys) == pytest.approx(expected)


def _row(job_id: int, ready: float | None, end: float | None,
         claim: float | None = None) -> dict[str, Any]:
    return {"id": job_id, "name": f"job{job_id}", "ready_time": ready, "claim_time": claim,
            "end_time": end}


@pytest.mark.parametrize(
    ("rows", "edges", "expected"),
    [
        # the hop runs from the LAST upstream end (2.0), not the first (1.0)
        ([_row(1, 0.0, 1.0), _row(2, 0.0, 2.0), _row(3, 2.25, 3.0, claim=2.5)],
         [(3, 1), (3, 2)], {3: (0.25, 0.5)}),
        # an upstream job that never ended leaves the hop unmeasured
        ([_row(1, 0.0, None), _row(2, 0.0, 2.0), _row(3, 2.25, 3.0)],
         [(3, 1), (3, 2)], {3: (None, None)}),
        # an upstream job that is not among the rows leaves the hop unmeasured
        ([_row(3, 2.25, 3.0)], [(3, 9)], {3: (None, None)}),
        # a dependent job that is not among the rows has no hop
        ([_row(1, 0.0, 1.0)], [(7, 1)], {}),
        # a job that was never ready has no ready latency, claim likewise
        ([_row(1, 0.0, 1.0), _row(2, None, None)], [(2, 1)], {2: (None, None)}),
    ],
)
def test_a_hop_is_measured_from_the_last_upstream_end(
    rows: list[dict[str, Any]], edges: list[tuple[int, int]],
    expected: dict[int, tuple[float | None, float | None]],
) -> None:
    hops = {h.job_id: (h.ready_s, h.claim_s) for h in hop_latencies(rows, edges)}
    assert hops == expected  # the times are exact binary fractions


def test_hops_are_ordered_by_job_id_and_carry_name_and_depth() -> None:
    rows = [_row(1, 0.0, 1.0), {**_row(5, 1.0, 2.0), "depth": 2}, _row(4, 1.5, 2.0)]
    hops = hop_latencies(rows, [(5, 1), (4, 1)])
    assert [(h.job_id, h.name, h.depth) for h in hops] == [(4, "job4", 0), (5, "job5", 2)]
