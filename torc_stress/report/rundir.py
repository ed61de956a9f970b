"""Loads a gathered run directory into a :class:`RunData` record (the report's only input).

Everything the report computes comes from here: ``run.json``, the server host's ``server.db``
(opened read-only), ``server.log`` and ``metrics.json``, the workers' metrics files and their
execution journals (``executions_*.jsonl``). Paths kept in the record are relative to the run
directory so the report does not depend on where the directory lives.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torc_stress.errors import RunDirError
from torc_stress.report.journals import ExecutionJournal, parse_journal

logger = logging.getLogger(__name__)

_JOB_TIME_COLUMNS = ("ready_time", "claim_time", "start_time", "end_time")
_HINT = "Point 'torc-stress report' at a directory gathered by 'invoke cluster-run'."


@dataclass(frozen=True)
class JobRow:
    """One row of the ``job`` table, with the server-clock timestamps (epoch seconds)."""

    id: int
    name: str
    status: int
    ready_time: float | None = None
    claim_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    attempt_id: int = 1


@dataclass(frozen=True)
class ResultRow:
    """One row of the ``result`` table (``attempt_id`` is 1 in databases that lack it)."""

    job_id: int
    run_id: int
    return_code: int
    status: int
    compute_node_id: int | None
    attempt_id: int = 1


@dataclass(frozen=True)
class WorkerMetrics:
    """One worker's metrics document and where it was found (relative to the run directory)."""

    host: str
    path: str
    doc: dict[str, Any]


@dataclass(frozen=True)
class RunData:
    """Everything the report needs from a run directory, loaded into memory.

    Attributes:
        run: the parsed ``run.json``.
        server_host: the host directory name that holds the server's files.
        workflow_id: the workflow the report is about.
        jobs: the workflow's jobs, sorted by id.
        dependencies: ``(job_id, depends_on_job_id)`` pairs, sorted.
        results: the workflow's results, sorted by ``(job_id, run_id)``.
        compute_nodes: compute node id -> hostname.
        log_lines: the server log, one string per line.
        server_metrics: the final server metrics document, or None if it was not gathered.
        worker_metrics: every worker metrics document found under ``hosts/``.
        files: logical name -> path relative to the run directory (for "where to look").
        journals: every worker execution journal found under ``hosts/`` (none in older runs).
        attempts_recorded: whether the database counts attempts (``job.attempt_id``); when it
            does not, every job and result reads as attempt 1.
    """

    run: dict[str, Any]
    server_host: str
    workflow_id: int
    jobs: tuple[JobRow, ...]
    dependencies: tuple[tuple[int, int], ...]
    results: tuple[ResultRow, ...]
    compute_nodes: dict[int, str]
    log_lines: tuple[str, ...]
    server_metrics: dict[str, Any] | None
    worker_metrics: tuple[WorkerMetrics, ...] = ()
    files: dict[str, str] = field(default_factory=dict)
    journals: tuple[ExecutionJournal, ...] = ()
    attempts_recorded: bool = False


def load_run_dir(run_dir: Path) -> RunData:
    """Loads and validates a run directory.

    Args:
        run_dir: the directory written by the harness (``runs/<run-id>``).

    Returns:
        The run's data, with file paths relative to ``run_dir``.

    Raises:
        RunDirError: something the report needs is missing or unreadable; the message names it.
    """
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist or is not a directory. {_HINT}")
    run = _read_run_json(run_dir)
    host = _server_host(run_dir, run)
    host_dir = run_dir / "hosts" / host
    rel = f"hosts/{host}"
    db = _require(host_dir / "server.db", f"{rel}/server.db", "the server's database copy")
    log = _require(host_dir / "server.log", f"{rel}/server.log", "the server's log")
    tables = _read_database(db, f"{rel}/server.db", run)
    files = {"run": "run.json", "server_db": f"{rel}/server.db", "server_log": f"{rel}/server.log"}
    metrics = _read_json_optional(host_dir / "metrics.json", f"{rel}/metrics.json")
    if metrics is not None:
        files["server_metrics"] = f"{rel}/metrics.json"
    return RunData(
        run=run,
        server_host=host,
        log_lines=tuple(log.read_text(encoding="utf-8", errors="replace").splitlines()),
        server_metrics=metrics,
        worker_metrics=_read_worker_metrics(run_dir),
        files=files,
        journals=_read_journals(run_dir),
        **tables,
    )


def _require(path: Path, rel: str, what: str) -> Path:
    if not path.is_file():
        raise RunDirError(f"missing {rel} ({what}) in the run directory. {_HINT}")
    return path


def _read_run_json(run_dir: Path) -> dict[str, Any]:
    path = _require(run_dir / "run.json", "run.json", "the run record")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"run.json is not readable JSON ({exc}). {_HINT}") from exc
    if not isinstance(run, dict):
        raise RunDirError(f"run.json must hold a JSON object, not {type(run).__name__}. {_HINT}")
    return run


def _server_host(run_dir: Path, run: dict[str, Any]) -> str:
    server = run.get("server")
    named = server.get("host") if isinstance(server, dict) else None
    if isinstance(named, str) and (run_dir / "hosts" / named).is_dir():
        return named
    candidates = sorted(p.parent.name for p in (run_dir / "hosts").glob("*/server.db"))
    if candidates:
        return candidates[0]
    if isinstance(named, str):
        raise RunDirError(
            f"missing hosts/{named}/server.db (run.json names {named!r} as the server host). "
            + _HINT
        )
    raise RunDirError(f"missing hosts/<server host>/server.db: no host directory has one. {_HINT}")


