"""`invoke cluster-run` on this machine with real server and worker processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INVOKE = Path(sys.executable).parent / "invoke"


def invoke(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(INVOKE), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def only_run_dir(runs_root: Path) -> Path:
    [run_dir] = [p for p in runs_root.iterdir() if p.is_dir()]
    return run_dir


def test_a_small_contention_run_completes_and_gathers_every_artifact(tmp_path: Path) -> None:
    proc = invoke("cluster-run", "--stages", "2", "--jobs-per-stage", "50",
                  "--runs-root", str(tmp_path), "--deadline", "120")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PLAY RECAP" in proc.stdout
    run_dir = only_run_dir(tmp_path)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == "completed"
    assert record["workflow"]["jobs"] == 102
    assert {"deploy", "start_server", "run", "stop", "gather"} <= set(record["phases"])
    host = run_dir / "hosts" / "localhost"
    for name in ("server.log", "server.db", "metrics.json"):
        assert (host / name).is_file(), name
    workers = record["inventory"]["workers"]["localhost"]
    assert len(list(host.glob("worker-*.log"))) == workers
    assert len(list(host.glob("worker_localhost_*_metrics.json"))) == workers
    assert len(list((host / "job_stdio").glob("*.o"))) == 102
    assert json.loads((host / "metrics.json").read_text())["schema"] == 1
    with closing(sqlite3.connect(host / "server.db")) as db:
        done = db.execute("SELECT COUNT(*) FROM job WHERE status = 5").fetchone()[0]
    assert done == 102
    assert record["completed_per_host"] == {"localhost": 102}
    token = (ROOT / "runs" / ".local" / "run" / record["run_id"] / "token").read_bytes()
    assert len(token) >= 24
    assert not [p for p in run_dir.rglob("*") if p.is_file() and token in p.read_bytes()]
    assert "completed" in proc.stdout and "localhost" in proc.stdout


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ghost_inventory(tmp_path: Path) -> Path:
    """Every role on this machine, plus a worker host nobody answers for."""
    inventory = {"all": {"children": {
        "server": {"hosts": {"localhost": None}},
        "workers": {"hosts": {"localhost": None, "ghost": {
            "ansible_host": "127.0.0.1", "ansible_port": free_port(),
            "ansible_connection": "ssh", "ansible_user": "nobody"}}},
    }, "hosts": {"localhost": {"ansible_connection": "local", "ansible_host": "127.0.0.1",
                               "torc_deploy": False, "torc_workers": 1}}}}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def test_an_unreachable_worker_host_aborts_with_exit_4_within_the_timeouts(
        tmp_path: Path) -> None:
    path = ghost_inventory(tmp_path)
    started = time.monotonic()
    proc = invoke("cluster-run", "--inventory", str(path), "--stages", "1",
                  "--jobs-per-stage", "2", "--runs-root", str(tmp_path / "runs"), timeout=120)
    assert proc.returncode == 4, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert "UNREACHABLE" in proc.stdout and "ghost" in proc.stdout
    assert "Traceback" not in proc.stderr
    record = json.loads((only_run_dir(tmp_path / "runs") / "run.json").read_text())
    assert "ghost" in record["unreachable"]


def test_with_the_continue_policy_the_run_goes_on_without_the_unreachable_host(
        tmp_path: Path) -> None:
    proc = invoke("cluster-run", "--inventory", str(ghost_inventory(tmp_path)), "--stages", "1",
                  "--jobs-per-stage", "10", "--runs-root", str(tmp_path / "runs"),
                  "--on-unreachable", "continue", "--no-report", timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((only_run_dir(tmp_path / "runs") / "run.json").read_text())
    assert record["outcome"] == "completed"
    assert list(record["unreachable"]) == ["ghost"]
    assert record["completed_per_host"] == {"localhost": 11}


def leftover_processes(run_id: str) -> list[str]:
    """Live processes whose command line mentions the run id (ours would: --log-file paths)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if run_id in cmdline and "pytest" not in cmdline:
                found.append(cmdline)
    return found


def test_ctrl_c_during_the_run_still_stops_everything_and_gathers(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [str(INVOKE), "cluster-run", "--stages", "3", "--jobs-per-stage", "2000",
         "--runs-root", str(tmp_path), "--no-report"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the workflow is running
            if line.startswith("[") and " done " in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:] + err[-3000:]
    run_dir = only_run_dir(tmp_path)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == "interrupted"
    assert {"stop", "gather"} <= set(record["phases"])
    assert (run_dir / "hosts" / "localhost" / "server.db").is_file()
    assert leftover_processes(record["run_id"]) == []


def test_a_run_past_its_deadline_is_stopped_gathered_and_exits_1(tmp_path: Path) -> None:
    proc = invoke("cluster-run", "--stages", "2", "--jobs-per-stage", "3000", "--deadline", "2",
                  "--runs-root", str(tmp_path), "--no-report", timeout=180)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
    assert record["outcome"] == "deadline"
    assert record["counts"].get("completed", 0) < 6002
    assert leftover_processes(record["run_id"]) == []


def test_killed_workers_are_noticed_as_a_stall_long_before_the_deadline(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INVOKE_STRESS_STALL_TIMEOUT": "4"}
    proc = subprocess.Popen(
        [str(INVOKE), "cluster-run", "--stages", "2", "--jobs-per-stage", "3000",
         "--runs-root", str(tmp_path), "--no-report"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until jobs are being done
            if line.startswith("[") and " done " in line and " done 0/" not in line:
                break
        host_run = ROOT / "runs" / ".local" / "run" / only_run_dir(tmp_path).name
        for pid_file in host_run.glob("worker-*.pid"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    record = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
    assert record["outcome"] == "failed"
    assert "stall_timeout" in record["message"]
    assert record["phases"]["run"]["seconds"] < 60
    assert leftover_processes(record["run_id"]) == []
