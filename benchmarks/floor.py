"""The floor: the workflow's own `sh -c` commands run in-process, no server.

Same commands, same dependency order (a job starts only when all its upstream jobs ended), same
number of slots as the workers have in total, and each job's stdout/stderr written to files as
the worker does. What is left is the cost of spawning the shells: the physical floor.

Run alone: ``python -m benchmarks.floor --stages 5 --jobs-per-stage 1000 --slots 8``.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchmarkError,
    Deadline,
    children_cpu_seconds,
    default_job_output_root,
    scratch_dir,
)


@dataclass(frozen=True)
class FloorJob:
    """One command of the DAG and the names of the jobs it waits for."""

    name: str
    command: str
    upstream: tuple[str, ...]


def floor_jobs(plan: Any) -> list[FloorJob]:
    """Extracts name, command and upstream names from a `WorkflowPlan`."""
    return [FloorJob(j.name, j.command, tuple(j.depends_on or ())) for j in plan.jobs]


class _DagRun:
    """Runs a DAG on a thread pool: each finished job releases the dependents it unblocks."""

    def __init__(self, jobs: Sequence[FloorJob], slots: int, out_dir: Path) -> None:
        self.jobs = {j.name: j for j in jobs}
        self.waiting = {j.name: len(set(j.upstream)) for j in jobs}
        self.dependents: dict[str, list[str]] = {j.name: [] for j in jobs}
        for job in jobs:
            for up in set(job.upstream):
                self.dependents[up].append(job.name)
        self.out_dir = out_dir
        self.pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="floor")
        self.lock = threading.Lock()
        self.left = len(jobs)
        self.done = threading.Event()
        self.failure: BaseException | None = None

    def run(self, deadline: Deadline) -> float:
        started = time.perf_counter()
        try:
            for name, count in list(self.waiting.items()):
                if count == 0:
                    self.pool.submit(self._run_one, name)
            while not self.done.wait(timeout=0.2):
                deadline.check()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.failure is not None:
            raise BenchmarkError(f"floor run failed: {self.failure}")
        return time.perf_counter() - started

    def _run_one(self, name: str) -> None:
        try:
            stem = self.out_dir / name
            with open(f"{stem}.o", "wb") as out, open(f"{stem}.e", "wb") as err:
                subprocess.run(["sh", "-c", self.jobs[name].command], stdout=out, stderr=err,
                               check=False)
            self._release(name)
        except BaseException as exc:  # noqa: BLE001 - reported by run()
            self.failure = exc
            self.done.set()

    def _release(self, name: str) -> None:
        ready = []
        with self.lock:
            self.left -= 1
            for dependent in self.dependents[name]:
                self.waiting[dependent] -= 1
                if self.waiting[dependent] == 0:
                    ready.append(dependent)
            if self.left == 0:
                self.done.set()
        for dependent in ready:
            self.pool.submit(self._run_one, dependent)


@dataclass(frozen=True)
class FloorResult:
    """One floor run: its makespan and the CPU it took (this process plus the shells)."""

    seconds: float
    cpu_s: float


def run_floor(jobs: Sequence[FloorJob], slots: int, *, timeout: float = 600.0,
              keep: bool = False, job_root: Path | None = None) -> FloorResult:
    """Runs the DAG's commands in-process on ``slots`` threads; returns makespan and CPU.

    Args:
        jobs: the DAG (from :func:`floor_jobs`).
        slots: concurrent commands (workers x max-parallel-jobs).
        timeout: seconds before the run is abandoned.
        keep: keep the stdout/stderr files.
        job_root: where the stdout/stderr files go (None: the system temp dir).

    Raises:
        BenchmarkError: a command could not be spawned, or the timeout passed.
    """
    with scratch_dir("floor", keep, job_root) as out_dir:
        cpu0 = time.process_time() + children_cpu_seconds()
        seconds = _DagRun(jobs, slots, out_dir).run(Deadline(timeout, "the floor run"))
        return FloorResult(seconds, time.process_time() + children_cpu_seconds() - cpu0)


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the floor alone and prints its makespan."""
    from benchmarks.plans import contention_plan

    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor")
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--jobs-per-stage", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args(argv)
    jobs = floor_jobs(contention_plan(args.stages, args.jobs_per_stage))
    result = run_floor(jobs, args.slots, job_root=default_job_output_root())
    print(f"floor: {len(jobs)} jobs on {args.slots} slots in {result.seconds:.3f} s "
          f"({len(jobs) / result.seconds:.0f} jobs/s), CPU {result.cpu_s:.2f} s")


if __name__ == "__main__":
    main()
