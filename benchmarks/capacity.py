"""Server completion capacity with no spawning: client threads claim, start and complete.

A fresh server gets one workflow of ``jobs`` independent jobs. ``threads`` threads, each with its
own :class:`TorcClient` and compute node, loop: ``claim_next_jobs(limit)``, then start the claimed
jobs, then complete them. The modes (:data:`MODES`) differ in how:

- ``per-job``: one ``batch_start_jobs`` for the claim, one ``complete_job`` per job (what the
  project's worker does by default: one completion request per job);
- ``batched``: one ``batch_start_jobs`` and one ``batch_complete_jobs`` per claim;
- ``torc-protocol``: one ``start_job`` and one ``complete_job`` per job (torc's own worker).

Nothing is spawned, so the rate is what the server (and this Python client) can do.

Run alone: ``python -m benchmarks.capacity --jobs 10000 --threads 8 [--mode batched]``.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.common import BenchmarkError, Deadline, ServerProcess, cpu_seconds, scratch_dir
from torc_stress.client import TorcClient, rfc3339


@dataclass(frozen=True)
class CapacityResult:
    """One capacity measurement.

    Attributes:
        mode: one of :data:`MODES`.
        jobs: jobs completed.
        threads: client threads.
        claim_limit: jobs per claim.
        seconds: wall time from the first claim to the last completion.
        server_cpu_s: server CPU (user + system) spent in that time.
        client_cpu_s: this process's CPU (all client threads) in that time.
    """

    mode: str
    jobs: int
    threads: int
    claim_limit: int
    seconds: float
    server_cpu_s: float
    client_cpu_s: float

    @property
    def per_second(self) -> float:
        """Completions per second of wall time."""
        return self.jobs / self.seconds if self.seconds > 0 else float("nan")

    @property
    def per_server_cpu_second(self) -> float:
        """Completions per second of server CPU: the rate if the server had a core to itself."""
        return self.jobs / self.server_cpu_s if self.server_cpu_s > 0 else float("nan")


MODES = ("per-job", "batched", "torc-protocol")


def _create_workload(client: TorcClient, jobs: int) -> tuple[int, int]:
    workflow_id = int(client.create_workflow("capacity benchmark", "bench")["id"])
    client.create_jobs([{"workflow_id": workflow_id, "name": f"job_{i:06d}", "command": "true"}
                        for i in range(jobs)])
    client.initialize_jobs(workflow_id)
    run_id = int(client.get_workflow_status(workflow_id).get("run_id", 0))
    return workflow_id, run_id


class _Loop:
    """One client thread's loop over claim / start / complete."""

    def __init__(self, url: str, workflow_id: int, run_id: int, limit: int, mode: str,
                 index: int) -> None:
        self.client = TorcClient(url)
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.limit = limit
        self.mode = mode
        self.node_id = int(self.client.create_compute_node(
            workflow_id, f"capacity-{index}", os.getpid())["id"])
        self.completed = 0
        self.error: BaseException | None = None

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                claimed = self.client.claim_next_jobs(self.workflow_id, self.limit)
                if not claimed:
                    return
                self._finish(claimed)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc
        finally:
            self.client.close()

    def _result(self, job_id: int) -> dict[str, Any]:
        return {"job_id": job_id, "workflow_id": self.workflow_id, "run_id": self.run_id,
                "compute_node_id": self.node_id, "attempt_id": 1, "return_code": 0,
                "exec_time_minutes": 0.0, "completion_time": rfc3339(time.time()),
                "status": "completed"}

    def _finish(self, claimed: list[dict[str, Any]]) -> None:
        ids = [int(job["id"]) for job in claimed]
        client = self.client
        if self.mode == "torc-protocol":
            for job_id in ids:
                client.start_job(job_id, self.run_id, self.node_id)
                client.complete_job(job_id, "completed", self.run_id, self._result(job_id))
        else:
            started = client.batch_start_jobs(self.workflow_id, self.run_id, self.node_id, ids)
            if started.get("errors"):
                raise BenchmarkError(f"batch_start_jobs refused: {started['errors'][:3]}")
            if self.mode == "per-job":
                for job_id in ids:
                    client.complete_job(job_id, "completed", self.run_id, self._result(job_id))
            else:
                entries = [{"job_id": job_id, "run_id": self.run_id, "status": "completed",
                            "result": self._result(job_id)} for job_id in ids]
                answer = client.batch_complete_jobs(self.workflow_id, entries)
                if answer.get("errors"):
                    raise BenchmarkError(f"batch_complete_jobs refused: {answer['errors'][:3]}")
        self.completed += len(claimed)


