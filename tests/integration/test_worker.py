"""Workers against a real server process: the seed end to end, and a server killed mid-run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.conftest import ServerProcess
from torc_stress.client import TorcClient

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "workflows" / "database_contention.yaml"  # the project's copy of the seed
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "torc_stress.cli", *args]


def create(url: str, spec: Path) -> int:
    done = subprocess.run(cli("--url", url, "-f", "json", "workflows", "create", str(spec)),
                          env=ENV, capture_output=True, text=True, timeout=120, check=True)
    return int(orjson.loads(done.stdout)["id"])


def start_workers(url: str, workflow_id: int, out: Path,
                  count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen(cli("--url", url, "workflows", "run", str(workflow_id),
                                 "--output-dir", str(out), "--node-name", f"w{n}",
                                 "--log-file", str(out / f"worker-{n}.log")), env=ENV)
            for n in range(1, count + 1)]


def sleepers_workflow(url: str, tmp_path: Path, count: int, seconds: float) -> int:
    """Creates a workflow of ``count`` independent ``sleep SECONDS`` jobs."""
    spec = tmp_path / "sleepers.json"
    spec.write_bytes(orjson.dumps({"name": "sleepers", "jobs": [
        {"name": f"sleep_{i}", "command": f"sleep {seconds:g}"} for i in range(count)]}))
    return create(url, spec)


def start_one_worker(url: str, workflow_id: int, out: Path,
                     slots: int) -> subprocess.Popen[bytes]:
    """One worker (node ``w1``, log ``out/worker.log``) with ``slots`` parallel jobs."""
    return subprocess.Popen(cli("--url", url, "workflows", "run", str(workflow_id),
                                "--max-parallel-jobs", str(slots), "--output-dir", str(out),
                                "--node-name", "w1", "--log-file", str(out / "worker.log")),
                            env=ENV)


def wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(-999)
    return codes


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass
class OwnServer:
    """A server process this module starts, kills and restarts itself."""

    db: Path
    log: Path
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    extra: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/torc-service/v1"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "torc_stress.server.main", "--host", "127.0.0.1",
               "--port", str(self.port), "--database", str(self.db), "--log-file", str(self.log),
               *self.extra]
        self.proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line.startswith("TORC_SERVER_PORT="), line
        self.port = int(line.split("=", 1)[1])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def running_server(tmp_path: Path, *extra: str) -> Iterator[OwnServer]:
    """An :class:`OwnServer` started now and stopped (TERM, then KILL) at the end."""
    server = OwnServer(db=tmp_path / "server.db", log=tmp_path / "server.log", extra=extra)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.terminate()
            try:
                server.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[OwnServer]:
    with running_server(tmp_path) as server:
        yield server


def assert_all_completed(url: str, workflow_id: int, out: Path, expected: int, *,
                         one_file_per_job: bool = True) -> None:
    with TorcClient(url) as client:
        jobs = client.list_jobs(workflow_id)
    assert len(jobs) == expected
    assert {job["status"] for job in jobs} == {"completed"}
    stdio = {p.name for p in (out / "job_stdio").iterdir()}
    for job in jobs:
        stem = f"job_wf{workflow_id}_j{job['id']}_r"
        assert any(name.startswith(stem) and name.endswith(".o") for name in stdio), job["id"]
    if one_file_per_job:  # (a job re-run at its next attempt has a file per attempt)
        assert len([n for n in stdio if n.endswith(".o")]) == expected
        assert len([n for n in stdio if n.endswith(".e")]) == expected


def test_four_workers_run_the_seed_to_completion(server: ServerProcess, tmp_path: Path) -> None:
    url, log_path = server.url, server.log_path
    workflow_id = create(url, SEED)
    out = tmp_path / "out"
    started = time.monotonic()
    workers = start_workers(url, workflow_id, out, 4)
    try:
        codes = wait_all(workers, timeout=300)
    finally:
        stop(workers)
    elapsed = time.monotonic() - started
    print(f"\n5005 jobs, 4 workers: {elapsed:.2f} s")
    assert codes == [0, 0, 0, 0]
    assert_all_completed(url, workflow_id, out, 5005)
    metrics = [orjson.loads(p.read_bytes()) for p in out.glob("worker_*_metrics.json")]
    assert sum(doc["jobs_run"] for doc in metrics) == 5005
    assert " ERROR " not in log_path.read_text()


def test_workers_keep_retrying_across_a_server_killed_and_restarted(
        own_server: OwnServer, tmp_path: Path) -> None:
    workflow_id = create(own_server.url, SEED)
    out = tmp_path / "out"
    workers = start_workers(own_server.url, workflow_id, out, 4)
    try:
        with TorcClient(own_server.url) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                done = len(client.list_jobs(workflow_id, status="completed"))
                if done >= 1500:
                    break
                time.sleep(0.05)
        own_server.kill()
        time.sleep(1.0)  # the workers meet a dead server for a while
        assert all(w.poll() is None for w in workers)
        own_server.start()
        codes = wait_all(workers, timeout=300)
    finally:
        stop(workers)
    with TorcClient(own_server.url) as client:
        status = client.get_workflow_status(workflow_id)
    assert codes == [0, 0, 0, 0], status
    assert_all_completed(own_server.url, workflow_id, out, 5005)
    logs = "".join((out / f"worker-{n}.log").read_text() for n in range(1, 5))
    assert "server not taking requests; retrying" in logs


def test_a_worker_stopped_with_sigterm_while_holding_claims_strands_no_job(
        server: ServerProcess, tmp_path: Path) -> None:
    workflow_id = sleepers_workflow(server.url, tmp_path, 12, 0.4)
    out = tmp_path / "out"
    worker = start_one_worker(server.url, workflow_id, out, 1)
    try:
        with TorcClient(server.url) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if client.list_jobs(workflow_id, status="running"):
                    break
                time.sleep(0.02)
            held = [j for j in client.list_jobs(workflow_id) if j["status"] != "ready"]
            assert len(held) > 1, "the worker should hold claims beyond its one slot"
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0
            jobs = client.list_jobs(workflow_id)
    finally:
        stop([worker])
    statuses = {job["id"]: job["status"] for job in jobs}
    assert set(statuses.values()) <= {"completed", "ready"}, statuses
    assert sum(1 for s in statuses.values() if s == "completed") >= len(held)
    assert " ERROR " not in (out / "worker.log").read_text()