def _read_json_optional(path: Path, rel: str) -> dict[str, Any] | None:
    if not path.is_file():
        logger.warning("no %s in the run directory; contention figures will be empty", rel)
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{rel} is not readable JSON ({exc}). {_HINT}") from exc
    return doc if isinstance(doc, dict) else None


def _read_worker_metrics(run_dir: Path) -> tuple[WorkerMetrics, ...]:
    found = []
    for path in sorted((run_dir / "hosts").glob("*/**/worker_*_metrics.json")):
        rel = path.relative_to(run_dir).as_posix()
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("skipping unreadable worker metrics file %s", rel)
            continue
        if isinstance(doc, dict):
            found.append(WorkerMetrics(host=path.relative_to(run_dir / "hosts").parts[0],
                                       path=rel, doc=doc))
    return tuple(found)


def _read_journals(run_dir: Path) -> tuple[ExecutionJournal, ...]:
    found = []
    for path in sorted((run_dir / "hosts").glob("*/**/executions_*.jsonl")):
        rel = path.relative_to(run_dir).as_posix()
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise RunDirError(f"cannot read {rel}: {exc}. {_HINT}") from exc
        host = path.relative_to(run_dir / "hosts").parts[0]
        journal = parse_journal(host, rel, text.splitlines())
        if journal.bad_lines:
            logger.warning("%s: %d line(s) are not journal events", rel, journal.bad_lines)
        found.append(journal)
    return tuple(found)


def _read_database(db: Path, rel: str, run: dict[str, Any]) -> dict[str, Any]:
    uri = f"{db.resolve().as_uri()}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise RunDirError(f"cannot open {rel}: {exc}. {_HINT}") from exc
    try:
        return _read_tables(conn, rel, run)
    except sqlite3.Error as exc:
        raise RunDirError(
            f"cannot read {rel}: {exc}. Is it a torc-stress server database?"
        ) from exc
    finally:
        conn.close()


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _read_tables(conn: sqlite3.Connection, rel: str, run: dict[str, Any]) -> dict[str, Any]:
    for table, needed in (
        ("job", {"id", "workflow_id", "name", "status", *_JOB_TIME_COLUMNS}),
        ("job_depends_on", {"job_id", "depends_on_job_id"}),
    ):
        missing = sorted(needed - _columns(conn, table))
        if missing:
            raise RunDirError(
                f"{rel}: table {table} lacks column(s) {', '.join(missing)}; "
                "the report needs a database written by the torc-stress server."
            )
    workflow_id = _workflow_id(conn, rel, run)
    attempts = "attempt_id" in _columns(conn, "job")
    return {
        "workflow_id": workflow_id,
        "jobs": _read_jobs(conn, workflow_id, attempts),
        "dependencies": _read_dependencies(conn, workflow_id),
        "results": _read_results(conn, workflow_id),
        "compute_nodes": _read_compute_nodes(conn),
        "attempts_recorded": attempts,
    }


def _workflow_id(conn: sqlite3.Connection, rel: str, run: dict[str, Any]) -> int:
    workflow = run.get("workflow")
    wanted = workflow.get("id") if isinstance(workflow, dict) else None
    counts = dict(conn.execute("SELECT workflow_id, COUNT(*) FROM job GROUP BY workflow_id"))
    if isinstance(wanted, int) and wanted in counts:
        return wanted
    if not counts:
        raise RunDirError(f"{rel} holds no jobs: the workflow was never created on this server.")
    # NOTE: without a usable run.json workflow id, the biggest workflow is the one under test.
    return max(counts, key=lambda wid: (counts[wid], -wid))


def _read_jobs(conn: sqlite3.Connection, workflow_id: int, attempts: bool
               ) -> tuple[JobRow, ...]:
    attempt = "attempt_id" if attempts else "1"
    rows = conn.execute(
        "SELECT id, name, status, ready_time, claim_time, start_time, end_time, "
        f"{attempt} FROM job WHERE workflow_id = ? ORDER BY id",
        (workflow_id,),
    )
    return tuple(JobRow(*row) for row in rows)


def _read_dependencies(conn: sqlite3.Connection, workflow_id: int) -> tuple[tuple[int, int], ...]:
    rows = conn.execute(
        "SELECT d.job_id, d.depends_on_job_id FROM job_depends_on d JOIN job j ON j.id = d.job_id "
        "WHERE j.workflow_id = ? ORDER BY d.job_id, d.depends_on_job_id",
        (workflow_id,),
    )
    return tuple((int(a), int(b)) for a, b in rows)


def _read_results(conn: sqlite3.Connection, workflow_id: int) -> tuple[ResultRow, ...]:
    columns = _columns(conn, "result")
    if not {"job_id", "run_id", "return_code", "status"} <= columns:
        return ()
    node = "r.compute_node_id" if "compute_node_id" in columns else "NULL"
    attempt = "r.attempt_id" if "attempt_id" in columns else "1"
    rows = conn.execute(
        f"SELECT r.job_id, r.run_id, r.return_code, r.status, {node}, {attempt} FROM result r "
        "JOIN job j ON j.id = r.job_id WHERE j.workflow_id = ? "
        f"ORDER BY r.job_id, r.run_id, {attempt}",
        (workflow_id,),
    )
    return tuple(ResultRow(*row) for row in rows)


def _read_compute_nodes(conn: sqlite3.Connection) -> dict[int, str]:
    if not {"id", "hostname"} <= _columns(conn, "compute_node"):
        return {}
    return {int(i): str(h) for i, h in conn.execute("SELECT id, hostname FROM compute_node")}
