"""A full database disk: 503s that say so, one ERROR line, an intact database, recovery."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, start_server
from tests.integration.server_http import Http

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (needs root), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _jobs(wid: int, start: int, n: int = 500) -> dict[str, list[dict[str, object]]]:
    return {"jobs": [{"workflow_id": wid, "name": f"j{start + i}", "command": "x" * 1000}
                     for i in range(n)]}


def test_a_full_disk_gives_503s_one_error_line_an_intact_database_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (512 * 1024))  # freed later, to show recovery
    srv: ServerProcess = start_server(tmp_path, db_path=small_disk / "server.db")
    http = Http(srv.url)
    try:
        wid = http.ok("POST", "/workflows", {"name": "full", "user": "t"})["id"]
        stored = 0
        for _ in range(40):
            status, body = http.request("POST", "/bulk_jobs", _jobs(wid, stored))
            if status != 200:
                break
            stored += len(body["jobs"])
        else:
            pytest.fail("the 3 MiB disk never filled up")
        assert status == 503, body
        assert "retrying will not help until space is freed" in body["errorMessage"]
        refused = 0  # small writes may still fit for a while; each refusal says the same
        for _ in range(500):
            status, again = http.request("POST", "/bulk_jobs", _jobs(wid, stored, 5))
            if status == 200:
                stored += len(again["jobs"])
                refused = 0
                continue
            assert status == 503 and again["errorMessage"] == body["errorMessage"]
            refused += 1
            if refused == 3:
                break
        else:
            pytest.fail("small writes kept succeeding on the full disk")
        assert http.ok("GET", f"/workflows/{wid}")["name"] == "full"  # reads still work
        assert http.ok("GET", f"/jobs?workflow_id={wid}&limit=1")["total_count"] == stored

        filler.unlink()
        added = http.ok("POST", "/bulk_jobs", _jobs(wid, stored, 10))["jobs"]
        stored += len(added)
    finally:
        http.close()
        srv.stop()
    log = srv.log_text()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "database or disk is full" in errors[0], errors
    assert "Traceback" not in log
    assert "writes succeed again" in log and "refused_ops=" in log
    conn = sqlite3.connect(srv.db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*) FROM job WHERE workflow_id = ?",
                            (wid,)).fetchone() == (stored,)
    finally:
        conn.close()