def run_capacity(jobs: int = 10000, threads: int = 8, claim_limit: int = 10, *,
                 mode: str = "per-job", timeout: float = 300.0,
                 keep: bool = False) -> CapacityResult:
    """Measures completions/s of a fresh server driven by client threads (no spawning).

    Args:
        jobs: independent jobs to complete.
        threads: client threads.
        claim_limit: jobs per ``claim_next_jobs``.
        mode: one of :data:`MODES`.
        timeout: seconds before the measurement is abandoned.
        keep: keep the server's files.

    Raises:
        BenchmarkError: a request failed, not every job completed, or the timeout passed.
    """
    if mode not in MODES:
        raise BenchmarkError(f"unknown capacity mode {mode!r}; use one of {', '.join(MODES)}")
    with scratch_dir("capacity", keep) as workdir, ServerProcess(workdir) as server:
        client = TorcClient(server.url)
        workflow_id, run_id = _create_workload(client, jobs)
        loops = [_Loop(server.url, workflow_id, run_id, claim_limit, mode, i)
                 for i in range(threads)]
        stop = threading.Event()
        pool = [threading.Thread(target=loop.run, args=(stop,), daemon=True) for loop in loops]
        cpu0, client0, started = cpu_seconds(server.pid), time.process_time(), time.perf_counter()
        for thread in pool:
            thread.start()
        _join(pool, stop, Deadline(timeout, "the capacity measurement"))
        seconds = time.perf_counter() - started
        server_cpu, client_cpu = cpu_seconds(server.pid) - cpu0, time.process_time() - client0
        _check(loops, jobs, client, workflow_id)
        client.close()
    return CapacityResult(mode, jobs, threads, claim_limit,
                          seconds, server_cpu, client_cpu)


def _join(pool: Sequence[threading.Thread], stop: threading.Event, deadline: Deadline) -> None:
    try:
        for thread in pool:
            while thread.is_alive():
                thread.join(timeout=0.2)
                deadline.check()
    finally:
        stop.set()


def _check(loops: Sequence[_Loop], jobs: int, client: TorcClient, workflow_id: int) -> None:
    errors = [loop.error for loop in loops if loop.error is not None]
    if errors:
        raise BenchmarkError(f"a capacity client thread failed: {errors[0]}")
    done = sum(loop.completed for loop in loops)
    if done != jobs or not client.is_complete(workflow_id).get("is_complete"):
        raise BenchmarkError(f"capacity run completed {done} of {jobs} jobs; the workflow is "
                             "not complete (check the server log with --keep)")


def main(argv: Sequence[str] | None = None) -> None:
    """Runs one capacity measurement and prints it."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capacity")
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--claim-limit", type=int, default=10)
    parser.add_argument("--mode", choices=MODES, default="per-job")
    args = parser.parse_args(argv)
    result = run_capacity(args.jobs, args.threads, args.claim_limit, mode=args.mode)
    print(f"{result.mode}: {result.jobs} completions in {result.seconds:.2f} s = "
          f"{result.per_second:.0f}/s; server CPU {result.server_cpu_s:.2f} s "
          f"({result.per_server_cpu_second:.0f} completions per server CPU s); "
          f"client CPU {result.client_cpu_s:.2f} s")


if __name__ == "__main__":
    main()
