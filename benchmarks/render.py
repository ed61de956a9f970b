"""Renders the benchmark's results as plain-text tables (tabulate)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence

from tabulate import tabulate

from benchmarks import stats
from benchmarks.suite import (
    SuiteResults,
    all_hops_ms,
    checks,
    hop_levels,
    median_run,
    paired_cpu_ratios,
    paired_ratios,
    stage_seconds,
)
from torc_stress.stats import percentile

_OPS = ("claim", "start_job", "batch_start_jobs", "complete_job", "batch_complete_jobs")


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _values(values: Sequence[float], digits: int = 2) -> str:
    return " ".join(_num(v, digits) for v in values)


def checks_table(results: SuiteResults) -> str:
    """The figures with targets: measured, target, met."""
    rows = []
    for check in checks(results):
        met = {True: "yes", False: "NO", None: "not measured"}[check.met]
        digits = 0 if check.target == 0 or abs(check.measured) >= 100 else 3
        rows.append([check.name, _num(check.measured, digits), check.target_text, met])
    return tabulate(rows, disable_numparse=True, headers=["figure", "measured", "target", "met"])


def figures_table(results: SuiteResults) -> str:
    """The side-by-side figures of floor and server runs (medians, with every value)."""
    jobs = results.jobs
    rows = [["floor: in-process thread pool, no server",
             _num(stats.median(results.floor_s)), "1.000", "", "1.000", "",
             _num(stats.median(c / jobs * 1000 for c in results.floor_cpu_s)), "", "", "",
             _values(results.floor_s)]]
    for mode, runs in results.runs.items():
        ratios = paired_ratios(runs, results.floor_s)
        hops = all_hops_ms(runs)
        rows.append([
            f"server + {results.settings.workers} workers, {mode} completions",
            _num(stats.median(r.makespan_s for r in runs)),
            _num(stats.median(ratios)),
            _num(stats.median(r.wall_s for r in runs)),
            _num(stats.median(paired_cpu_ratios(runs, results.floor_cpu_s))),
            _num(stats.median(r.cpu_per_1000_jobs for r in runs)),
            _num(stats.median(r.workers_cpu_s / jobs * 1000 for r in runs)),
            _num(max(r.server_peak_rss for r in runs) / 2**20, 0),
            _num(percentile(hops, 50), 1),
            _num(max(hops, default=math.nan), 1),
            _values([r.makespan_s for r in runs]),
        ])
    return (f"{jobs} jobs, {results.settings.slots} slots "
            f"({results.settings.workers} workers x {results.settings.max_parallel_jobs}), "
            f"median of {results.settings.repeat}\n" + tabulate(
                rows, disable_numparse=True, headers=[
                    "run", "makespan s", "x floor", "wall s", "CPU x floor",
                    "server CPU s/1000 jobs", "client CPU s/1000 jobs", "peak RSS MiB",
                    "hop p50 ms", "hop max ms", "makespans s"])
            + "\nclient CPU = the floor's own process and shells, or the workers and their shells;"
            "\nCPU x floor = (server + client CPU) / floor CPU, paired per repeat (less sensitive"
            "\nto other tenants than wall time; on 2 busy cores it is what the makespan tends to)")


def hops_table(results: SuiteResults) -> str:
    """Hop latency per barrier crossing (ready and claim after the last upstream end)."""
    rows = []
    by_mode = {mode: {lv.depth: lv for lv in hop_levels(runs)}
               for mode, runs in results.runs.items()}
    depths = sorted({d for levels in by_mode.values() for d in levels})
    for depth in depths:
        first = next(levels[depth] for levels in by_mode.values() if depth in levels)
        row = [depth, first.label]
        for levels in by_mode.values():
            level = levels.get(depth)
            row += ([_num(level.ready_ms["p50"], 1), _num(level.ready_ms["max"], 1),
                     _num(level.claim_ms["min"], 1)]
                    if level else ["", "", ""])
        rows.append(row)
    headers = ["depth", "dependent jobs"]
    for mode in by_mode:
        headers += [f"{mode} ready p50", "ready max", "first claim"]
    return ("hop = dependent's ready_time - last upstream end_time, ms, all repeats; "
            "first claim = earliest claim_time of the level - last upstream end_time "
            "(how soon a worker picked the work up)\n"
            + tabulate(rows, disable_numparse=True, headers=headers))


def latency_table(results: SuiteResults) -> str:
    """Request latency percentiles of the median run of each mode: worker side and server side."""
    rows = []
    for mode, runs in results.runs.items():
        run = median_run(runs)
        if run is None:
            continue
        for op in _OPS:
            summary = run.worker_latency_ms.get(op)
            if summary and summary.get("count"):
                rows.append([mode, "worker", op, *_summary_cells(summary)])
        for endpoint, summary in sorted(run.server_latency_ms.items()):
            if any(key in endpoint for key in ("claim", "start_job", "complete")):
                rows.append([mode, "server", endpoint, *_summary_cells(summary)])
    return ("request latency, ms (median run; worker p50 = count-weighted mean of the workers' "
            "p50s, tails = worst worker)\n" + tabulate(rows, disable_numparse=True, headers=[
                "mode", "side", "operation", "count", "p50", "p90", "p99", "max"]))


def _summary_cells(summary: dict[str, float]) -> list[str]:
    return [str(int(summary.get("count", 0))),
            *(_num(summary.get(k), 2) for k in ("p50", "p90", "p99", "max"))]


def server_table(results: SuiteResults) -> str:
    """What the server did in the median run of each mode: group commit, unblocking, waits."""
    rows = []
    for mode, runs in results.runs.items():
        run = median_run(runs)
        if run is None:
            continue
        tx = run.transactions
        unblock = run.unblock
        rows.append([
            mode, str(tx.get("count", "n/a")),
            _num(tx["ops"] / tx["count"], 2) if tx.get("count") else "n/a",
            _num((tx.get("hold_ms") or {}).get("p99"), 2),
            str(unblock.get("passes", "n/a")),
            _num((unblock.get("duration_ms") or {}).get("max"), 2),
            *(_num(((run.write_path.get(op) or {}).get("wait_ms") or {}).get("p99"), 2)
              for op in ("claim",
                         "batch_start_jobs" if "batch_start_jobs" in run.write_path
                         else "start_job",
                         "complete_job" if mode == "per-job" else "batch_complete_jobs")),
            str(sum(int(v.get("busy_retries", 0)) for v in run.write_path.values())),
        ])
    return ("server internals (median run, from its metrics document)\n" + tabulate(
        rows, disable_numparse=True, headers=[
            "mode", "transactions", "ops per tx", "tx hold p99 ms", "unblock passes",
            "unblock max ms", "claim wait p99 ms", "start wait p99 ms", "complete wait p99 ms",
            "SQLITE_BUSY retries"]))


def capacity_table(results: SuiteResults) -> str:
    """Completions/s with no spawning, and what the server and client spent."""
    rows = []
    for mode, measured in results.capacity.items():
        rows.append([
            mode, measured[0].jobs, measured[0].threads, measured[0].claim_limit,
            _num(stats.median(r.per_second for r in measured), 0),
            _num(stats.median(r.per_server_cpu_second for r in measured), 0),
            _num(stats.median(r.server_cpu_s / r.seconds for r in measured), 2),
            _num(stats.median(r.client_cpu_s / r.seconds for r in measured), 2),
            _values([r.per_second for r in measured], 0),
        ])
    return ("capacity: client threads claim(limit) / start / complete over HTTP, no spawning "
            "(per-job: batch_start_jobs per claim, complete_job per job; batched: also "
            "batch_complete_jobs per claim; torc-protocol: start_job and complete_job per job)\n"
            + tabulate(rows, disable_numparse=True, headers=[
                "completions", "jobs", "threads", "claim limit", "per s (median)",
                "per server CPU s", "server cores busy", "client cores busy", "per s, each"]))


def stages_table(results: SuiteResults) -> str:
    """Per-stage durations (median over repeats) of each mode."""
    columns = {mode: stage_seconds(runs) for mode, runs in results.runs.items()}
    count = max((len(c) for c in columns.values()), default=0)
    if not count:
        return ""
    rows = [[i + 1, *(_num(c[i]) if i < len(c) else "" for c in columns.values())]
            for i in range(count)]
    return ("stage duration, s (previous barrier end -> own barrier end), median over repeats\n"
            + tabulate(rows, disable_numparse=True, headers=["stage", *(f"{m}" for m in columns)]))


def render(results: SuiteResults) -> str:
    """Returns every table, separated by blank lines."""
    before, after = results.load_before[0], results.load_after[0]
    job_root = results.settings.job_root or tempfile.gettempdir()
    load = (f"machine: {os.cpu_count()} CPUs, load average {before:.1f} before, {after:.1f} after "
            "(others' work shares these cores; compare ratios, not absolute times); "
            f"job stdio files in {job_root}")
    parts = [load, checks_table(results), figures_table(results), hops_table(results),
             latency_table(results), server_table(results)]
    if results.capacity:
        parts.append(capacity_table(results))
    parts.append(stages_table(results))
    return "\n\n".join(p for p in parts if p) + "\n"
