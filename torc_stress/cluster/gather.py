"""The controller side of gathering: unpack fetched tarballs, read results from the gathered DB.

``playbooks/gather.yml`` fetches ``server.tar.gz`` and ``workers.tar.gz`` into
``<run dir>/hosts/<host>/``; :func:`unpack_host_tarballs` extracts them in place (refusing
members that would land outside the host directory) and removes them. :func:`job_counts` and
:func:`completed_per_host` read the consistent database copy the server host produced with the
SQLite backup API.
"""

from __future__ import annotations

import logging
import sqlite3
import tarfile
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torc_stress.errors import RunDirError
from torc_stress.statuses import JobStatus

log = logging.getLogger(__name__)

HOSTS_DIR = "hosts"
TARBALLS = ("server.tar.gz", "workers.tar.gz")
SERVER_DB = "server.db"


@dataclass(frozen=True)
class GatheredHost:
    """What was unpacked for one host."""

    name: str
    directory: Path
    files: int
    missing: tuple[str, ...] = field(default_factory=tuple)


def host_dir(run_dir: Path, host: str) -> Path:
    """The directory of one host's artifacts in a run directory."""
    return Path(run_dir) / HOSTS_DIR / host


def unpack_host_tarballs(run_dir: Path, hosts: Iterable[str]) -> list[GatheredHost]:
    """Extracts each host's fetched tarballs into its host directory and deletes them.

    Args:
        run_dir: the run directory.
        hosts: the inventory host names whose tarballs were fetched.

    Returns:
        One record per host (file count, tarballs that were not there).

    Raises:
        RunDirError: a tarball is corrupt or holds a member that escapes the host directory.
    """
    gathered = []
    for host in hosts:
        directory = host_dir(run_dir, host)
        directory.mkdir(parents=True, exist_ok=True)
        missing = []
        for name in TARBALLS:
            tarball = directory / name
            if not tarball.is_file():
                missing.append(name)
                continue
            _extract(tarball, directory)
            tarball.unlink()
        if (directory / SERVER_DB).is_file():
            single_file_database(directory / SERVER_DB)
        files = sum(1 for p in directory.rglob("*") if p.is_file())
        gathered.append(GatheredHost(host, directory, files, tuple(missing)))
        log.info("gathered host=%s files=%d missing=%s", host, files, ",".join(missing) or "-")
    return gathered


def _extract(tarball: Path, directory: Path) -> None:
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            # NOTE: the "data" filter refuses absolute paths, "..", devices and links that leave
            # the directory: a host cannot write outside its own directory on the controller.
            archive.extractall(directory, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise RunDirError(f"cannot unpack {tarball}: {exc}; gather again or inspect the "
                          "host's run directory by hand") from exc


def single_file_database(path: Path) -> None:
    """Switches a gathered database copy out of WAL mode, so it is one self-contained file.

    The backup API copies the live database's WAL setting; a WAL database grows ``-wal`` and
    ``-shm`` files next to it whenever it is opened, even to read.

    Raises:
        RunDirError: the file is not an SQLite database.
    """
    try:
        with closing(sqlite3.connect(str(path))) as db:
            db.execute("PRAGMA journal_mode=DELETE").fetchall()
    except sqlite3.Error as exc:
        raise RunDirError(f"the gathered database {path} is unusable: {exc}") from exc


def find_server_db(run_dir: Path, server: str) -> Path | None:
    """The gathered database copy of the server host, if it was gathered."""
    path = host_dir(run_dir, server) / SERVER_DB
    return path if path.is_file() else None


def job_counts(db_path: Path, workflow_id: int) -> dict[str, int]:
    """Jobs per status (wire names) of one workflow, from a gathered database.

    Raises:
        RunDirError: the file is not a torc-stress database.
    """
    rows = _query(db_path, "SELECT status, COUNT(*) FROM job WHERE workflow_id = ? "
                           "GROUP BY status", (workflow_id,))
    return {_status_name(status): int(n) for status, n in rows}


def completed_per_host(db_path: Path, workflow_id: int) -> dict[str, int]:
    """Completed jobs per compute-node host name (the worker's ``--node-name``).

    Raises:
        RunDirError: the file is not a torc-stress database.
    """
    rows = _query(
        db_path,
        "SELECT cn.hostname, COUNT(DISTINCT r.job_id) FROM result r "
        "JOIN compute_node cn ON cn.id = r.compute_node_id "
        "WHERE r.workflow_id = ? AND r.status = ? GROUP BY cn.hostname ORDER BY cn.hostname",
        (workflow_id, int(JobStatus.COMPLETED)),
    )
    return {str(host): int(n) for host, n in rows}


def _status_name(status: int) -> str:
    try:
        return JobStatus(int(status)).wire
    except ValueError:
        return f"status_{status}"


def _query(db_path: Path, sql: str, params: tuple[int, ...]) -> list[tuple[Any, ...]]:
    try:
        uri = f"file:{Path(db_path).resolve()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as db:
            return list(db.execute(sql, params))
    except sqlite3.Error as exc:
        raise RunDirError(f"cannot read {db_path}: {exc}") from exc
