"""Renders the report as text: verdict lines and tabulate tables (the content of report.txt)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from torc_stress.report import figures
from torc_stress.report.checks import Check, Status
from torc_stress.report.overview import RunAnalysis

_FMT = "simple"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ms(value: Any) -> str:
    return _num(value, 1)


def render_report(a: RunAnalysis, checks: Sequence[Check]) -> str:
    """Renders the whole text report: header, checks, failure details, then every table.

    Args:
        a: the run's analysis.
        checks: the evaluated checks.

    Returns:
        The report text, ending with a newline.
    """
    sections = [
        header(a),
        check_table(checks),
        failure_details(checks),
        "Stages\n" + stage_table(a),
        "Hosts\n" + host_table(a),
        "Faults\n" + fault_table(a),
        "Attempts per job\n" + attempts_table(a),
        "Executions (every job completed exactly once)\n" + execution_table(a),
        "Server contention: write path\n" + write_path_table(a),
        "Server contention: unblocker\n" + unblock_table(a),
        lease_table(a),
        "API request latency (server side)\n" + request_table(a),
        verdict_line(checks),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def header(a: RunAnalysis) -> str:
    """The run's identity: id, outcome, server host, workflow and job counts."""
    run = a.data.run
    return (
        f"torc-stress report for run {run.get('run_id', '?')} "
        f"(outcome: {run.get('outcome', '?')})\n"
        f"server host: {a.data.server_host}, workflow {a.data.workflow_id}: {a.jobs} jobs in "
        f"{sum(1 for lv in a.levels if lv.kind == 'stage')} stages and "
        f"{sum(1 for lv in a.levels if lv.kind == 'barrier')} barriers; "
        f"times are seconds after the first job was ready"
    )


def check_table(checks: Sequence[Check]) -> str:
    """One row per check: verdict, name, measured, reference and bounds (ReFrame style)."""
    rows = [
        [c.status.value, c.name, _num(c.measured), _num(c.reference), _num(c.lower),
         _num(c.upper), c.unit]
        for c in checks
    ]
    return tabulate(rows, headers=["result", "check", "measured", "ref", "lower", "upper", "unit"],
                    tablefmt=_FMT, disable_numparse=True)


def failure_details(checks: Sequence[Check]) -> str:
    """For each failed check: what was expected, what was measured, where to look."""
    blocks = [
        f"FAIL {c.name}: {c.title}\n  expected: {c.expected}\n  measured: {c.detail}\n"
        f"  look at:  {'; '.join(c.where)}"
        for c in checks if c.status is Status.FAIL
    ]
    return "FAILURE INFO\n" + "\n".join(blocks) if blocks else ""


def verdict_line(checks: Sequence[Check]) -> str:
    """The final line: PASSED or FAILED with counts."""
    failed = sum(1 for c in checks if c.status is Status.FAIL)
    skipped = sum(1 for c in checks if c.status is Status.SKIP)
    word = "FAILED" if failed else "PASSED"
    return (f"[  {word}  ] {len(checks) - failed - skipped}/{len(checks)} check(s) passed "
            f"({failed} failure(s), {skipped} skipped)")


def stage_table(a: RunAnalysis) -> str:
    """One row per stage or barrier: jobs, states, start, end, duration, transitions."""
    into = {t.barrier: t.into_s for t in a.transitions}
    out = {t.barrier: t.out_s for t in a.transitions}
    rows = [
        [lv.depth, lv.kind, lv.label, lv.jobs, lv.statuses.get("completed", 0),
         _num(lv.first_ready), _num(lv.first_start), _num(lv.last_end), _num(lv.duration_s),
         _num(into.get(lv.label)), _num(out.get(lv.label))]
        for lv in a.levels
    ]
    return tabulate(rows, headers=["depth", "kind", "name", "jobs", "completed", "ready",
                                   "start", "end", "duration", "transition in",
                                   "transition out"], tablefmt=_FMT, disable_numparse=True)


def host_table(a: RunAnalysis) -> str:
    """One row per worker host: workers, jobs, failures, job wall and client latencies (ms)."""
    rows = [
        [h.host, h.workers, h.jobs_run, h.failures, _ms(h.job_wall_p50_ms),
         _ms(h.job_wall_p95_ms), _ms(h.complete_p50_ms), _ms(h.complete_p99_ms),
         _ms(h.claim_p99_ms)]
        for h in a.hosts
    ]
    headers = ["host", "workers", "jobs run", "failures", "job wall p50 ms", "job wall p95 ms",
               "complete p50 ms*", "complete p99 ms*", "claim p99 ms*"]
    note = "\n* client side, worst worker of the host (percentiles are not merged across workers)"
    return tabulate(rows, headers=headers, tablefmt=_FMT, disable_numparse=True) + note


def write_path_table(a: RunAnalysis) -> str:
    """One row per write operation kind: count, SQLITE_BUSY retries, wait and hold times."""
    rows = [[r["op"], _num(r["count"]), _num(r["busy_retries"]), _ms(r["wait_p50_ms"]),
             _ms(r["wait_p99_ms"]), _ms(r["wait_max_ms"]), _ms(r["hold_p50_ms"]),
             _ms(r["hold_p99_ms"])] for r in figures.write_path_rows(a.data.server_metrics)]
    if not rows:
        return "(no server metrics in the run directory)"
    return tabulate(rows, headers=["op", "count", "busy retries", "wait p50 ms", "wait p99 ms",
                                   "wait max ms", "hold p50 ms", "hold p99 ms"],
                    tablefmt=_FMT, disable_numparse=True)


