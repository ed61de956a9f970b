"""The whole benchmark: floor, server runs and capacity side by side, reduced to figures.

:func:`run_suite` runs everything (interleaving floor, per-job and batched runs in each repeat so
drift on a shared machine hits all of them alike); :func:`reduce_suite` turns the raw results into
medians, ratios and target checks. Rendering is in :mod:`benchmarks.render`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import stats
from benchmarks.capacity import CapacityResult, run_capacity
from benchmarks.contention import ContentionRun, run_contention
from benchmarks.floor import floor_jobs, run_floor
from benchmarks.plans import contention_plan
from torc_stress.stats import summarize

log = logging.getLogger(__name__)

MAKESPAN_RATIO_TARGET = 1.3
HOP_MAX_MS_TARGET = 50.0
CAPACITY_PER_JOB_TARGET = 5000.0
CAPACITY_BATCHED_TARGET = 20000.0
STAGE_GROWTH_TARGET = 1.10
RSS_TARGET_MB = 300.0


@dataclass(frozen=True)
class Settings:
    """What to run (the command-line options)."""

    stages: int = 5
    jobs_per_stage: int = 1000
    workers: int = 4
    max_parallel_jobs: int = 2
    repeat: int = 3
    capacity_jobs: int = 10000
    capacity_threads: int = 8
    claim_limit: int = 10
    batched_claim_limit: int = 100
    batched: bool = True
    capacity: bool = True
    run_timeout: float | None = None
    keep: bool = False
    #: where job stdout/stderr go (the floor's and the workers'); None: the system temp dir
    job_root: Path | None = None

    def timeout_for(self, jobs: int) -> float:
        """Seconds one run of ``jobs`` jobs may take: --run-timeout, else 120 s + 0.1 s/job."""
        return self.run_timeout if self.run_timeout is not None else 120.0 + 0.1 * jobs

    @property
    def slots(self) -> int:
        """Total concurrent jobs: workers x max-parallel-jobs (the floor's pool size)."""
        return self.workers * self.max_parallel_jobs


@dataclass
class SuiteResults:
    """Raw results of every run, in the order they ran."""

    settings: Settings
    jobs: int = 0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    floor_s: list[float] = field(default_factory=list)
    floor_cpu_s: list[float] = field(default_factory=list)
    runs: dict[str, list[ContentionRun]] = field(default_factory=dict)
    capacity: dict[str, list[CapacityResult]] = field(default_factory=dict)


def run_suite(settings: Settings) -> SuiteResults:
    """Runs the floor, the workflow through server and workers, and the capacity measurement.

    Raises:
        BenchmarkError: a run failed or passed its time bound.
    """
    plan = contention_plan(settings.stages, settings.jobs_per_stage)
    results = SuiteResults(settings, jobs=len(plan.jobs), load_before=os.getloadavg())
    timeout = settings.timeout_for(len(plan.jobs))
    modes = [False, True] if settings.batched else [False]
    for index in range(settings.repeat):
        log.info("repeat %d/%d: floor", index + 1, settings.repeat)
        floor = run_floor(floor_jobs(plan), settings.slots, timeout=timeout, keep=settings.keep,
                          job_root=settings.job_root)
        results.floor_s.append(floor.seconds)
        results.floor_cpu_s.append(floor.cpu_s)
        for batch in modes:
            log.info("repeat %d/%d: %s completions", index + 1, settings.repeat,
                     "batched" if batch else "per-job")
            run = run_contention(plan, workers=settings.workers, slots=settings.max_parallel_jobs,
                                 batch=batch, timeout=timeout, keep=settings.keep,
                                 job_root=settings.job_root)
            results.runs.setdefault(run.mode, []).append(run)
    if settings.capacity:
        capacity_modes = ["per-job", "batched", "torc-protocol"] if settings.batched \
            else ["per-job", "torc-protocol"]
        for index in range(settings.repeat):
            for mode in capacity_modes:
                log.info("repeat %d/%d: capacity, %s", index + 1, settings.repeat, mode)
                limit = settings.batched_claim_limit if mode == "batched" else settings.claim_limit
                result = run_capacity(settings.capacity_jobs, settings.capacity_threads, limit,
                                      mode=mode,
                                      timeout=settings.timeout_for(settings.capacity_jobs),
                                      keep=settings.keep)
                results.capacity.setdefault(result.mode, []).append(result)
    results.load_after = os.getloadavg()
    return results


# ---------------------------------------------------------------------------- reduction


def median_run(runs: list[ContentionRun]) -> ContentionRun | None:
    """Returns the run whose makespan is the median (the lower one for an even count)."""
    if not runs:
        return None
    ordered = sorted(runs, key=lambda r: r.makespan_s)
    return ordered[(len(ordered) - 1) // 2]


def paired_ratios(runs: list[ContentionRun], floor_s: list[float]) -> list[float]:
    """Returns makespan / floor for each repeat (the floor measured just before the run)."""
    return [stats.ratio(run.makespan_s, floor) for run, floor in zip(runs, floor_s, strict=False)]


def paired_cpu_ratios(runs: list[ContentionRun], floor_cpu_s: list[float]) -> list[float]:
    """Returns (server + workers + shells CPU) / floor CPU for each repeat."""
    return [stats.ratio(run.server_cpu_s + run.workers_cpu_s, floor)
            for run, floor in zip(runs, floor_cpu_s, strict=False)]


def hop_levels(runs: list[ContentionRun]) -> list[stats.HopLevel]:
    """Summarizes the hops of all runs of one mode per depth (one row per barrier crossing)."""
    return stats.hops_by_level([hop for run in runs for hop in run.hops])


def all_hops_ms(runs: list[ContentionRun], attribute: str = "ready_s") -> list[float]:
    """Returns every hop latency of the runs in ms (ready or claim), unrecorded ones left out."""
    values = (getattr(h, attribute) for run in runs for h in run.hops)
    return [v * 1000 for v in values if v is not None]


def stage_seconds(runs: list[ContentionRun]) -> list[float]:
    """Returns the median over runs of each stage's duration."""
    if not runs or not runs[0].stages:
        return []
    count = min(len(run.stages) for run in runs)
    return [stats.median(run.stages[i].seconds for run in runs) for i in range(count)]


def checks(results: SuiteResults) -> list[stats.Check]:
    """Returns the figures that have targets (ARCHITECTURE section 5), measured."""
    per_job = results.runs.get("per-job", [])
    stages = stage_seconds(per_job)
    all_runs = [run for runs in results.runs.values() for run in runs]
    out = [
        stats.Check("makespan per-job / floor (median of paired ratios)",
                    stats.median(paired_ratios(per_job, results.floor_s)),
                    MAKESPAN_RATIO_TARGET),
        stats.Check("barrier hop latency max, per-job (ms)",
                    max(all_hops_ms(per_job), default=math.nan), HOP_MAX_MS_TARGET),
    ]
    if "batched" in results.runs:
        out.append(stats.Check("barrier hop latency max, batched (ms)",
                               max(all_hops_ms(results.runs["batched"]), default=math.nan),
                               HOP_MAX_MS_TARGET))
    targets = (("per-job", CAPACITY_PER_JOB_TARGET), ("batched", CAPACITY_BATCHED_TARGET))
    for mode, target in targets:
        if mode in results.capacity:
            out.append(stats.Check(
                f"capacity, {mode} completions, {results.settings.capacity_threads} threads (/s)",
                stats.median(r.per_second for r in results.capacity[mode]), target,
                at_most=False))
    out += [
        stats.Check(f"last / first stage duration ({len(stages)} stages, per-job)",
                    stats.ratio(stages[-1], stages[0]) if stages else math.nan,
                    STAGE_GROWTH_TARGET),
        stats.Check(_late_early_name(len(stages)), stats.late_over_early(stages),
                    STAGE_GROWTH_TARGET),
        stats.Check("server peak RSS, max over runs (MB)",
                    max((r.server_peak_rss / 1e6 for r in all_runs), default=math.nan),
                    RSS_TARGET_MB),
        stats.Check("database is locked: ERROR lines + metrics lock_errors (all runs)",
                    float(sum(r.lock_errors + r.lock_errors_metric for r in all_runs)), 0.0),
        stats.Check("ERROR lines in server + worker logs (all runs)",
                    float(sum(r.error_lines for r in all_runs)), 0.0),
        stats.Check("jobs not completed (all runs)",
                    float(sum(r.not_completed for r in all_runs)), 0.0),
    ]
    return out


def to_json(results: SuiteResults) -> dict[str, Any]:
    """Returns every figure as one JSON-ready document (no per-job rows)."""
    from dataclasses import asdict

    def run_doc(run: ContentionRun) -> dict[str, Any]:
        doc = {k: v for k, v in asdict(run).items() if k not in ("hops", "stages")}
        doc["cpu_per_1000_jobs"] = run.cpu_per_1000_jobs
        doc["workers_cpu_per_1000_jobs"] = run.workers_cpu_s / run.jobs * 1000
        doc["stage_seconds"] = [s.seconds for s in run.stages]
        doc["hop_ready_ms"] = summarize(all_hops_ms([run]))
        doc["hop_claim_ms"] = summarize(all_hops_ms([run], "claim_s"))
        return doc

    return {
        "schema": 1,
        "settings": {k: str(v) if isinstance(v, Path) else v
                     for k, v in asdict(results.settings).items()},
        "jobs": results.jobs,
        "floor_s": results.floor_s,
        "floor_cpu_s": results.floor_cpu_s,
        "runs": {mode: [run_doc(r) for r in runs] for mode, runs in results.runs.items()},
        "hop_levels": {mode: [asdict(level) for level in hop_levels(runs)]
                       for mode, runs in results.runs.items()},
        "capacity": {mode: [dict(asdict(r), per_second=r.per_second,
                                 per_server_cpu_second=r.per_server_cpu_second) for r in rs]
                     for mode, rs in results.capacity.items()},
        "checks": [dict(asdict(c), met=c.met, target_text=c.target_text)
                   for c in checks(results)],
    }


def _late_early_name(n: int) -> str:
    if n < 3:
        return "late / early stages (last / first: too few stages)"
    k = stats.late_early_window(n)
    return f"median of the last {k} stages / median of stages 2-{k + 1}"
