"""Profiles one contention run: py-spy samples the server and one worker while it runs.

``python -m benchmarks.profile [--stages 5] [--jobs-per-stage 1000] [--workers 4]
[--batch-completions] [--out DIR]`` writes ``server.txt`` and ``worker.txt`` (py-spy's raw
collapsed stacks: feed them to flamegraph.pl or speedscope) and prints where each process spent
its busy samples. Needs ``pip install py-spy`` and permission to ptrace the children (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from benchmarks.common import (
    BenchmarkError,
    Deadline,
    ServerProcess,
    scratch_dir,
    started,
    stop_process,
    wait_all,
    worker_command,
)
from benchmarks.plans import contention_plan
from torc_stress.client import TorcClient
from torc_stress.submit import submit_plan

#: Frames where a thread waits rather than works (py-spy --nonblocking cannot always tell).
IDLE_FRAMES = ("Runner.run (asyncio/runners.py", "Writer._run (torc_stress/server/writer.py:128",
               "select (selectors.py", "_wait (torc_stress/worker.py", "poll (selectors.py")


def busy_profile(
    raw: Path, top: int = 25
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Reads py-spy raw output; returns busy samples, top self frames and top inclusive frames."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any(frames[-1].startswith(idle) for idle in IDLE_FRAMES):
            continue
        busy += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    return busy, own.most_common(top), inclusive.most_common(top * 2)


def py_spy() -> str | None:
    """Returns the py-spy executable: next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(py_spy()), "record", "-p", str(pid), "-o", str(out), "-f", "raw",
         "-r", "100", "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=open(out.with_suffix(".err"), "wb"))


def profile_run(stages: int, jobs_per_stage: int, workers: int, slots: int, batch: bool,
                out: Path, timeout: float = 900.0) -> float:
    """Runs the workflow once with py-spy attached to the server and worker 1; returns wall s.

    Raises:
        BenchmarkError: py-spy is missing, or the run failed or timed out.
    """
    if py_spy() is None:
        raise BenchmarkError("py-spy is not installed: run '.venv/bin/pip install py-spy'")
    out.mkdir(parents=True, exist_ok=True)
    plan = contention_plan(stages, jobs_per_stage)
    with scratch_dir("profile") as workdir, ServerProcess(workdir) as server:
        workflow_id = submit_plan(TorcClient(server.url), plan, user="bench")
        (workdir / "workers").mkdir()
        commands = [worker_command(server.url, workflow_id, slots=slots,
                                   output_dir=workdir / "workers", node=f"w{i + 1}",
                                   batch=batch) for i in range(workers)]
        spies = [_spy(server.pid, out / "server.txt")]
        try:
            started_at = time.perf_counter()
            with started(commands, workdir) as procs:
                spies.append(_spy(procs[0].pid, out / "worker.txt"))
                wait_all(procs, Deadline(timeout, "the profiled run"), workdir)
            wall = time.perf_counter() - started_at
        finally:
            spies[0].send_signal(signal.SIGINT)
            for spy in spies:
                try:
                    spy.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    stop_process(spy)
    return wall


def main(argv: Sequence[str] | None = None) -> None:
    """Profiles one run and prints the busiest frames of the server and of one worker."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--jobs-per-stage", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-parallel-jobs", type=int, default=2)
    parser.add_argument("--batch-completions", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("profile"))
    args = parser.parse_args(argv)
    wall = profile_run(args.stages, args.jobs_per_stage, args.workers, args.max_parallel_jobs,
                       args.batch_completions, args.out)
    print(f"run took {wall:.2f} s; py-spy raw stacks in {args.out}/server.txt, worker.txt")
    for name in ("server", "worker"):
        busy, own, inclusive = busy_profile(args.out / f"{name}.txt")
        print(f"\n{name}: {busy} busy samples at 100 Hz (= {busy / 100:.1f} s busy)")
        print(tabulate([[n, f"{100 * n / max(busy, 1):.1f}%", f[:110]] for f, n in own],
                       headers=["self", "%", "frame"], disable_numparse=True))
        print(tabulate([[n, f"{100 * n / max(busy, 1):.1f}%", f[:110]] for f, n in inclusive],
                       headers=["inclusive", "%", "frame"], disable_numparse=True))


if __name__ == "__main__":
    main()
