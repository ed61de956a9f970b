"""The benchmark's pure statistics: ratios, hop levels, stage spans, makespan and checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.stats import (
    Check,
    hops_by_level,
    late_over_early,
    level_label,
    makespan,
    median,
    merge_summaries,
    ratio,
    stage_spans,
)
from torc_stress.stats import hop_latencies


def _job(job_id: int, name: str, depth: int, ready: float | None, end: float | None,
         claim: float | None = None) -> dict[str, object]:
    return {"id": job_id, "name": name, "depth": depth, "ready_time": ready,
            "claim_time": claim if claim is not None else ready, "start_time": None,
            "end_time": end}


def _two_stages() -> tuple[list[dict[str, object]], list[tuple[int, int]]]:
    """stage1 (3 jobs) -> barrier1 -> stage2 (2 jobs) -> barrier2, with known times."""
    jobs = [
        _job(1, "stage1_0000", 0, 0.0, 1.0),
        _job(2, "stage1_0001", 0, 0.0, 2.0),
        _job(3, "stage1_0002", 0, 0.0, 1.5),
        _job(4, "barrier_stage1_complete", 1, 2.010, 2.5, claim=2.030),
        _job(5, "stage2_0000", 2, 2.5, 3.0),
        _job(6, "stage2_0001", 2, 2.504, 4.0),
        _job(7, "barrier_stage2_complete", 3, 4.002, 4.5),
    ]
    edges = [(4, 1), (4, 2), (4, 3), (5, 4), (6, 4), (7, 5), (7, 6)]
    return jobs, edges


def test_median_ignores_missing_values_and_ratio_refuses_a_zero_denominator() -> None:
    assert median([3.0, math.nan, 1.0, 2.0]) == 2.0
    assert math.isnan(median([]))
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))


def test_a_hop_is_measured_from_the_last_upstream_end_not_the_first() -> None:
    jobs, edges = _two_stages()
    hops = {h.job_id: h for h in hop_latencies(jobs, edges)}
    assert set(hops) == {4, 5, 6, 7}
    assert hops[4].ready_s == pytest.approx(0.010)
    assert hops[4].claim_s == pytest.approx(0.030)
    assert hops[6].ready_s == pytest.approx(0.004)
    assert hops[7].ready_s == pytest.approx(0.002)


def test_a_hop_whose_upstream_never_ended_is_not_measured() -> None:
    jobs, edges = _two_stages()
    jobs[1]["end_time"] = None
    hops = {h.job_id: h for h in hop_latencies(jobs, edges)}
    assert hops[4].ready_s is None
    assert hops[5].ready_s == pytest.approx(0.0)


def test_hops_are_grouped_per_barrier_crossing_by_depth() -> None:
    jobs, edges = _two_stages()
    levels = hops_by_level(hop_latencies(jobs, edges))
    assert [(lv.depth, lv.label, lv.jobs) for lv in levels] == [
        (1, "barrier_stage1_complete", 1),
        (2, "stage2_* (2)", 2),
        (3, "barrier_stage2_complete", 1),
    ]
    assert levels[1].ready_ms["max"] == pytest.approx(4.0)
    assert levels[1].ready_ms["p50"] == pytest.approx(2.0)
    assert levels[0].claim_ms["min"] == pytest.approx(30.0)


def test_level_label_names_a_wide_level_by_its_common_prefix() -> None:
    assert level_label(["stage3_0000", "stage3_0999", "stage3_0500"]) == "stage3_* (3)"
    assert level_label(["only"]) == "only"


def test_stages_run_from_the_previous_barrier_end_to_their_own_barrier_end() -> None:
    jobs, _ = _two_stages()
    spans = stage_spans(jobs)
    assert [(s.index, s.label, s.jobs) for s in spans] == [
        (1, "stage1_* (3)", 3),
        (2, "stage2_* (2)", 2),
    ]
    assert spans[0].seconds == pytest.approx(2.5)
    assert spans[1].seconds == pytest.approx(2.0)


def test_makespan_runs_from_the_first_claim_to_the_last_end() -> None:
    jobs, _ = _two_stages()
    assert makespan(jobs) == pytest.approx(4.5)
    assert math.isnan(makespan([]))


def test_merged_summaries_weight_p50_by_count_and_keep_the_worst_tail() -> None:
    merged = merge_summaries([
        {"count": 1, "sum": 1.0, "p50": 1.0, "p90": 1.0, "p99": 1.0, "max": 1.0},
        {"count": 3, "sum": 9.0, "p50": 3.0, "p90": 4.0, "p99": 5.0, "max": 6.0},
        {},
    ])
    assert merged["count"] == 4
    assert merged["p50"] == pytest.approx(2.5)
    assert (merged["p99"], merged["max"]) == (5.0, 6.0)


@pytest.mark.parametrize(
    ("measured", "target", "at_most", "met"),
    [(1.2, 1.3, True, True), (1.4, 1.3, True, False), (6000.0, 5000.0, False, True),
     (math.nan, 1.0, True, None)],
)
def test_a_check_says_whether_its_target_is_met(
    measured: float, target: float, at_most: bool, met: bool | None
) -> None:
    assert Check("x", measured, target, at_most).met is met


def test_hops_of_repeated_runs_count_each_dependent_job_once() -> None:
    jobs, edges = _two_stages()
    hops = hop_latencies(jobs, edges)
    levels = hops_by_level(hops + hops)
    assert [(lv.label, lv.jobs, lv.ready_ms["count"]) for lv in levels] == [
        ("barrier_stage1_complete", 1, 2),
        ("stage2_* (2)", 2, 4),
        ("barrier_stage2_complete", 1, 2),
    ]


def test_the_busy_profile_leaves_out_threads_that_wait(tmp_path: Path) -> None:
    from benchmarks.profile import busy_profile

    raw = tmp_path / "server.txt"
    raw.write_text(
        "main (app.py:1);Runner.run (asyncio/runners.py:118) 50\n"
        "main (app.py:1);handle (app.py:9);dumps (json.py:3) 30\n"
        "main (app.py:1);handle (app.py:9) 10\n"
    )
    busy, own, inclusive = busy_profile(raw)
    assert busy == 40
    assert own == [("dumps (json.py:3)", 30), ("handle (app.py:9)", 10)]
    assert dict(inclusive)["main (app.py:1)"] == 40


@pytest.mark.parametrize(("stages", "expected"), [
    ([9.0, 1.0, 1.0, 1.0, 1.0], 1.0),            # a slow first stage (start-up) is left out
    ([9.0, 1.0, 1.0, 2.0, 2.0], 2.0),            # k = 2: stages 4-5 over stages 2-3
    ([2.0] + [1.0] * 5 + [1.0] * 4 + [1.5] * 5, 1.5),  # k = 5: last five over stages 2-6
    ([1.0, 3.0], 3.0),                           # too few stages: last / first
])
def test_late_over_early_compares_the_last_stages_with_the_early_ones_after_stage_one(
        stages: list[float], expected: float) -> None:
    assert late_over_early(stages) == pytest.approx(expected)


def test_late_over_early_of_no_stages_is_not_a_number() -> None:
    assert math.isnan(late_over_early([]))


def test_the_first_stage_starts_at_its_first_claim_not_when_its_jobs_became_ready() -> None:
    jobs, _ = _two_stages()
    for job in jobs[:3]:  # ready at initialize; the workers claim half a second later
        job["claim_time"] = 0.5
    spans = stage_spans(jobs)
    assert spans[0].start == pytest.approx(0.5)
    assert spans[0].end == pytest.approx(2.5)
    assert sum(s.end - s.start for s in spans) == pytest.approx(makespan(jobs))
