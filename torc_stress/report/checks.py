"""The verdict: the seed's expected behaviour as checks with reference, tolerance and measurement.

Every limit lives in :class:`Thresholds` (defaults from the seed README's "Expected Behavior");
load other values from YAML with :meth:`Thresholds.load`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from torc_stress.errors import ConfigError
from torc_stress.report.analysis import Transition
from torc_stress.report.faults import FaultFigures
from torc_stress.report.overview import RunAnalysis

_MAX_LISTED = 5


class Status(StrEnum):
    """A check's outcome."""

    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class Thresholds:
    """The limits the checks apply; the defaults are the seed's success case.

    Attributes:
        stall_s: longest allowed pause with work ready but nothing progressing.
        transition_in_s: last stage job completed -> barrier completed.
        transition_out_s: barrier completed -> first job of the next stage started.
        total_time_s: first job ready -> last job completed ("under a few minutes").
        stage_growth_ratio: a later stage may take at most this times the first stage ...
        stage_growth_slack_s: ... or the first stage plus this many seconds, whichever is larger
            (short stages are dominated by timing noise).
        lock_errors: allowed ERROR-level "database is locked" lines.
        fault_recovery_s: an injected fault -> the next job completion (partition and
            restart-server: from the fault's end).
    """

    stall_s: float = 5.0
    transition_in_s: float = 2.0
    transition_out_s: float = 2.0
    total_time_s: float = 180.0
    stage_growth_ratio: float = 1.5
    stage_growth_slack_s: float = 1.0
    lock_errors: int = 0
    fault_recovery_s: float = 30.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(
                    f"threshold {f.name} must be a non-negative number, not {value!r}"
                )

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> Thresholds:
        """Builds thresholds from a mapping; unknown keys are errors.

        Raises:
            ConfigError: an unknown key or a bad value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown threshold(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> Thresholds:
        """Loads thresholds from a YAML mapping file (missing keys keep their defaults).

        Raises:
            ConfigError: the file is unreadable, not a mapping, or has bad keys or values.
        """
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read thresholds file {path}: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"thresholds file {path} must hold a mapping of name: value")
        return cls.from_mapping(values)


@dataclass(frozen=True)
class Check:
    """One check of the verdict, ReFrame style: reference, bounds, unit, measured value.

    Attributes:
        name: stable identifier (JUnit test case name).
        title: what is checked, in words.
        status: PASS, FAIL or SKIP.
        measured: the measured value (None when it could not be measured).
        reference: the target value.
        lower: the lowest passing value, if any.
        upper: the highest passing value, if any.
        unit: the unit of measured, reference and bounds.
        expected: what a pass looks like, in words.
        detail: what was measured, in words (on failure: what went wrong).
        where: files (relative to the run directory) and job groups to look at.
    """

    name: str
    title: str
    status: Status
    measured: float | int | None
    reference: float | int | None
    lower: float | int | None
    upper: float | int | None
    unit: str
    expected: str
    detail: str
    where: tuple[str, ...] = ()


def _bounded(
    name: str, title: str, measured: float | int | None, upper: float | int, unit: str,
    expected: str, detail: str, where: tuple[str, ...], reference: float | int = 0,
) -> Check:
    ok = measured is not None and measured <= upper
    return Check(name, title, Status.PASS if ok else Status.FAIL, measured, reference, None,
                 upper, unit, expected, detail, where)


def build_checks(a: RunAnalysis, t: Thresholds) -> tuple[Check, ...]:
    """Evaluates every check of the verdict against the thresholds.

    Args:
        a: the run's analysis.
        t: the limits.

    Returns:
        The checks in a fixed order: completion, exactly once, lock errors, stuck jobs, stall,
        transitions per barrier, total time, stage scaling, faults injected, recovery per fault.
    """
    return (
        completion_check(a),
        exactly_once_check(a),
        lock_error_check(a, t),
        stuck_check(a),
        stall_check(a, t),
        *transition_checks(a, t),
        total_time_check(a, t),
        scaling_check(a, t),
        faults_injected_check(a),
        *recovery_checks(a, t),
    )


def completion_check(a: RunAnalysis) -> Check:
    """Every job completed; names the stages of the jobs that did not."""
    not_done = [lv for lv in a.levels if lv.statuses.get("completed", 0) != lv.jobs]
    parts = [
        f"{lv.label} (depth {lv.depth}, {lv.kind}): "
        + ", ".join(f"{n} {s}" for s, n in lv.statuses.items() if s != "completed")
        for lv in not_done
    ]
    ok = a.jobs > 0 and a.completed == a.jobs
    states = ", ".join(f"{n} {s}" for s, n in a.statuses.items())
    detail = f"{a.completed} of {a.jobs} jobs completed ({states or 'no jobs'})"
    if not ok and parts:
        detail += "; not completed by stage: " + "; ".join(parts)
    return Check(
        "all_jobs_completed", "every job completed", Status.PASS if ok else Status.FAIL,
        a.completed, a.jobs, a.jobs, None, "jobs",
        f"{a.jobs} of {a.jobs} jobs completed; none failed, canceled, blocked, ready, pending "
        "or running", detail,
        (f"{a.data.files['server_db']} (table job)", *(f"stage {lv.label}" for lv in not_done)),
    )


def lock_error_check(a: RunAnalysis, t: Thresholds) -> Check:
    """Zero ERROR-level "database is locked" lines; the DEBUG retry count is reported."""
    log = a.log
    measured = max(log.lock_error_count, a.metrics_lock_errors)
    detail = (f"{log.lock_error_count} ERROR 'database is locked' line(s) in the server log, "
              f"{log.lock_retries} DEBUG lock retries, server metrics lock_errors="
              f"{a.metrics_lock_errors}")
    if log.lock_errors:
        detail += "; first: " + "; ".join(
            f"line {n}: {text}" for n, text in log.lock_errors[:_MAX_LISTED])
    where = [a.data.files["server_log"]]
    where += [f"{a.data.files['server_log']}:{n}" for n, _ in log.lock_errors[:_MAX_LISTED]]
    if "server_metrics" in a.data.files:
        where.append(a.data.files["server_metrics"])
    return _bounded(
        "no_database_locked_errors", "no ERROR-level 'database is locked'", measured,
        t.lock_errors, "lines",
        f"at most {t.lock_errors} ERROR-level 'database is locked' lines (DEBUG retries are fine)",
        detail, tuple(where),
    )


def stuck_check(a: RunAnalysis) -> Check:
    """No job left blocked although all its dependencies are done."""
    groups = Counter(_label_of(a, j.id) for j in a.stuck_blocked)
    names = [j.name for j in a.stuck_blocked[:_MAX_LISTED]]
    detail = f"{len(a.stuck_blocked)} job(s) blocked with every dependency done"
    if a.stuck_blocked:
        detail += " (" + ", ".join(f"{n} in {g}" for g, n in sorted(groups.items()))
        detail += f"; e.g. {', '.join(names)})"
    return _bounded(
        "no_job_stuck_blocked", "no job stuck blocked with all dependencies done",
        len(a.stuck_blocked), 0, "jobs",
        "no job in status blocked whose dependencies are all done", detail,
        (f"{a.data.files['server_db']} (tables job, job_depends_on)",
         *(f"stage {g}" for g in sorted(groups))),
    )


def _label_of(a: RunAnalysis, job_id: int) -> str:
    level = a.level_of(job_id)
    return level.label if level else "?"


def stall_check(a: RunAnalysis, t: Thresholds) -> Check:
    """No interval longer than the tolerance with work waiting and nothing progressing."""
    stall = a.stall
    detail = f"longest pause with work waiting: {stall.seconds:.3f} s"
    if stall.start is not None and stall.end is not None:
        detail += (f" from {stall.start:.3f} s to {stall.end:.3f} s after the start, waiting: "
                   f"{', '.join(stall.waiting_jobs)}")
    return _bounded(
        "no_stall", "no stall while work was ready", stall.seconds, t.stall_s, "s",
        f"no interval over {t.stall_s:g} s in which nothing progressed although jobs could run",
        detail,
        (f"{a.data.files['server_db']} (job ready/claim/start/end times)",
         a.data.files["server_log"]),
    )


def transition_checks(a: RunAnalysis, t: Thresholds) -> list[Check]:
    """Two checks per barrier: stage done -> barrier done, barrier done -> next stage started."""
    checks: list[Check] = []
    for tr in a.transitions:
        checks.append(_transition(a, tr, "into", tr.into_s, t.transition_in_s,
                                  f"last job of {tr.before} completed -> {tr.barrier} completed"))
        if tr.after is not None:
            checks.append(_transition(
                a, tr, "out_of", tr.out_s, t.transition_out_s,
                f"{tr.barrier} completed -> first job of {tr.after} started"))
    return checks


def _transition(
    a: RunAnalysis, tr: Transition, way: str, measured: float | None, limit: float, what: str,
) -> Check:
    name = f"transition_{way}[{tr.barrier}]"
    title = f"stage transition: {what}"
    expected = f"{what} within {limit:g} s"
    where = (f"{a.data.files['server_db']} (job end_time/start_time of {tr.before}, "
             f"{tr.barrier}{', ' + tr.after if tr.after else ''})", a.data.files["server_log"])
    if not tr.reached and measured is None:
        return Check(name, title, Status.SKIP, None, 0, None, limit, "s", expected,
                     f"not reached: {tr.before} did not finish", where)
    if measured is None:
        detail = f"did not happen: {what.split(' -> ')[1]} never came"
    else:
        hop = tr.hop_in_s if way == "into" else tr.hop_out_s
        detail = f"{measured:.3f} s" + (f" (of which unblocking: {hop:.3f} s)" if hop is not None
                                        else "")
    return _bounded(name, title, measured, limit, "s", expected, detail, where)


def total_time_check(a: RunAnalysis, t: Thresholds) -> Check:
    """First job ready -> last job completed, under the budget; fails if the run did not end."""
    if a.total_time_s is None:
        last = f"{a.last_end_s:.3f} s" if a.last_end_s is not None else "never"
        detail = f"the workflow did not finish (last completion at {last})"
    else:
        detail = f"{a.total_time_s:.3f} s from the first job ready to the last job completed"
    return _bounded(
        "total_workflow_time", "total workflow time within budget", a.total_time_s,
        t.total_time_s, "s", f"all jobs completed within {t.total_time_s:g} s", detail,
        (f"{a.data.files['server_db']} (job ready_time, end_time)",), reference=t.total_time_s,
    )


def scaling_check(a: RunAnalysis, t: Thresholds) -> Check:
    """No later stage takes much longer than the first (linear growth with stages)."""
    s = a.scaling
    first, worst = s["first_s"], s["max_later_s"]
    expected = (f"every later stage within max({t.stage_growth_ratio:g} x first stage, first "
                f"stage + {t.stage_growth_slack_s:g} s)")
    where = (f"{a.data.files['server_db']} (job start_time, end_time per stage)",)
    if first is None or worst is None:
        return Check("linear_stage_scaling", "stage durations do not grow", Status.SKIP, None,
                     first, None, None, "s", expected,
                     f"needs two finished stages, found {s['stages']}", where)
    limit = max(t.stage_growth_ratio * first, first + t.stage_growth_slack_s)
    slowest = _slowest_stage(a)
    detail = (f"first stage {first:.3f} s, slowest later stage {worst:.3f} s ({slowest}), "
              f"ratio {_fmt(s['max_ratio'])}, fitted growth {_fmt(s['growth_pct_per_stage'])} "
              "% of the first stage per stage")
    if s.get("excused"):
        detail += f"; {s['excused']} stage(s) disturbed by an injected fault left out"
    return _bounded("linear_stage_scaling", "stage durations do not grow", worst, limit, "s",
                    expected, detail, where, reference=first)


def _slowest_stage(a: RunAnalysis) -> str:
    stages = [lv for lv in a.levels if lv.kind == "stage" and lv.duration_s is not None][1:]
    by_duration: dict[float, list[str]] = defaultdict(list)
    for lv in stages:
        by_duration[lv.duration_s or 0.0].append(lv.label)
    return by_duration[max(by_duration)][0] if by_duration else "?"


def _fmt(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def exactly_once_check(a: RunAnalysis) -> Check:
    """One successful result per job (database) and no job run twice (execution journals)."""
    ex = a.executions
    failing = [c for c in ex.counts() if not c.ok]
    offenders = ex.offenders()
    parts = [f"{c.name}: {c.measured}" for c in ex.counts()]
    detail = "; ".join(parts)
    if not ex.journals:
        detail += "; no execution journals (the run predates them): executions not checked"
    if failing:
        detail += "; out of bounds: " + ", ".join(c.name for c in failing)
        detail += "; e.g. " + "; ".join(_offence(a, j) for j in offenders[:_MAX_LISTED])
    where = [f"{a.data.files['server_db']} (tables job, result: attempt_id)"]
    where += sorted({j.path for j in a.data.journals})[:_MAX_LISTED]
    return Check(
        "every_job_completed_exactly_once", "every job completed exactly once",
        Status.FAIL if failing else Status.PASS, len(offenders), 0, None, 0, "jobs",
        "one successful result per job; no attempt spawned twice, no two executions of a job "
        "at once", detail, tuple(where),
    )


def _offence(a: RunAnalysis, job_id: int) -> str:
    ex = a.executions
    what = []
    if ex.successes.get(job_id, 0) != 1:
        what.append(f"{ex.successes.get(job_id, 0)} successful results")
    what += [f"attempt {att} spawned {n} times" for (j, att), n in ex.double_spawns.items()
             if j == job_id]
    what += [f"attempt {o.later.attempt} spawned while attempt {o.earlier.attempt} ran "
             f"({o.later.journal}, {o.earlier.journal})" for o in ex.overlaps if o.job_id == job_id]
    if job_id in ex.rc0_attempts:
        what.append("exit 0 in attempts " + ", ".join(map(str, ex.rc0_attempts[job_id])))
    return f"{_job_name(a, job_id)} (id {job_id}): {', '.join(what)}"


def _job_name(a: RunAnalysis, job_id: int) -> str:
    return next((j.name for j in a.data.jobs if j.id == job_id), "?")


def faults_injected_check(a: RunAnalysis) -> Check:
    """Every fault asked for was injected: otherwise the run did not test what it was asked to."""
    faults = a.faults.faults
    missing = [f.fault for f in faults if not f.fault.injected]
    expected = "every --fault of the run injected (its trigger came)"
    where = ("run.json (faults)",)
    if not faults:
        return Check("faults_injected", "every fault asked for was injected", Status.SKIP, 0, 0,
                     0, None, "faults", expected, "no faults asked for", where)
    detail = f"{len(faults) - len(missing)} of {len(faults)} fault(s) injected"
    if missing:
        detail += "; not triggered: " + "; ".join(
            f"{f.spec}" + (f" ({f.error})" if f.error else "") for f in missing)
    errors = [f.fault for f in faults if f.fault.injected and f.fault.error]
    if errors:
        detail += "; injected with an error: " + "; ".join(f"{f.spec}: {f.error}" for f in errors)
    return Check("faults_injected", "every fault asked for was injected",
                 Status.FAIL if missing else Status.PASS, len(faults) - len(missing),
                 len(faults), len(faults), None, "faults", expected, detail, where)


def recovery_checks(a: RunAnalysis, t: Thresholds) -> list[Check]:
    """One check per fault: the run went on completing jobs soon after it."""
    return [_recovery(a, f, t.fault_recovery_s) for f in a.faults.faults]


def _recovery(a: RunAnalysis, f: FaultFigures, limit: float) -> Check:
    since = "its end" if f.fault.kind in ("partition", "restart-server") else "its injection"
    name = f"fault_recovery[{f.fault.spec}]"
    title = f"a job completed soon after {f.fault.kind} on {f.target}"
    expected = f"a job completed within {limit:g} s of {since}"
    where = ("run.json (faults)", f"{a.data.files['server_db']} (job end_time)",
             a.data.files["server_log"])
    if not f.fault.injected:
        return Check(name, title, Status.SKIP, None, 0, None, limit, "s", expected,
                     "not triggered", where)
    if f.completed_before >= a.jobs:
        return Check(name, title, Status.SKIP, None, 0, None, limit, "s", expected,
                     "every job had completed before the fault", where)
    measured = f.measured_recovery_s
    if measured is None and since == "its end" and f.fault.ended_at is not None and all(
            j.end_time is not None and j.end_time <= f.fault.ended_at for j in a.data.jobs):
        return Check(name, title, Status.SKIP, None, 0, None, limit, "s", expected,
                     "every job had completed before the fault ended (the run's end ended it)",
                     where)
    detail = (f"next completion {_fmt(f.recovery_s)} s after the injection"
              + (f", {_fmt(f.recovery_from_end_s)} s after the end" if since == "its end" else "")
              + f"; {f.requeued} job(s) re-queued by {len(f.expiries)} lease expiry line(s)")
    if measured is None:
        detail = f"no job completed after {since}; " + detail
    return _bounded(name, title, measured, limit, "s", expected, detail, where)
