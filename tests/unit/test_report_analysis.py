"""Pure analysis of a run: depths, stages and barriers, transitions, stalls, stuck jobs, scaling."""

from __future__ import annotations

from torc_stress.report import analysis
from torc_stress.report.rundir import JobRow
from torc_stress.statuses import JobStatus

DONE = int(JobStatus.COMPLETED)
BLOCKED = int(JobStatus.BLOCKED)
READY = int(JobStatus.READY)


def _fan(n: int) -> tuple[list[JobRow], list[tuple[int, int]]]:
    """n stage jobs -> barrier -> n stage jobs; everything completed 1 s apart per level."""
    jobs = [JobRow(i, f"stage1_{i:03d}", DONE, 0.0, 0.1, 0.2, 1.0) for i in range(1, n + 1)]
    barrier = n + 1
    jobs.append(JobRow(barrier, "barrier_stage1_complete", DONE, 1.1, 1.2, 1.3, 2.0))
    jobs += [JobRow(i, f"stage2_{i:03d}", DONE, 2.1, 2.2, 2.3, 3.0)
             for i in range(n + 2, 2 * n + 2)]
    deps = [(barrier, i) for i in range(1, n + 1)] + [(i, barrier) for i in range(n + 2, 2 * n + 2)]
    return jobs, deps


def test_depth_is_one_more_than_the_deepest_dependency() -> None:
    depths = analysis.job_depths([1, 2, 3, 4], [(2, 1), (3, 2), (4, 1)])
    assert depths == {1: 0, 2: 1, 3: 2, 4: 1}


def test_a_single_job_fed_by_the_whole_previous_depth_is_a_barrier() -> None:
    jobs, deps = _fan(5)
    levels = analysis.build_levels(jobs, deps, t0=0.0)
    assert [(lv.kind, lv.label, lv.jobs) for lv in levels] == [
        ("stage", "stage1", 5), ("barrier", "barrier_stage1_complete", 1), ("stage", "stage2", 5)]


def test_a_single_job_fed_by_only_part_of_the_previous_depth_is_a_stage() -> None:
    jobs, deps = _fan(5)
    levels = analysis.build_levels(jobs, deps[1:], t0=0.0)
    assert levels[1].kind == "stage"


def test_stage_labels_come_from_what_the_job_names_share() -> None:
    assert analysis.stage_label(["stage1_0001", "stage1_0002"], 0) == "stage1"
    assert analysis.stage_label(["prep-a", "prep-b"], 3) == "prep"
    assert analysis.stage_label(["x", "y"], 3) == "depth 3"


def test_transitions_measure_stage_to_barrier_and_barrier_to_next_stage() -> None:
    jobs, deps = _fan(4)
    levels = analysis.build_levels(jobs, deps, t0=0.0)
    (tr,) = analysis.transitions(levels, {j.id: j for j in jobs}, t0=0.0)
    barrier = jobs[4]
    first_next_start = min(j.start_time for j in jobs[5:] if j.start_time is not None)
    assert tr.into_s == barrier.end_time - max(j.end_time for j in jobs[:4] if j.end_time)
    assert tr.out_s == first_next_start - barrier.end_time
    assert tr.reached


def test_a_job_blocked_with_all_dependencies_done_is_stuck() -> None:
    jobs, deps = _fan(3)
    jobs[3] = JobRow(4, jobs[3].name, BLOCKED, None, None, None, None)
    jobs[4:] = [JobRow(j.id, j.name, BLOCKED, None, None, None, None) for j in jobs[4:]]
    stuck = analysis.stuck_blocked({j.id: j for j in jobs}, deps)
    assert stuck == (4,)


def test_a_long_pause_with_a_ready_job_is_a_stall_and_a_busy_pause_is_not() -> None:
    busy = {1: JobRow(1, "a", DONE, 0.0, 0.1, 0.2, 10.0),
            2: JobRow(2, "b", DONE, 10.5, 10.6, 10.7, 11.0)}
    assert analysis.longest_stall(busy, [(2, 1)], min_gap_s=1.0).seconds == 0.0
    idle = {1: JobRow(1, "a", DONE, 0.0, 0.1, 0.2, 1.0),
            2: JobRow(2, "b", DONE, 1.0, 9.0, 9.1, 9.5)}
    stall = analysis.longest_stall(idle, [(2, 1)], min_gap_s=1.0)
    assert stall.seconds == idle[2].claim_time - idle[2].ready_time
    assert stall.waiting_jobs == ("b",)


def test_slow_unblocking_counts_as_waiting_work() -> None:
    jobs = {1: JobRow(1, "a", DONE, 0.0, 0.1, 0.2, 1.0),
            2: JobRow(2, "b", DONE, 7.0, 7.1, 7.2, 8.0)}
    stall = analysis.longest_stall(jobs, [(2, 1)], min_gap_s=1.0)
    assert stall.seconds == jobs[2].ready_time - jobs[1].end_time


def test_scaling_reports_the_slowest_later_stage_against_the_first() -> None:
    jobs, deps = _fan(3)
    levels = analysis.build_levels(jobs, deps, t0=0.0)
    scaling = analysis.stage_scaling(levels)
    durations = [lv.duration_s for lv in levels if lv.kind == "stage"]
    assert scaling["first_s"] == durations[0]
    assert scaling["max_ratio"] == durations[1] / durations[0]


def test_unfinished_levels_have_no_duration() -> None:
    jobs, deps = _fan(3)
    jobs[-1] = JobRow(jobs[-1].id, jobs[-1].name, READY, 2.1, None, None, None)
    levels = analysis.build_levels(jobs, deps, t0=0.0)
    assert levels[-1].duration_s is None and not levels[-1].finished
