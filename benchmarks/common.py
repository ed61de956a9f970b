"""The benchmark's I/O edge: server and worker processes, /proc readings, the run database.

Every process started here is tracked by pid and ended by pid (SIGTERM, then SIGKILL) when its
context exits, on success, failure or Ctrl-C alike; every temporary directory is removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import selectors
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torc_stress.errors import StressError

log = logging.getLogger(__name__)

#: The repository root; put on PYTHONPATH of child processes so they need no install.
REPO_ROOT = Path(__file__).resolve().parent.parent
API_PATH = "/torc-service/v1"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchmarkError(StressError):
    """A benchmark run could not be completed (a process failed or a deadline passed)."""


class Deadline:
    """A point in time after which a run is abandoned.

    Args:
        seconds: how long from now.
        what: what is bounded, for the error message.
    """

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Returns seconds left (never negative)."""
        return max(0.0, self._end - time.monotonic())

    def check(self) -> None:
        """Raises BenchmarkError if the deadline has passed."""
        if time.monotonic() >= self._end:
            raise BenchmarkError(
                f"{self.what} did not finish within {self.seconds:g} s; aborted. "
                "The machine may be overloaded, or a server/worker is stuck: see the logs "
                "named above (rerun with --keep to keep them)."
            )


@contextlib.contextmanager
def scratch_dir(prefix: str, keep: bool = False, root: Path | None = None) -> Iterator[Path]:
    """Yields a fresh temporary directory (under ``root``, else the system's temp dir), removed
    afterwards unless keep is set."""
    path = Path(tempfile.mkdtemp(prefix=f"torc-bench-{prefix}-", dir=root))
    try:
        yield path
    finally:
        if keep:
            log.warning("kept benchmark files in %s", path)
        else:
            import shutil

            shutil.rmtree(path, ignore_errors=True)


def default_job_output_root() -> Path | None:
    """Where job stdout/stderr files go by default: ``/dev/shm`` when it is a writable dir.

    NOTE: each run writes 10,010 files and deletes them. On ext4, inode allocation skips
    inodes deleted in the last minutes, so every further run in the same minutes spent more
    kernel time creating its files: the same floor took 4.6, 7.0, 8.8, 9.2, 9.4, 10.4 s in six
    runs back to back (2-core VM, /tmp on ext4), which no pairing of ratios survives. On tmpfs
    the floor is what it should be: the cost of spawning the shells. ``--job-output-dir`` picks
    another place (a disk, a network file system).
    """
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def child_env() -> dict[str, str]:
    """Returns the environment for child processes: the repo importable, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> int | None:
    """Ends a process this benchmark started: SIGTERM, wait, then SIGKILL; returns its code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("process %d ignored SIGTERM for %g s; killing it", proc.pid, grace)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=grace)
    return proc.returncode


