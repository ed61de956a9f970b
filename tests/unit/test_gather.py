"""Gather on the controller: unpack fetched tarballs safely; read results from the DB copy."""

from __future__ import annotations

import io
import sqlite3
import tarfile
from contextlib import closing
from pathlib import Path

import pytest

from torc_stress.cluster import gather
from torc_stress.errors import RunDirError


def make_tarball(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_tarballs_are_unpacked_into_the_host_directory_and_removed(tmp_path: Path) -> None:
    host = gather.host_dir(tmp_path, "w1")
    make_tarball(host / "workers.tar.gz", {"./worker-1.log": b"log\n",
                                           "./job_stdio/job_wf1_j1_r1_a1.o": b"hi\n"})
    [record] = gather.unpack_host_tarballs(tmp_path, ["w1"])
    assert (host / "worker-1.log").read_text() == "log\n"
    assert (host / "job_stdio" / "job_wf1_j1_r1_a1.o").is_file()
    assert not (host / "workers.tar.gz").exists()
    assert record.missing == ("server.tar.gz",)
    assert record.files == 2


def test_a_member_escaping_the_host_directory_is_refused(tmp_path: Path) -> None:
    host = gather.host_dir(tmp_path, "evil")
    make_tarball(host / "server.tar.gz", {"../../outside.txt": b"x"})
    with pytest.raises(RunDirError, match="cannot unpack"):
        gather.unpack_host_tarballs(tmp_path, ["evil"])
    assert not (tmp_path / "outside.txt").exists()


def small_db(path: Path) -> None:
    """A database with the columns gather reads: two hosts, one job failed, one still blocked."""
    with closing(sqlite3.connect(path)) as db:
        db.executescript("""
            PRAGMA journal_mode=WAL;
            CREATE TABLE compute_node (id INTEGER PRIMARY KEY, hostname TEXT);
            CREATE TABLE job (id INTEGER PRIMARY KEY, workflow_id INTEGER, status INTEGER);
            CREATE TABLE result (id INTEGER PRIMARY KEY, workflow_id INTEGER, job_id INTEGER,
                                 compute_node_id INTEGER, status INTEGER);
            INSERT INTO compute_node VALUES (1, 'w1'), (2, 'w1'), (3, 'w2');
            INSERT INTO job VALUES (1, 1, 5), (2, 1, 5), (3, 1, 5), (4, 1, 6), (5, 1, 1), (6, 2, 5);
            INSERT INTO result VALUES (1, 1, 1, 1, 5), (2, 1, 2, 2, 5), (3, 1, 3, 3, 5),
                                      (4, 1, 4, 3, 6), (5, 2, 6, 3, 5);
        """)
        db.commit()


def test_job_counts_are_per_status_name_for_one_workflow(tmp_path: Path) -> None:
    small_db(tmp_path / "server.db")
    counts = gather.job_counts(tmp_path / "server.db", 1)
    assert counts == {"completed": 3, "failed": 1, "blocked": 1}


def test_completed_jobs_are_counted_per_worker_host_name(tmp_path: Path) -> None:
    small_db(tmp_path / "server.db")
    assert gather.completed_per_host(tmp_path / "server.db", 1) == {"w1": 2, "w2": 1}


def test_the_gathered_copy_becomes_a_single_file_database(tmp_path: Path) -> None:
    host = gather.host_dir(tmp_path, "srv")
    host.mkdir(parents=True)
    small_db(host / "server.db")
    gather.unpack_host_tarballs(tmp_path, ["srv"])
    gather.job_counts(host / "server.db", 1)
    assert sorted(p.name for p in host.iterdir()) == ["server.db"]


def test_a_file_that_is_not_a_database_is_a_run_dir_error(tmp_path: Path) -> None:
    (tmp_path / "server.db").write_text("not sqlite")
    with pytest.raises(RunDirError, match="server.db"):
        gather.job_counts(tmp_path / "server.db", 1)
