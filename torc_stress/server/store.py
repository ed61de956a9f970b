"""SQLite schema (torc's tables, the subset we use, plus our timestamps) and read connections."""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

from torc_stress.server.checks import shown
from torc_stress.statuses import JobStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS workflow_status (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL DEFAULT 0,
    has_detected_need_to_run_completion_script INTEGER NOT NULL DEFAULT 0,
    is_canceled INTEGER NOT NULL DEFAULT 0,
    is_archived INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS workflow (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    description TEXT,
    user TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    is_archived INTEGER NOT NULL DEFAULT 0,
    status_id INTEGER NOT NULL REFERENCES workflow_status(id) ON DELETE CASCADE,
    resource_monitor_config TEXT,
    compute_node_expiration_buffer_seconds INTEGER DEFAULT 60,
    compute_node_wait_for_new_jobs_seconds INTEGER DEFAULT 90,
    compute_node_ignore_workflow_completion INTEGER DEFAULT 0,
    compute_node_wait_for_healthy_database_minutes INTEGER DEFAULT 20,
    compute_node_min_time_for_new_jobs_seconds INTEGER DEFAULT 300,
    jobs_sort_method TEXT DEFAULT 'gpus_runtime_memory',
    slurm_defaults TEXT,
    use_pending_failed INTEGER DEFAULT 0
);
CREATE TABLE IF NOT EXISTS resource_requirements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id INTEGER NOT NULL REFERENCES workflow(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    num_cpus INTEGER NOT NULL DEFAULT 1,
    num_gpus INTEGER NOT NULL DEFAULT 0,
    num_nodes INTEGER NOT NULL DEFAULT 1,
    memory TEXT NOT NULL DEFAULT '1m',
    runtime TEXT NOT NULL DEFAULT 'P0DT1M',
    memory_bytes INTEGER NOT NULL,
    runtime_s INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS compute_node (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id INTEGER NOT NULL REFERENCES workflow(id) ON DELETE CASCADE,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    start_time TEXT NOT NULL,
    duration_seconds REAL,
    is_active INTEGER,
    num_cpus INTEGER NOT NULL,
    memory_gb REAL NOT NULL,
    num_gpus INTEGER NOT NULL,
    num_nodes INTEGER NOT NULL,
    time_limit TEXT,
    scheduler_config_id INTEGER,
    compute_node_type TEXT NOT NULL,
    scheduler TEXT,
    lease_s REAL
);
CREATE TABLE IF NOT EXISTS job (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id INTEGER NOT NULL REFERENCES workflow(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    command TEXT NOT NULL,
    status INTEGER NOT NULL DEFAULT 0,
    resource_requirements_id INTEGER REFERENCES resource_requirements(id) ON DELETE CASCADE,
    invocation_script TEXT,
    cancel_on_blocking_job_failure INTEGER NOT NULL DEFAULT 1,
    supports_termination INTEGER NOT NULL DEFAULT 0,
    scheduler_id INTEGER,
    scheduler_type TEXT,
    schedule_compute_nodes TEXT,
    unblocking_processed INTEGER NOT NULL DEFAULT 0,
    failure_handler_id INTEGER,
    attempt_id INTEGER NOT NULL DEFAULT 1,
    depth INTEGER NOT NULL DEFAULT 0,
    ready_time REAL,
    claim_time REAL,
    start_time REAL,
    end_time REAL,
    -- torc keeps this in job_internal; here the UPDATE that starts or ends a job sets it too
    -- (one row write per start and per completion fewer; see _migrate for older files)
    active_compute_node_id INTEGER REFERENCES compute_node(id) ON DELETE SET NULL
);
-- by workflow only: claims come from the writer's memory, so no hot query filters on status,
-- while a (workflow_id, status) index would be rewritten by each of a job's 4-5 status changes
CREATE INDEX IF NOT EXISTS idx_job_workflow ON job(workflow_id);
CREATE TABLE IF NOT EXISTS job_internal (
    job_id INTEGER PRIMARY KEY REFERENCES job(id) ON DELETE CASCADE,
    input_hash TEXT
);
CREATE TABLE IF NOT EXISTS job_depends_on (
    job_id INTEGER NOT NULL REFERENCES job(id) ON DELETE CASCADE,
    depends_on_job_id INTEGER NOT NULL REFERENCES job(id) ON DELETE CASCADE,
    workflow_id INTEGER NOT NULL REFERENCES workflow(id) ON DELETE CASCADE,
    PRIMARY KEY (job_id, depends_on_job_id)
);
CREATE INDEX IF NOT EXISTS idx_job_depends_on_upstream ON job_depends_on(depends_on_job_id);
CREATE INDEX IF NOT EXISTS idx_job_depends_on_workflow ON job_depends_on(workflow_id);
-- no AUTOINCREMENT on the per-completion tables: it rewrites sqlite_sequence in every
-- transaction that inserts (one more page per commit); ids still grow, as nothing deletes the
-- newest rows except deleting their workflow
CREATE TABLE IF NOT EXISTS result (
    id INTEGER PRIMARY KEY,
    workflow_id INTEGER NOT NULL REFERENCES workflow(id) ON DELETE CASCADE,
    job_id INTEGER NOT NULL REFERENCES job(id) ON DELETE CASCADE,
    run_id INTEGER NOT NULL,
    attempt_id INTEGER NOT NULL DEFAULT 1,
    compute_node_id INTEGER NOT NULL REFERENCES compute_node(id) ON DELETE CASCADE,
    return_code INTEGER NOT NULL,
    exec_time_minutes REAL NOT NULL,
    completion_time TEXT NOT NULL,
    status INTEGER NOT NULL,
    peak_memory_bytes INTEGER,
    avg_memory_bytes INTEGER,
    peak_cpu_percent REAL,
    avg_cpu_percent REAL,
    UNIQUE (job_id, run_id, attempt_id)
);
CREATE INDEX IF NOT EXISTS idx_result_workflow ON result(workflow_id);
CREATE TABLE IF NOT EXISTS workflow_result (
    workflow_id INTEGER NOT NULL REFERENCES workflow(id) ON DELETE CASCADE,
    job_id INTEGER NOT NULL REFERENCES job(id) ON DELETE CASCADE,
    result_id INTEGER NOT NULL REFERENCES result(id) ON DELETE CASCADE,
    PRIMARY KEY (workflow_id, job_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id INTEGER NOT NULL REFERENCES workflow(id) ON DELETE CASCADE,
    timestamp INTEGER NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS idx_event_workflow ON event(workflow_id, timestamp);
"""

_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)[bB]?\s*$")
_DURATION_RE = re.compile(
    r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)


def memory_bytes(text: str) -> int:
    """Parses torc's memory strings (``"100m"``, ``"2g"``; k/m/g/t are powers of 1024).

    Raises:
        ValueError: the string is not a memory size.
    """
    match = _MEMORY_RE.match(text)
    if not match:
        raise ValueError(f"bad memory {shown(text)}; use a number with k, m, g or t, e.g. '100m'")
    power = " kmgt".index(match.group(2).lower() or " ")
    size = float(match.group(1)) * 1024**power
    if not size < 2**63:  # also True for inf: SQLite stores no more
        raise ValueError(f"memory {shown(text)} is too large")
    return int(size)


def duration_seconds(text: str) -> int:
    """Parses an ISO-8601 duration such as ``PT1M`` or ``P0DT1H`` into whole seconds.

    Raises:
        ValueError: the string is not an ISO-8601 duration.
    """
    match = _DURATION_RE.match(text.strip().upper())
    if not match or text.strip().upper() in ("P", "PT"):
        raise ValueError(f"bad duration {shown(text)}; use ISO-8601, e.g. 'PT1M' or 'P0DT2H'")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if not total < 2**63:  # also True for inf: SQLite stores no more
        raise ValueError(f"duration {shown(text)} is too long")
    return int(total)


def open_writer_connection(path: Path, busy_timeout_ms: int = 50) -> sqlite3.Connection:
    """Opens the one read-write connection and makes sure the schema exists."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    """Creates the tables and indexes that do not exist yet, and brings older files up to date."""
    conn.executescript(SCHEMA)
    _migrate(conn)


def _migrate(conn: sqlite3.Connection) -> None:
    """Brings files made by older torc-stress versions up to date."""
    _migrate_active_node(conn)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(compute_node)")}
    if "lease_s" not in columns:  # torc-stress 0.1 and 0.2 files: no node was ever leased
        conn.execute("ALTER TABLE compute_node ADD COLUMN lease_s REAL")


def _migrate_active_node(conn: sqlite3.Connection) -> None:
    """Moves ``job_internal.active_compute_node_id`` into ``job`` (files of torc-stress 0.1)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(job)")}
    if "active_compute_node_id" in columns:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "ALTER TABLE job ADD COLUMN active_compute_node_id INTEGER "
            "REFERENCES compute_node(id) ON DELETE SET NULL"
        )
        # (a node that is gone, should any be, is left out rather than failing the upgrade)
        conn.execute(
            "UPDATE job SET active_compute_node_id = (SELECT cn.id FROM job_internal ji "
            "JOIN compute_node cn ON cn.id = ji.active_compute_node_id WHERE ji.job_id = job.id)"
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class ReadPool:
    """Per-thread read-only connections (WAL readers never block the writer)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def conn(self) -> sqlite3.Connection:
        """Returns this thread's read connection, opening it on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Closes every connection opened so far."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


JOB_COLUMNS = (
    "id, workflow_id, name, command, status, resource_requirements_id, invocation_script, "
    "cancel_on_blocking_job_failure, supports_termination, scheduler_id, failure_handler_id, "
    "attempt_id"
)


def job_row_to_model(row: Any, *, include_script: bool = True) -> dict[str, Any]:
    """Turns a ``job`` row (selected with :data:`JOB_COLUMNS`) into a torc ``job_model``.

    Null columns are left out, as on the wire.
    """
    model = {
        "id": row[0],
        "workflow_id": row[1],
        "name": row[2],
        "command": row[3],
        "status": _WIRE[row[4]],
        "cancel_on_blocking_job_failure": bool(row[7]),
        "supports_termination": bool(row[8]),
        "attempt_id": row[11],
    }
    if row[5] is not None:
        model["resource_requirements_id"] = row[5]
    if row[9] is not None:
        model["scheduler_id"] = row[9]
    if row[10] is not None:
        model["failure_handler_id"] = row[10]
    if include_script and row[6] is not None:
        model["invocation_script"] = row[6]
    return model


_WIRE = {int(s): s.wire for s in JobStatus}


WORKFLOW_COLUMNS = (
    "w.id, w.name, w.description, w.user, w.timestamp, w.status_id, "
    "w.compute_node_expiration_buffer_seconds, w.compute_node_wait_for_new_jobs_seconds, "
    "w.compute_node_ignore_workflow_completion, w.compute_node_wait_for_healthy_database_minutes, "
    "w.compute_node_min_time_for_new_jobs_seconds, w.jobs_sort_method, w.use_pending_failed, "
    "s.run_id, s.is_canceled, s.is_archived"
)


def workflow_row_to_model(row: Any) -> dict[str, Any]:
    """Turns a ``workflow JOIN workflow_status`` row into a torc ``workflow_model``."""
    return {
        "id": row[0],
        "name": row[1],
        "description": row[2],
        "user": row[3],
        "timestamp": row[4],
        "status_id": row[5],
        "compute_node_expiration_buffer_seconds": row[6],
        "compute_node_wait_for_new_jobs_seconds": row[7],
        "compute_node_ignore_workflow_completion": bool(row[8]),
        "compute_node_wait_for_healthy_database_minutes": row[9],
        "compute_node_min_time_for_new_jobs_seconds": row[10],
        "jobs_sort_method": row[11],
        "use_pending_failed": bool(row[12]),
        "run_id": row[13],
        "is_canceled": bool(row[14]),
        "is_archived": bool(row[15]),
    }


RR_COLUMNS = (
    "id, workflow_id, name, num_cpus, num_gpus, num_nodes, memory, runtime, memory_bytes, runtime_s"
)


def rr_row_to_model(row: Any) -> dict[str, Any]:
    """Turns a ``resource_requirements`` row into a torc ``resource_requirements_model``."""
    return {
        "id": row[0],
        "workflow_id": row[1],
        "name": row[2],
        "num_cpus": row[3],
        "num_gpus": row[4],
        "num_nodes": row[5],
        "memory": row[6],
        "runtime": row[7],
    }


CN_COLUMNS = (
    "id, workflow_id, hostname, pid, start_time, duration_seconds, is_active, num_cpus, memory_gb, "
    "num_gpus, num_nodes, time_limit, scheduler_config_id, compute_node_type, scheduler"
)


def cn_row_to_model(row: Any) -> dict[str, Any]:
    """Turns a ``compute_node`` row into a torc ``compute_node_model``."""
    return {
        "id": row[0],
        "workflow_id": row[1],
        "hostname": row[2],
        "pid": row[3],
        "start_time": row[4],
        "duration_seconds": row[5],
        "is_active": None if row[6] is None else bool(row[6]),
        "num_cpus": row[7],
        "memory_gb": row[8],
        "num_gpus": row[9],
        "num_nodes": row[10],
        "time_limit": row[11],
        "scheduler_config_id": row[12],
        "compute_node_type": row[13],
        "scheduler": row[14],
    }


RESULT_COLUMNS = (
    "r.id, r.workflow_id, r.job_id, r.run_id, r.attempt_id, r.compute_node_id, r.return_code, "
    "r.exec_time_minutes, r.completion_time, r.status, r.peak_memory_bytes, r.avg_memory_bytes, "
    "r.peak_cpu_percent, r.avg_cpu_percent, j.name"
)


def result_row_to_model(row: Any) -> dict[str, Any]:
    """Turns a ``result JOIN job`` row into a torc ``result_model``."""
    return {
        "id": row[0],
        "workflow_id": row[1],
        "job_id": row[2],
        "run_id": row[3],
        "attempt_id": row[4],
        "compute_node_id": row[5],
        "return_code": row[6],
        "exec_time_minutes": row[7],
        "completion_time": row[8],
        "status": JobStatus(row[9]).wire,
        "peak_memory_bytes": row[10],
        "avg_memory_bytes": row[11],
        "peak_cpu_percent": row[12],
        "avg_cpu_percent": row[13],
        "job_name": row[14],
    }
