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
from datetime import datetime
from pathlib import Path
from typing import Any

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


# ------------------------------------------------------------------------ stop signals, faults

LOCAL_RUNS = ROOT / "runs" / ".local" / "run"


def gone(pid: int) -> bool:
    """Whether ``pid`` is dead: no such process, or a zombie nobody reaped yet."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def run_pids(run_id: str) -> dict[str, int]:
    """The pids in the run's pid files on the (local) hosts: server.pid, worker-<n>.pid."""
    return {f.name: int(f.read_text()) for f in (LOCAL_RUNS / run_id).glob("*.pid")}


def stop_began_at(record: dict[str, Any]) -> float:
    """When stop.yml began (epoch), from the run's start and its phase offsets (+0.5 s slack)."""
    started = datetime.fromisoformat(record["started_at"]).timestamp()
    return started + record["phases"]["stop"]["start"] + 0.5


def start_cluster_run(*args: str, env: dict[str, str] | None = None
                      ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(INVOKE), "cluster-run", *args], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def wait_until_jobs_are_done(proc: subprocess.Popen[str]) -> list[str]:
    """Reads progress lines until some jobs are done (the workers run); returns the lines."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[") and " done " in line and " done 0/" not in line:
            return lines
    raise AssertionError("cluster-run ended before any job was done:\n" + "".join(lines))


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_stop_signal_during_the_run_stops_every_process_gathers_and_reports(
        tmp_path: Path, signum: int, code: int) -> None:
    proc = start_cluster_run("--stages", "3", "--jobs-per-stage", "2000",
                             "--runs-root", str(tmp_path))
    try:
        wait_until_jobs_are_done(proc)
        proc.send_signal(signum)
    finally:
        out, err = finish(proc)
    assert proc.returncode == code, out[-3000:] + err[-3000:]
    run_dir = only_run_dir(tmp_path)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == "interrupted"
    assert record["message"] == f"stopped by {signal.Signals(signum).name}"
    assert record["gathered"] is True and {"stop", "gather"} <= set(record["phases"])
    assert (run_dir / "hosts" / "localhost" / "server.db").is_file()
    for name in ("report.txt", "report.json", "junit.xml"):
        assert (run_dir / name).is_file(), name
    report = json.loads((run_dir / "report.json").read_text())
    [completion] = [c for c in report["checks"] if c["name"] == "all_jobs_completed"]
    assert completion["status"] == "FAIL" and "stage3" in completion["detail"]
    pids = run_pids(record["run_id"])
    assert set(pids) == {"server.pid", "worker-1.pid", "worker-2.pid", "worker-3.pid",
                         "worker-4.pid"}
    assert [name for name, pid in pids.items() if not gone(pid)] == []
    assert "Traceback" not in err


def test_a_second_stop_signal_skips_the_gather_but_still_stops_every_process(
        tmp_path: Path) -> None:
    proc = start_cluster_run("--stages", "3", "--jobs-per-stage", "2000",
                             "--runs-root", str(tmp_path))
    try:
        wait_until_jobs_are_done(proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)  # the first one has started the stop by now
        proc.send_signal(signal.SIGTERM)
    finally:
        out, err = finish(proc)
    assert proc.returncode == 143, out[-3000:] + err[-3000:]
    record = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
    assert record["outcome"] == "interrupted" and record["gathered"] is False
    assert "stop" in record["phases"]
    pids = run_pids(record["run_id"])
    assert len(pids) == 5 and [n for n, pid in pids.items() if not gone(pid)] == []
    assert "no report" in out


def server_has_leases() -> bool:
    """Whether this server expires the leases of workers that stopped heartbeating."""
    help_text = subprocess.run([str(Path(sys.executable).parent / "torc-stress"), "server",
                                "run", "--help"], capture_output=True, text=True).stdout
    return "--lease-s" in help_text


def test_a_killed_worker_is_recorded_in_run_json_and_its_pid_is_gone(tmp_path: Path) -> None:
    proc = start_cluster_run("--stages", "3", "--jobs-per-stage", "1000",
                             "--fault", "kill-worker:localhost:1@stage2", "--deadline", "120",
                             "--runs-root", str(tmp_path), "--no-report",
                             env={"INVOKE_STRESS_STALL_TIMEOUT": "20"})
    out, err = finish(proc)
    record = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
    [fault] = record["faults"]
    assert {k: fault[k] for k in ("spec", "kind", "host", "count", "seconds", "trigger",
                                  "method", "error")} == {
        "spec": "kill-worker:localhost:1@stage2", "kind": "kill-worker", "host": "localhost",
        "count": 1, "seconds": None, "trigger": "stage2", "method": "sigkill", "error": None}
    assert isinstance(fault["injected_at"], float) and fault["ended_at"] == fault["injected_at"]
    started = datetime.fromisoformat(record["started_at"]).timestamp()
    assert started < fault["injected_at"] < started + record["total_s"]
    [pid] = fault["targets"]
    assert pid in run_pids(record["run_id"]).values() and gone(pid)
    assert f"fault kill-worker:localhost:1@stage2: injected: SIGKILL {pid}" in out
    with closing(sqlite3.connect(only_run_dir(tmp_path) / "hosts" / "localhost" / "server.db")) \
            as db:  # the kill came while stage 2 ran: some of its jobs were done, not all
        stage2_done_at_kill = db.execute(
            "SELECT COUNT(*) FROM job WHERE name LIKE 'stage2_%' AND end_time <= ?",
            (fault["injected_at"],)).fetchone()[0]
    assert 0 < stage2_done_at_kill < 1000
    if not server_has_leases():
        # NOTE: without leases a killed worker's claimed and running jobs stay theirs forever
        pytest.xfail("the server does not expire the leases of dead workers yet (--lease-s): "
                     "the killed worker's jobs are stranded")
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert record["outcome"] == "completed"


def test_a_restarted_server_answers_again_on_its_port_and_the_workflow_completes(
        tmp_path: Path) -> None:
    proc = invoke("cluster-run", "--stages", "3", "--jobs-per-stage", "500",
                  "--fault", "restart-server@stage2", "--deadline", "120",
                  "--runs-root", str(tmp_path), "--no-report")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
    [fault] = record["faults"]
    assert (fault["kind"], fault["host"], fault["method"], fault["error"]) == (
        "restart-server", None, "restart", None)
    assert fault["injected_at"] < fault["ended_at"]
    [old] = fault["targets"]
    new = run_pids(record["run_id"])["server.pid"]
    assert new != old and gone(old) and gone(new)
    assert "fault restart-server@stage2: ended (the restarted server answers)" in proc.stdout
    assert record["outcome"] == "completed"
    server_out = (only_run_dir(tmp_path) / "hosts" / "localhost" / "server.out").read_text()
    ports = [line for line in server_out.splitlines() if line.startswith("TORC_SERVER_PORT=")]
    assert len(ports) == 2 and ports[0] == ports[1]


def test_a_partition_off_the_testbed_stops_the_hosts_workers_for_its_seconds(
        tmp_path: Path) -> None:
    proc = invoke("cluster-run", "--stages", "3", "--jobs-per-stage", "500",
                  "--fault", "partition:localhost:2@stage2", "--deadline", "120",
                  "--runs-root", str(tmp_path), "--no-report")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
    [fault] = record["faults"]
    assert (fault["method"], fault["seconds"], fault["error"]) == ("sigstop", 2.0, None)
    assert 2.0 <= fault["ended_at"] - fault["injected_at"] < 10.0
    workers = {pid for name, pid in run_pids(record["run_id"]).items() if name != "server.pid"}
    assert set(fault["targets"]) == workers and len(workers) == 4
    assert "fault partition:localhost:2@stage2: ended (SIGCONT" in proc.stdout


def test_a_partition_still_on_when_the_run_ends_is_ended_before_the_stop(
        tmp_path: Path) -> None:
    started = time.monotonic()
    proc = invoke("cluster-run", "--stages", "2", "--jobs-per-stage", "3000",
                  "--fault", "partition:localhost:600@1s", "--deadline", "4",
                  "--runs-root", str(tmp_path), "--no-report")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - started < 90
    record = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
    [fault] = record["faults"]
    assert record["outcome"] == "deadline" and fault["error"] is None
    assert fault["ended_at"] - fault["injected_at"] < 10
    assert fault["ended_at"] < stop_began_at(record)  # SIGCONT first: TERM can then work
    assert [n for n, pid in run_pids(record["run_id"]).items() if not gone(pid)] == []


def test_sigterm_during_a_partition_ends_it_then_stops_every_process(tmp_path: Path) -> None:
    proc = start_cluster_run("--stages", "2", "--jobs-per-stage", "3000", "--fault",
                             "partition:localhost:600@1s", "--runs-root", str(tmp_path),
                             "--no-report")
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "fault partition:localhost:600@1s: injected" in line:
                break
        proc.send_signal(signal.SIGTERM)
    finally:
        out, err = finish(proc)
    assert proc.returncode == 143, out[-3000:] + err[-3000:]
    record = json.loads((only_run_dir(tmp_path) / "run.json").read_text())
    [fault] = record["faults"]
    assert fault["error"] is None and fault["ended_at"] - fault["injected_at"] < 30
    assert fault["ended_at"] < stop_began_at(record)  # SIGCONT first: TERM can then work
    assert [n for n, pid in run_pids(record["run_id"]).items() if not gone(pid)] == []
