"""Builds report.json: every check and figure, machine-readable (schema in schemas/).

The document is deterministic: no absolute paths, no wall-clock "now", floats rounded to
milliseconds (seconds to 3 decimals, milliseconds to 3 decimals), keys sorted on write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from torc_stress import __version__
from torc_stress.report import figures
from torc_stress.report.checks import Check, Status, Thresholds
from torc_stress.report.executions import Execution
from torc_stress.report.faults import FaultFigures, LeaseExpiry
from torc_stress.report.overview import RunAnalysis

SCHEMA_VERSION = 2
_MAX_LISTED = 100
OUTPUT_FILES = {"text": "report.txt", "json": "report.json", "junit": "junit.xml",
                "timeline": "timeline.png"}


def load_schema() -> dict[str, Any]:
    """Returns the JSON schema of report.json shipped in the package."""
    text = resources.files("torc_stress.report").joinpath("schemas/report.schema.json").read_text(
        encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def rounded(value: float | None, digits: int = 3) -> float | None:
    """Rounds for output, keeping None; avoids ``-0.0`` so outputs compare equal."""
    if value is None:
        return None
    result = round(float(value), digits)
    return 0.0 if result == 0 else result


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return rounded(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def build_document(a: RunAnalysis, checks: Sequence[Check], thresholds: Thresholds
                   ) -> dict[str, Any]:
    """Builds the report.json document.

    Args:
        a: the run's analysis.
        checks: the evaluated checks.
        thresholds: the limits the checks applied.

    Returns:
        A JSON-serialisable mapping.
    """
    failed = sum(1 for c in checks if c.status is Status.FAIL)
    skipped = sum(1 for c in checks if c.status is Status.SKIP)
    doc = {
        "schema": SCHEMA_VERSION,
        "tool": {"name": "torc-stress", "version": __version__},
        "verdict": "FAIL" if failed else "PASS",
        "summary": {"checks": len(checks), "passed": len(checks) - failed - skipped,
                    "failed": failed, "skipped": skipped},
        "run": _run_section(a),
        "thresholds": dict(thresholds.__dict__),
        "checks": [_check(c) for c in checks],
        "stages": [_level(lv) for lv in a.levels],
        "transitions": [dict(t.__dict__) for t in a.transitions],
        "jobs": {"total": a.jobs, "statuses": a.statuses,
                 "stuck_blocked": [j.name for j in a.stuck_blocked]},
        "timing": {"t0_epoch_s": a.t0, "total_time_s": a.total_time_s,
                   "last_end_s": a.last_end_s, "hop_ms": a.hop_ms,
                   "stall": dict(a.stall.__dict__), "scaling": a.scaling},
        "hosts": [dict(h.__dict__) for h in a.hosts],
        "contention": _contention(a),
        "faults": _faults(a),
        "executions": _executions(a),
        "log": {"file": a.data.files["server_log"], "lock_errors": a.log.lock_error_count,
                "lock_error_lines": [{"line": n, "text": t} for n, t in a.log.lock_errors[:20]],
                "lock_retries": a.log.lock_retries, "errors": a.log.errors,
                "warnings": a.log.warnings},
        "files": {**a.data.files, **OUTPUT_FILES},
    }
    cleaned: dict[str, Any] = _clean(doc)
    return cleaned


def _run_section(a: RunAnalysis) -> dict[str, Any]:
    run = a.data.run
    return {
        "run_id": run.get("run_id"),
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
        "outcome": run.get("outcome"),
        "server_host": a.data.server_host,
        "workflow_id": a.data.workflow_id,
        "settings": run.get("settings") if isinstance(run.get("settings"), dict) else {},
        "phases": run.get("phases") if isinstance(run.get("phases"), dict) else {},
        "hosts": run.get("hosts") if isinstance(run.get("hosts"), dict) else {},
    }


def _check(c: Check) -> dict[str, Any]:
    return {"name": c.name, "title": c.title, "status": c.status.value, "measured": c.measured,
            "reference": c.reference, "lower": c.lower, "upper": c.upper, "unit": c.unit,
            "expected": c.expected, "detail": c.detail, "where": list(c.where)}


def _level(lv: Any) -> dict[str, Any]:
    return {"depth": lv.depth, "kind": lv.kind, "name": lv.label, "jobs": lv.jobs,
            "statuses": lv.statuses, "first_ready_s": lv.first_ready,
            "first_start_s": lv.first_start, "last_end_s": lv.last_end,
            "duration_s": lv.duration_s}


def _contention(a: RunAnalysis) -> dict[str, Any]:
    metrics = a.data.server_metrics
    return {
        "available": metrics is not None,
        "write_path": figures.write_path_rows(metrics),
        "unblock": figures.unblock_row(metrics),
        "requests": figures.request_rows(metrics),
        "transactions": (metrics or {}).get("transactions"),
        "lock_errors": a.metrics_lock_errors,
        "server": (metrics or {}).get("server"),
        "leases": a.faults.leases,
    }


def _faults(a: RunAnalysis) -> dict[str, Any]:
    f = a.faults
    return {
        "asked": len(f.faults),
        "injected": sum(1 for x in f.faults if x.fault.injected),
        "items": [_fault(a, x) for x in f.faults],
        "unattributed_expiries": [_expiry(a, e) for e in f.unattributed],
        "requeued_in_log": f.requeued_in_log,
        "attempts_recorded": f.attempts_recorded,
        "attempts": {str(k): v for k, v in f.attempts.items()},
        "jobs_requeued": f.jobs_requeued,
        "extra_attempts": f.extra_attempts,
        "later_attempt_results": f.later_attempt_results,
    }


def _fault(a: RunAnalysis, x: FaultFigures) -> dict[str, Any]:
    f = x.fault
    return {"spec": f.spec, "kind": f.kind, "host": f.host, "count": f.count,
            "seconds": f.seconds, "trigger": f.trigger, "method": f.method,
            "targets": list(f.targets), "error": f.error, "target": x.target,
            "injected": f.injected, "injected_at_epoch_s": f.injected_at,
            "ended_at_epoch_s": f.ended_at, "injected_s": x.injected_s, "ended_s": x.ended_s,
            "expired_nodes": len(x.expiries), "requeued": x.requeued,
            "expiries": [_expiry(a, e) for e in x.expiries],
            "requeued_jobs_seen": [{"job_id": j, "job": _job_name(a, j), "attempts": n}
                                   for j, n in list(x.jobs_seen.items())[:_MAX_LISTED]],
            "attempts": {str(k): v for k, v in x.attempts.items()}, "recovery_s": x.recovery_s,
            "recovery_from_end_s": x.recovery_from_end_s,
            "requeued_running_s": x.requeued_running_s, "requeued_done_s": x.requeued_done_s}


def _job_name(a: RunAnalysis, job_id: int) -> str:
    return next((j.name for j in a.data.jobs if j.id == job_id), "?")


def _expiry(a: RunAnalysis, e: LeaseExpiry) -> dict[str, Any]:
    return {"line": e.line, "t_s": None if e.t is None else e.t - a.t0,
            "compute_node_id": e.compute_node_id, "hostname": e.hostname,
            "requeued": e.requeued, "pending": e.pending, "running": e.running}


def _executions(a: RunAnalysis) -> dict[str, Any]:
    ex = a.executions
    names = {j.id: j.name for j in a.data.jobs}

    def job(job_id: int) -> dict[str, Any]:
        return {"job_id": job_id, "job": names.get(job_id, "?")}

    return {
        "journals": ex.journals,
        "counts": [dict(c.__dict__, ok=c.ok) for c in ex.counts()],
        "offenders": [job(j) for j in ex.offenders()[:_MAX_LISTED]],
        "without_success": [job(j) for j in ex.without_success[:_MAX_LISTED]],
        "several_successes": [job(j) for j in ex.several_successes[:_MAX_LISTED]],
        "double_spawns": [dict(job(j), attempt=att, spawns=n)
                          for (j, att), n in list(ex.double_spawns.items())[:_MAX_LISTED]],
        "overlaps": [dict(job(o.job_id), earlier=_execution(a, o.earlier),
                          later=_execution(a, o.later)) for o in ex.overlaps[:_MAX_LISTED]],
        "rc0_in_several_attempts": [dict(job(j), attempts=list(atts))
                                    for j, atts in list(ex.rc0_attempts.items())[:_MAX_LISTED]],
        "bad_lines": ex.bad_lines,
    }


def _execution(a: RunAnalysis, e: Execution) -> dict[str, Any]:
    return {"attempt": e.attempt, "start_s": e.start - a.t0, "end_s": e.end - a.t0,
            "exited": e.exited, "rc": e.rc, "killed": e.killed, "journal": e.journal}


def dumps(doc: dict[str, Any]) -> str:
    """Serialises the document deterministically (sorted keys, two-space indent)."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