def cpu_seconds(pid: int) -> float:
    """Returns utime + stime of a live process, seconds (from /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    # NOTE: after the ")" the fields start at "state" (field 3); utime and stime are 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def children_cpu_seconds() -> float:
    """Returns user + system CPU of every child this process has reaped, and their children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def peak_rss_bytes(pid: int) -> int:
    """Returns the peak resident set size (VmHWM) of a live process, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class ServerProcess:
    """A server started by the benchmark on a fresh database in ``workdir``.

    Use as a context manager; the server is stopped (by pid) when the block exits.

    Args:
        workdir: where the database, log and metrics file go.
        unblock_delay: the server's ``--unblock-delay``.
        start_timeout: seconds to wait for the ``TORC_SERVER_PORT=`` line.
    """

    workdir: Path
    unblock_delay: float = 0.0
    start_timeout: float = 60.0
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    returncode: int | None = None
    extra_args: Sequence[str] = field(default_factory=tuple)

    @property
    def database(self) -> Path:
        """The server's SQLite database."""
        return self.workdir / "server.db"

    @property
    def log_file(self) -> Path:
        """The server's log file."""
        return self.workdir / "server.log"

    @property
    def metrics_file(self) -> Path:
        """Where the server writes its final metrics document."""
        return self.workdir / "metrics.json"

    @property
    def pid(self) -> int:
        """The server's pid."""
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        """Returns the server's command line."""
        return [
            sys.executable, "-m", "torc_stress.server.main", "--host", "127.0.0.1",
            "--port", "0", "--database", str(self.database), "--log-file", str(self.log_file),
            "--metrics-file", str(self.metrics_file), "--unblock-delay", str(self.unblock_delay),
            *self.extra_args,
        ]

    def __enter__(self) -> ServerProcess:
        with open(self.workdir / "server.err", "wb") as err:
            self.proc = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=err, env=child_env(),
                cwd=self.workdir, start_new_session=True,
            )
        try:
            port = self._read_port()
        except BaseException:
            self.__exit__()
            raise
        self.url = f"http://127.0.0.1:{port}{API_PATH}"
        return self

    def _read_port(self) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = Deadline(self.start_timeout, "server start-up")
        buffer = b""
        while b"\n" not in buffer:
            if self.proc.poll() is not None:
                raise BenchmarkError(self._died_message())
            deadline.check()
            if selector.select(timeout=0.2):
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk and self.proc.poll() is not None:
                    raise BenchmarkError(self._died_message())
                buffer += chunk
        first = buffer.split(b"\n", 1)[0].decode().strip()
        if not first.startswith("TORC_SERVER_PORT="):
            raise BenchmarkError(f"server printed {first!r} instead of TORC_SERVER_PORT=<n>")
        return int(first.split("=", 1)[1])

    def _died_message(self) -> str:
        err = (self.workdir / "server.err").read_text(errors="replace")[-2000:]
        code = self.proc.returncode if self.proc else "?"
        return f"the server exited during start-up with code {code}:\n{err}"

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.returncode = stop_process(self.proc)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def worker_command(url: str, workflow_id: int, *, slots: int, output_dir: Path, node: str,
                   batch: bool) -> list[str]:
    """Returns the command line of one worker process."""
    command = [
        sys.executable, "-m", "torc_stress.cli", "--url", url, "workflows", "run",
        str(workflow_id), "--max-parallel-jobs", str(slots), "--output-dir", str(output_dir),
        "--node-name", node, "--log-file", str(output_dir / f"worker-{node}.log"),
    ]
    if batch:
        command.append("--batch-completions")
    return command


@contextlib.contextmanager
def started(
    commands: Sequence[Sequence[str]], workdir: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Starts the commands (stdout/stderr to files in workdir) and stops them all on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for index, command in enumerate(commands):
            with open(workdir / f"proc-{index}.out", "wb") as out:
                procs.append(subprocess.Popen(
                    list(command), stdout=out, stderr=subprocess.STDOUT, env=child_env(),
                    cwd=workdir, start_new_session=True,
                ))
        yield procs
    finally:
        for proc in procs:
            stop_process(proc, grace=5.0)


def wait_all(procs: Sequence[subprocess.Popen[bytes]], deadline: Deadline,
             workdir: Path, log_dir: Path | None = None) -> None:
    """Waits until every process exits 0.

    Raises:
        BenchmarkError: one exited non-zero, or the deadline passed.
    """
    while True:
        codes = [p.poll() for p in procs]
        for index, code in enumerate(codes):
            if code not in (None, 0):
                tail = (workdir / f"proc-{index}.out").read_text(errors="replace")[-1500:]
                logs = sorted((log_dir or workdir).glob(f"worker-w{index + 1}.log"))
                log_tail = logs[0].read_text(errors="replace")[-3000:] if logs else ""
                raise BenchmarkError(
                    f"worker {index} (pid {procs[index].pid}) exited {code}:\n{tail}"
                    f"{log_tail}")
        if all(code == 0 for code in codes):
            return
        deadline.check()
        time.sleep(0.02)


def read_jobs(
    database: Path, workflow_id: int
) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    """Reads the job rows (times, depth) and dependency edges of a workflow from the DB."""
    uri = f"file:{database}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        jobs = [dict(r) for r in conn.execute(
            "SELECT id, name, status, depth, ready_time, claim_time, start_time, end_time "
            "FROM job WHERE workflow_id = ?", (workflow_id,))]
        edges = [(int(a), int(b)) for a, b in conn.execute(
            "SELECT job_id, depends_on_job_id FROM job_depends_on WHERE workflow_id = ?",
            (workflow_id,))]
    return jobs, edges


def count_lines(paths: Sequence[Path], *needles: str) -> int:
    """Counts lines of the files that contain every needle."""
    total = 0
    for path in paths:
        if path.exists():
            with open(path, errors="replace") as handle:
                total += sum(1 for line in handle if all(n in line for n in needles))
    return total
