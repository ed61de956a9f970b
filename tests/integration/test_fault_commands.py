"""The fault commands under a real sh, against real processes the tests start (and end)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from torc_stress.cluster.faults import (
    continue_command,
    kill_command,
    parse_pids,
    restart_command,
    stop_workers_command,
)
from torc_stress.cluster.transport import LocalTransport

pytestmark = pytest.mark.integration


def state(pid: int) -> str:
    """The process state letter (R, S, T, Z...), or "gone"."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "gone"
    return status.split("\nState:\t", 1)[1][0]


def wait_state(pid: int, wanted: set[str], timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while (now := state(pid)) not in wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    return now


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; each is killed (by its pid) and reaped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def fake_worker(run_dir: Path, n: int, procs: list[subprocess.Popen[bytes]], *,
                name: str = "torc-stress-fake-worker") -> int:
    proc = subprocess.Popen([name, "60"], executable="/bin/sleep", start_new_session=True)
    procs.append(proc)
    (run_dir / f"worker-{n}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def sh(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=30)


def test_the_kill_command_kills_exactly_n_of_the_runs_workers_and_prints_their_pids(
        tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    pids = [fake_worker(tmp_path, n, started) for n in (1, 2, 3)]
    result = sh(kill_command(str(tmp_path), 2))
    assert result.returncode == 0, result.stderr
    killed = parse_pids(result.stdout)
    assert len(killed) == 2 and set(killed) <= set(pids)
    assert all(wait_state(p, {"Z", "gone"}) in ("Z", "gone") for p in killed)
    [survivor] = set(pids) - set(killed)
    assert state(survivor) in ("S", "R")


def test_a_pid_file_of_a_process_that_is_not_torc_stress_is_never_signalled(
        tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    stranger = fake_worker(tmp_path, 1, started, name="sleep")
    result = sh(kill_command(str(tmp_path), 1))
    assert result.returncode == 3
    assert "only 0 of 1 worker processes of this run were running" in result.stderr
    assert parse_pids(result.stdout) == [] and state(stranger) in ("S", "R")


def test_stopped_workers_are_continued_by_the_pids_the_stop_printed(
        tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    pids = [fake_worker(tmp_path, n, started) for n in (1, 2)]
    result = sh(stop_workers_command(str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert sorted(parse_pids(result.stdout)) == sorted(pids)
    assert [wait_state(p, {"T"}) for p in pids] == ["T", "T"]
    assert sh(continue_command(pids)).returncode == 0
    assert all(wait_state(p, {"S", "R"}) in ("S", "R") for p in pids)


FAKE_SERVER = "import sys, time; print('up', sys.argv[-1], flush=True); time.sleep(60)"


def test_the_restart_command_starts_the_same_command_line_again_on_the_given_port(
        tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    out = (tmp_path / "server.out").open("ab")
    old = subprocess.Popen([sys.executable, "-c", FAKE_SERVER, "torc-stress", "server", "run",
                            "--port", "0"], stdout=out, stderr=out, start_new_session=True)
    started.append(old)
    (tmp_path / "server.pid").write_text(f"{old.pid}\n")
    time.sleep(0.3)
    result = LocalTransport().run(restart_command(str(tmp_path), 45678), timeout=30)
    assert result.ok, result.stderr
    assert parse_pids(result.stdout) == [old.pid]
    new = int((tmp_path / "server.pid").read_text())
    try:
        assert new != old.pid and state(old.pid) in ("Z", "gone")
        assert f"new:{new}" in result.stdout
        argv = Path(f"/proc/{new}/cmdline").read_bytes().split(b"\0")
        assert argv[-3:-1] == [b"--port", b"45678"] and b"torc-stress" in argv
        deadline = time.monotonic() + 5
        while (tmp_path / "server.out").read_text().count("up") < 2 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "server.out").read_text().splitlines() == ["up 0", "up 45678"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(new, signal.SIGKILL)  # started by the restart command under this test


def test_the_restart_command_refuses_when_no_server_of_the_run_is_running(
        tmp_path: Path) -> None:
    result = sh(restart_command(str(tmp_path), 1234))
    assert result.returncode == 3
    assert "no server process of this run was running" in result.stderr
