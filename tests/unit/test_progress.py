"""Progress snapshots from the server's progress document: done counts, depths, rates."""

from __future__ import annotations

import pytest

from torc_stress.cluster.progress import ProgressTracker, count_done, depth_labels, snapshot


def doc(counts: dict[str, int], depths: list[tuple[int, int, dict[str, int]]]) -> dict:
    return {"total": sum(counts.values()), "counts": counts,
            "by_depth": [{"depth": d, "total": t, "counts": c} for d, t, c in depths]}


def test_done_counts_every_terminal_status_but_not_running_or_blocked() -> None:
    assert count_done({"completed": 3, "failed": 1, "canceled": 1, "terminated": 1,
                       "running": 5, "blocked": 7, "ready": 2}) == 6


def test_the_current_depth_is_the_first_one_not_complete() -> None:
    snap = snapshot(doc({"completed": 11, "ready": 1, "blocked": 10},
                        [(1, 1, {"completed": 1}), (0, 10, {"completed": 10}),
                         (2, 11, {"ready": 1, "blocked": 10})]), elapsed_s=2.0)
    assert [d.depth for d in snap.depths] == [0, 1, 2]
    assert snap.current_depth is not None and snap.current_depth.depth == 2
    assert not snap.finished


def test_the_rate_is_jobs_done_since_the_previous_snapshot_per_second() -> None:
    tracker = ProgressTracker()
    tracker.update(doc({"completed": 10, "ready": 90}, []), elapsed_s=1.0)
    snap = tracker.update(doc({"completed": 50, "ready": 50}, []), elapsed_s=3.0)
    assert snap.rate == 20.0
    assert round(snap.average_rate, 3) == round(50 / 3.0, 3)


def test_a_workflow_is_finished_when_every_job_is_done_or_disabled() -> None:
    assert snapshot(doc({"completed": 9, "disabled": 1}, []), 1.0).finished
    assert not snapshot(doc({"completed": 9, "running": 1}, []), 1.0).finished
    assert not snapshot({"total": 0, "counts": {}}, 1.0).finished


def test_stalled_for_counts_from_the_last_change_of_the_done_count() -> None:
    tracker = ProgressTracker()
    tracker.update(doc({"completed": 1, "ready": 1}, []), 1.0)
    tracker.update(doc({"completed": 2}, []), 2.0)
    tracker.update(doc({"completed": 2}, []), 5.0)
    assert tracker.stalled_for(6.0) == 4.0



@pytest.mark.parametrize(("levels", "expected"), [
    ([["stage1_0000", "stage1_0001"], ["barrier_stage1_complete"]],
     {0: "stage1", 1: "barrier_stage1_complete"}),
    ([["stage10_0998", "stage10_0999"]], {0: "stage10"}),
    ([["job0", "job9"]], {0: "job"}),
    ([["alpha", "beta"]], {}),
], ids=["stage-and-barrier", "two-digit-stage", "bare-numbers", "nothing-shared"])
def test_depths_are_named_by_their_jobs_shared_prefix(
    levels: list[list[str]], expected: dict[int, str]
) -> None:
    assert depth_labels(levels) == expected


def test_a_progress_line_names_the_stage_not_the_depth() -> None:
    tracker = ProgressTracker(labels={0: "stage1"})
    snap = tracker.update({"total": 2, "counts": {"completed": 1, "ready": 1},
                           "by_depth": [{"depth": 0, "total": 2,
                                         "counts": {"completed": 1, "ready": 1}}]}, 1.0)
    assert snap.current_depth is not None and snap.current_depth.name == "stage1"
