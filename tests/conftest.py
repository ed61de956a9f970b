"""Shared fixtures: ``server`` starts a real server process on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ServerProcess:
    """A running server: its base URL, database, log file and process."""

    url: str
    db_path: Path
    log_path: Path
    metrics_path: Path
    proc: subprocess.Popen[str]
    port: int
    args: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Sends ``sig`` and waits (SIGKILL if it does not exit); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def log_text(self) -> str:
        """The server log so far."""
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""


def start_server(
    tmp: Path, *extra: str, db_path: Path | None = None, log_name: str = "server.log"
) -> ServerProcess:
    """Starts ``python -m torc_stress.server.main`` and waits for its port line."""
    db_path = db_path or tmp / "server.db"
    log_path = tmp / log_name
    metrics_path = tmp / "metrics.json"
    args = [
        sys.executable,
        "-m",
        "torc_stress.server.main",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--database",
        str(db_path),
        "--log-file",
        str(log_path),
        "--metrics-file",
        str(metrics_path),
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
    )
    deadline = time.monotonic() + 20
    line = ""
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if line.startswith("TORC_SERVER_PORT="):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
        else:
            raise RuntimeError("server did not print its port within 20 s")
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    port = int(line.strip().split("=", 1)[1])
    return ServerProcess(
        f"http://127.0.0.1:{port}/torc-service/v1",
        db_path,
        log_path,
        metrics_path,
        proc,
        port,
        args,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real server process with a temp database; SIGTERM at teardown (SIGKILL if needed)."""
    proc = start_server(tmp_path)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for a whole test module (for tests that need no fresh database)."""
    proc = start_server(tmp_path_factory.mktemp("shared"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts servers with extra flags; every one started is stopped at teardown."""
    started: list[ServerProcess] = []

    def make(
        *extra: str, db_path: Path | None = None, log_name: str = "server.log"
    ) -> ServerProcess:
        proc = start_server(tmp_path, *extra, db_path=db_path, log_name=log_name)
        started.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in started:
            proc.stop()
