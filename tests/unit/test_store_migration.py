"""Database files made by torc-stress 0.1 open with the current schema, nothing lost."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from torc_stress.server.store import create_schema, open_writer_connection


def make_old_file(path: Path) -> None:
    """A 0.1 file: the running job's compute node lives in job_internal, as in torc."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.executescript(
        """
        CREATE TABLE job (id INTEGER PRIMARY KEY AUTOINCREMENT, workflow_id INTEGER NOT NULL,
                          name TEXT NOT NULL, command TEXT NOT NULL,
                          status INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE job_internal (job_id INTEGER PRIMARY KEY, input_hash TEXT,
                                   active_compute_node_id INTEGER);
        CREATE TABLE compute_node (id INTEGER PRIMARY KEY, workflow_id INTEGER NOT NULL);
        INSERT INTO compute_node (id, workflow_id) VALUES (7, 1);
        INSERT INTO job (id, workflow_id, name, command, status) VALUES
            (1, 1, 'running', 'true', 4), (2, 1, 'done', 'true', 5), (3, 1, 'orphan', 'true', 4);
        INSERT INTO job_internal (job_id, active_compute_node_id) VALUES (1, 7), (2, NULL), (3, 9);
        """
    )
    conn.close()


def test_an_old_file_gets_the_running_jobs_compute_node_on_the_job_row(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_old_file(path)
    conn = open_writer_connection(path)
    create_schema(conn)
    rows = conn.execute("SELECT id, active_compute_node_id FROM job ORDER BY id").fetchall()
    conn.close()
    assert rows == [(1, 7), (2, None), (3, None)]


def test_opening_a_current_file_twice_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    for _ in range(2):
        conn = open_writer_connection(path)
        create_schema(conn)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(job)")]
        conn.close()
    assert columns.count("active_compute_node_id") == 1