def unblock_table(a: RunAnalysis) -> str:
    """The unblocker's passes and batch sizes, plus the DB-measured hop latency."""
    r = figures.unblock_row(a.data.server_metrics)
    hop = a.hop_ms
    rows = [[_num(r["passes"]), _num(r["completions"]), _num(r["ready"]), _num(r["canceled"]),
             _num(r["batch_p50"]), _num(r["batch_max"]), _ms(r["duration_p50_ms"]),
             _ms(r["duration_max_ms"]), _ms(hop.get("p50")), _ms(hop.get("p99")),
             _ms(hop.get("max")), a.log.lock_retries]]
    return tabulate(rows, headers=["passes", "completions", "ready", "canceled", "batch p50",
                                   "batch max", "pass p50 ms", "pass max ms", "hop p50 ms",
                                   "hop p99 ms", "hop max ms", "lock retries (log)"],
                    tablefmt=_FMT, disable_numparse=True)


def request_table(a: RunAnalysis) -> str:
    """One row per endpoint: count, errors, latency percentiles (Locust style)."""
    rows = [[r["endpoint"], _num(r["count"]), _num(r["errors"]), _ms(r["p50_ms"]),
             _ms(r["p90_ms"]), _ms(r["p99_ms"]), _ms(r["max_ms"])]
            for r in figures.request_rows(a.data.server_metrics)]
    if not rows:
        return "(no server metrics in the run directory)"
    return tabulate(rows, headers=["endpoint", "requests", "errors", "p50 ms", "p90 ms",
                                   "p99 ms", "max ms"], tablefmt=_FMT, disable_numparse=True)


def fault_table(a: RunAnalysis) -> str:
    """One row per fault asked for: what, when, what it re-queued, how soon jobs completed again.

    Times are seconds after the first job was ready; fault times come from the controller's
    clock, job times from the server's (the same clock on one machine).
    """
    f = a.faults
    if not f.faults:
        return "(no faults asked for)"
    rows = [[i, x.fault.spec, x.fault.kind, x.target,
             _num(x.injected_s) if x.fault.injected else "not triggered", _num(x.ended_s),
             len(x.expiries), x.requeued, _attempts(x.attempts), _num(x.requeued_running_s),
             _num(x.requeued_done_s), _num(x.recovery_s), _num(x.recovery_from_end_s),
             x.fault.error or ""]
            for i, x in enumerate(f.faults, start=1)]
    table = tabulate(rows, headers=["#", "spec", "kind", "target", "injected", "ended",
                                    "expired nodes", "re-queued", "attempts (jobs)",
                                    "re-queued running again", "re-queued done",
                                    "recovery from injection", "recovery from end", "error"],
                     tablefmt=_FMT, disable_numparse=True)
    notes = [f"re-queued: the server log's 'compute node lease expired' lines, each given to the "
             f"latest fault injected before it (a fault on the node's host first); "
             f"{len(f.unattributed)} line(s) ({sum(e.requeued for e in f.unattributed)} job(s)) "
             "belong to no fault",
             f"log total {f.requeued_in_log} re-queue(s); the database counts "
             f"{f.extra_attempts} attempt(s) beyond the first, in {f.jobs_requeued} job(s), and "
             f"{f.later_attempt_results} result(s) of a later attempt",
             "recovery: to the next job completion (server clock; fault times are the "
             "controller's clock, the same clock on one machine)",
             "attempts (jobs): of the re-queued jobs the journals show running on an expired "
             "node, attempts needed: jobs (e.g. 2:3 = three jobs needed two attempts)"]
    return table + "\n" + "\n".join(f"* {n}" for n in notes)


def _attempts(histogram: dict[int, int]) -> str:
    return " ".join(f"{attempts}:{jobs}" for attempts, jobs in histogram.items()) or "-"


def attempts_table(a: RunAnalysis) -> str:
    """How many jobs needed 1, 2, 3 ... attempts (job.attempt_id)."""
    f = a.faults
    if not f.attempts_recorded:
        return "(the database does not count attempts: a server older than the lease work)"
    rows = [[attempts, jobs] for attempts, jobs in f.attempts.items()]
    return tabulate(rows, headers=["attempts", "jobs"], tablefmt=_FMT, disable_numparse=True)


def execution_table(a: RunAnalysis) -> str:
    """The exactly-once counts with their reference and bounds (ReFrame style)."""
    ex = a.executions
    rows = [["ok" if c.ok else "OUT", c.name, c.measured, _num(c.reference), _num(c.lower),
             _num(c.upper)] for c in ex.counts()]
    table = tabulate(rows, headers=["", "count", "measured", "ref", "lower", "upper"],
                     tablefmt=_FMT, disable_numparse=True)
    if not ex.journals:
        return table + "\n(no execution journals in the run directory: executions not checked)"
    return table + (f"\n{ex.journals} journal(s); an execution without an exit line runs until "
                    "its worker ended" + (f"; {ex.bad_lines} unreadable line(s)"
                                          if ex.bad_lines else ""))


def lease_table(a: RunAnalysis) -> str:
    """The server's lease figures (metrics ``leases``) with a title; empty when not reported."""
    leases = a.faults.leases
    if leases is None:
        return ""
    rows = [[_num(leases.get("lease_s")), _num(leases.get("expired_nodes")),
             _num(leases.get("requeued_jobs")), len(a.faults.expiries)]]
    table = tabulate(rows, headers=["lease s", "expired nodes", "re-queued jobs",
                                   "expiry lines (log)"], tablefmt=_FMT, disable_numparse=True)
    return "Server contention: leases\n" + table
