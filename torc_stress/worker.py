"""The job runner: register a compute node, claim ready jobs, run them with ``sh -c``, report.

Three threads, so a freed slot never waits on a round trip to the server:

- the main thread only spawns and reaps. Children are spawned with ``posix_spawn`` (vfork/exec,
  never a fork of this process) and reaped through Linux pidfds registered in a selector; it
  sleeps until a child exits or another thread or a signal wakes it;
- the claimer claims ahead, a bounded number of jobs (:func:`claim_limit`), so a freed slot
  spawns the next job at once; with no ready work its backoff grows from 1 ms to 50 ms and is
  reset when work appears or this worker's last completion is delivered (it may unblock others);
  it also watches the workflow's state (complete, canceled);
- the reporter delivers each job's ``start_job`` and then its ``complete_job`` in order (one
  request per job by default, ``batch_complete_jobs`` as an option). A request the server did
  not take (unreachable, 5xx, 503) is re-sent with backoff until it is taken; a 409/422 answer
  to a re-sent request means the earlier one got through.

A fourth thread heartbeats the compute node (:mod:`torc_stress.worker_lease`) when the server
leases nodes. Claims are owned by the node (``compute_node_id`` on the claim). When the lease is
lost (the server expired it, or no heartbeat was answered for most of the lease) the worker
kills its running jobs without reporting them, drops its claims (the server gives all of them
to other workers at the next attempt), registers a new compute node and goes on. After a claim
request whose answer was lost, the worker adopts the pending jobs the server says it holds.

SIGTERM/SIGINT stop claiming; running and already claimed jobs get ``grace_s`` seconds to run,
then the running ones are killed and reported terminated. Claimed ones that never got a slot go
back to ready when the node is marked inactive at exit (a leased node); against a server without
leases they are reported terminated, so no job is left pending or running. At exit every queued
report is delivered, then the node is marked inactive and the worker metrics file is written.

Every spawn and every exit is written to ``executions_<node>_<pid>.jsonl`` as it happens, one
``os.write`` per line, so the record survives a SIGKILL of the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import selectors
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from torc_stress.client import LatencyRecorder, TorcClient, rfc3339
from torc_stress.errors import StressError
from torc_stress.logs import kv
from torc_stress.worker_claimer import ClaimerMixin
from torc_stress.worker_lease import Lease, LeaseLost
from torc_stress.worker_logic import (
    Backoff,
    build_metrics,
    claim_limit,
    classify_failure,
    journal_path,
    metrics_path,
    status_for,
    stdio_paths,
)
from torc_stress.worker_records import Report, RunningJob
from torc_stress.worker_reporter import ReporterMixin
from torc_stress.worker_spawn import seal_inherited_descriptors, spawn_shell

__all__ = ["Backoff", "Worker", "claim_limit", "classify_failure", "metrics_path", "status_for",
           "stdio_paths"]

log = logging.getLogger(__name__)
T = TypeVar("T")


# ---------------------------------------------------------------------------- the worker


class Worker(ClaimerMixin, ReporterMixin):
    """Runs the ready jobs of one workflow until it is complete.

    Three threads share the work, so a freed slot never waits on the server:

    - the main thread spawns claimed jobs into free slots and reaps them (nothing else);
    - the claimer claims ahead (at most ``max_parallel_jobs + prefetch`` jobs held, see
      :func:`claim_limit`) and checks the workflow's state;
    - the reporter delivers ``start_job`` and ``complete_job`` in order (a job's start always
      before its completion), retrying each until the server takes it.

    Args:
        client: the server's client (its latency recorder feeds the metrics file).
        workflow_id: the workflow to run.
        max_parallel_jobs: jobs running at once.
        output_dir: where ``job_stdio/`` and the metrics file go.
        node_name: the compute node's hostname (the inventory host under the harness).
        batch_completions: report completions with ``batch_complete_jobs``.
        grace_s: after SIGTERM, seconds running and already claimed jobs may take before the
            running ones are killed and the claimed ones reported terminated.
        unavailable_timeout_s: how long the server may stay unreachable before the worker gives up.
        prefetch: claimed jobs that may wait for a slot (default ``2 * max_parallel_jobs``;
            0 claims only for free slots).
    """

    def __init__(self, client: TorcClient, workflow_id: int, *, max_parallel_jobs: int,
                 output_dir: Path | str, node_name: str, batch_completions: bool = False,
                 grace_s: float = 30.0, unavailable_timeout_s: float = 1200.0,
                 prefetch: int | None = None) -> None:
        if max_parallel_jobs < 1:
            raise ValueError("max_parallel_jobs must be at least 1")
        self.client = client
        if client.recorder is None:
            client.recorder = LatencyRecorder()
        self.recorder: LatencyRecorder = client.recorder
        self.workflow_id = workflow_id
        self.max_parallel_jobs = max_parallel_jobs
        self.prefetch = 2 * max_parallel_jobs if prefetch is None else max(0, prefetch)
        self.output_dir = Path(output_dir).absolute()
        self.node_name = node_name
        self.batch_completions = batch_completions
        self._batch_starts = True  # until the server turns out not to have batch_start_jobs
        self.grace_s = grace_s
        self.unavailable_timeout_s = unavailable_timeout_s
        self.pid = os.getpid()
        self.run_id = 0
        self.node: dict[str, Any] = {}
        self.running: dict[int, RunningJob] = {}
        self.claimed: deque[dict[str, Any]] = deque()
        self.retries: dict[str, int] = {"claim": 0, "start_job": 0, "complete_job": 0}
        self.jobs_run = 0
        self.jobs_failed = 0
        self.job_wall_ms: list[float] = []
        self.started_at = time.time()
        self._selector = selectors.DefaultSelector()
        self._stop_requested = False
        self._stop_deadline: float | None = None
        self._outage_since: float | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._base_env: dict[str, str] = {}
        self._stdio_prefix = ""
        # claimer <-> main: monotonic counters, each written by one thread only
        self._claimed_total = 0
        self._released_total = 0
        self._claim_wake = threading.Event()
        self._claim_backoff = Backoff()
        self._state = "running"
        self._claiming = False
        self._closing = False
        # main -> reporter
        self._reports: deque[Report] = deque()
        self._reports_cv = threading.Condition()
        self._reporter_done = False
        self._abandon = threading.Event()
        self._refused: deque[int] = deque()  # appended by the reporter, popped by main
        self._thread_error: StressError | None = None
        self._threads: list[threading.Thread] = []
        # the compute node's lease; a lost node is replaced by the main thread
        self.lease = Lease(client, self._node_lost)
        self._lost: tuple[int, LeaseLost] | None = None
        self.nodes_lost = 0
        #: every job id handed to this worker (claimed or adopted); claimer thread only
        self._known: set[int] = set()
        self._reconcile = False  # a claim's answer may have been lost: adopt before claiming
        self._journal_fd = -1

    # ------------------------------------------------------------------ public

    def run(self) -> int:
        """Runs jobs until the workflow is complete (or canceled, or a stop signal).

        Returns:
            0 when the workflow is complete or canceled or the worker was stopped cleanly,
            1 on an unrecoverable error.
        """
        restore = self._install_signals()
        code = 1
        try:
            self._register()
            self._start_threads()
            code = self._loop()
        except StressError as exc:
            log.error("worker failed", extra=kv(workflow_id=self.workflow_id, error=str(exc)))
            code = 1
        finally:
            self._shutdown()
            self._finish()
            restore()
        return code

    def request_stop(self) -> None:
        """Stops claiming; running and claimed jobs get ``grace_s`` seconds (a second call
        kills the running ones and reports the claimed ones terminated)."""
        if self._stop_requested:
            self._stop_deadline = 0.0
        else:
            self._stop_requested = True
            self._stop_deadline = time.monotonic() + self.grace_s
        self._claim_wake.set()
        self._wake_main()

    # ------------------------------------------------------------------ setup

    def _install_signals(self) -> Callable[[], None]:
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, lambda signum, frame: self._on_signal(signum))

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    def _on_signal(self, signum: int) -> None:
        log.info("stop requested", extra=kv(signal=signal.Signals(signum).name,
                                            running=len(self.running), claimed=len(self.claimed)))
        self.request_stop()

    def _register(self) -> None:
        self.output_dir.joinpath("job_stdio").mkdir(parents=True, exist_ok=True)
        self._stdio_prefix = f"{self.output_dir}/job_stdio/job_wf{self.workflow_id}_j"
        self.run_id = self._until_taken("get_run_id", self._fetch_run_id)
        if self._until_taken("is_uninitialized",
                             lambda: self.client.is_uninitialized(self.workflow_id)):
            log.info("initializing the workflow's jobs", extra=kv(workflow_id=self.workflow_id))
            self._until_taken("initialize_jobs", lambda: self.client.initialize_jobs(
                self.workflow_id, only_uninitialized=True))
        self.node = self._until_taken("create_compute_node", self._create_node)
        self._until_taken("heartbeat", lambda: self.lease.start(int(self.node["id"])))
        self._journal_fd = os.open(journal_path(self.output_dir, self.node_name, self.pid),
                                   os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        seal_inherited_descriptors()
        self._base_env = dict(os.environ)
        self._base_env.update(TORC_WORKFLOW_ID=str(self.workflow_id),
                              TORC_OUTPUT_DIR=str(self.output_dir), TORC_API_URL=self.client.url)
        log.info("worker started", extra=kv(workflow_id=self.workflow_id, run_id=self.run_id,
                                            compute_node_id=self.node.get("id"),
                                            node=self.node_name, pid=self.pid,
                                            max_parallel_jobs=self.max_parallel_jobs,
                                            prefetch=self.prefetch))

    def _create_node(self) -> dict[str, Any]:
        return self.client.create_compute_node(self.workflow_id, self.node_name, self.pid,
                                               num_cpus=os.cpu_count() or 1)

    def _fetch_run_id(self) -> int:
        status = self.client.get_workflow_status(self.workflow_id)
        if "run_id" in status:
            return int(status["run_id"])
        return int(self.client.get_workflow(self.workflow_id).get("run_id") or 0)

    def _start_threads(self) -> None:
        for name, target in (("claimer", self._claim_loop), ("reporter", self._report_loop)):
            thread = threading.Thread(target=self._guarded, args=(target,),
                                      name=f"worker-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _guarded(self, target: Callable[[], None]) -> None:
        """Runs a thread's loop; an unrecoverable error is handed to the main thread."""
        try:
            target()
        except StressError as exc:
            self._thread_error = exc
            self._wake_main()
        except Exception as exc:  # noqa: BLE001 - a bug must end the worker, not hang it
            log.exception("worker thread crashed", extra=kv(thread=threading.current_thread().name))
            self._thread_error = StressError(
                f"the worker's {threading.current_thread().name} thread crashed: "
                f"{type(exc).__name__}: {exc} (a bug: please report it with the worker log)")
            self._wake_main()

    def _wake_main(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # ------------------------------------------------------------------ main thread: spawn, reap

    def _loop(self) -> int:
        while True:
            if self._thread_error is not None:
                raise self._thread_error
            if self._refused:
                self._kill_refused()
            if self._lost is not None:
                self._replace_node()
            if self._state == "canceled":
                log.info("workflow canceled; killing running jobs",
                         extra=kv(workflow_id=self.workflow_id, running=len(self.running)))
                self.claimed.clear()  # the server canceled them with the workflow
                return 0
            if self._stop_requested and self._stop_deadline is not None \
                    and time.monotonic() >= self._stop_deadline:
                return 0  # _shutdown kills the running and reports the claimed terminated
            while self.claimed and len(self.running) < self.max_parallel_jobs:
                job = self.claimed.popleft()
                if job.get("_node") == self.node.get("id"):
                    self._spawn(job)
                else:  # claimed for a node given up since
                    self._release(1)
            if not self.running and not self.claimed and self._reports_idle():
                if self._stop_requested and not self._claiming:
                    log.info("worker stopped", extra=kv(jobs_run=self.jobs_run))
                    return 0
                if self._state == "complete":
                    log.info("workflow complete", extra=kv(workflow_id=self.workflow_id,
                                                           jobs_run=self.jobs_run))
                    return 0
            self._wait(self._timeout())

    def _timeout(self) -> float:
        """Seconds the main thread may sleep: children, claims and signals wake it earlier."""
        timeout = 1.0
        if not self.running and not self.claimed and not self._reports_idle():
            timeout = 0.005  # only deliveries are left; look again soon
        if self._stop_deadline is not None:
            timeout = min(timeout, max(0.0, self._stop_deadline - time.monotonic()))
        return timeout

    def _wait(self, timeout: float) -> None:
        """Sleeps until a child exits, another thread or a signal wakes us, or ``timeout``."""
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
                continue
            self._reap(key.data)

    def _spawn(self, job: dict[str, Any]) -> None:
        job_id = int(job["id"])
        attempt = int(job.get("attempt_id") or 1)
        self._report(Report("start", job_id))
        stem = f"{self._stdio_prefix}{job_id}_r{self.run_id}_a{attempt}"
        command = job["command"]
        if job.get("invocation_script"):
            command = f"{job['invocation_script']} {command}"
        env = dict(self._base_env)
        env["TORC_JOB_ID"] = str(job_id)
        env["TORC_JOB_NAME"] = str(job.get("name", ""))
        env["TORC_ATTEMPT_ID"] = str(attempt)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        started = time.monotonic()
        try:
            out_fd = os.open(stem + ".o", flags, 0o644)
            try:
                err_fd = os.open(stem + ".e", flags, 0o644)
                try:
                    pid = spawn_shell(command, env, stdin=self._devnull, stdout=out_fd,
                                      stderr=err_fd)
                finally:
                    os.close(err_fd)
            finally:
                os.close(out_fd)
        except OSError as exc:
            log.error("job could not be spawned", extra=kv(job_id=job_id, error=str(exc)))
            self._job_done(job, 127, started, killed=False)
            return
        pidfd = os.pidfd_open(pid)
        self._journal({"e": "spawn", "job_id": job_id, "attempt": attempt, "t": time.time(),
                       "node": self.node_name, "pid": self.pid,
                       "compute_node_id": self.node.get("id")})
        running = RunningJob(job=job, pid=pid, pidfd=pidfd, started=started)
        self.running[job_id] = running
        self._selector.register(pidfd, selectors.EVENT_READ, running)

    def _reap(self, running: RunningJob) -> None:
        """Collects an exited child (blocks until it exits) and queues its completion."""
        _, wait_status = os.waitpid(running.pid, 0)
        returncode = os.waitstatus_to_exitcode(wait_status)
        self._selector.unregister(running.pidfd)
        os.close(running.pidfd)
        job = running.job
        del self.running[int(job["id"])]
        self._journal({"e": "exit", "job_id": int(job["id"]),
                       "attempt": int(job.get("attempt_id") or 1), "t": time.time(),
                       "rc": returncode, "killed": running.killed})
        if running.abandoned:
            self._release(1)
            return
        self._job_done(job, returncode, running.started, killed=running.killed)

    def _job_done(self, job: dict[str, Any], returncode: int, started: float, *,
                  killed: bool) -> None:
        wall = time.monotonic() - started
        self.job_wall_ms.append(wall * 1e3)
        status = status_for(returncode, killed=killed)
        self.jobs_run += 1
        if status != "completed":
            self.jobs_failed += 1
        self._report_completion(job, status, returncode, wall)
        self._release(1)

    def _report_completion(self, job: dict[str, Any], status: str, returncode: int,
                           wall_s: float) -> None:
        job_id = int(job["id"])
        result = {
            "job_id": job_id, "workflow_id": self.workflow_id, "run_id": self.run_id,
            "compute_node_id": int(self.node["id"]), "attempt_id": int(job.get("attempt_id") or 1),
            "return_code": returncode, "exec_time_minutes": wall_s / 60.0,
            "completion_time": rfc3339(time.time()), "status": status,
        }
        self._report(Report("complete", job_id, status, result))

    def _release(self, count: int) -> None:
        """Counts jobs this worker no longer holds; wakes the claimer if a batch fits again."""
        self._released_total += count
        if claim_limit(self._held(), self.max_parallel_jobs, self.prefetch):
            self._claim_wake.set()

    def _held(self) -> int:
        return self._claimed_total - self._released_total

    def _kill_refused(self) -> None:
        """Kills running jobs the server refused to mark started (their workflow moved on)."""
        while self._refused:
            running = self.running.get(self._refused.popleft())
            if running is not None and not running.killed:
                running.killed = True
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(running.pidfd, signal.SIGKILL)

    def _journal(self, record: dict[str, Any]) -> None:
        """Appends one execution record (one write: it survives a SIGKILL of the worker)."""
        if self._journal_fd >= 0:
            try:
                os.write(self._journal_fd, orjson.dumps(record) + b"\n")
            except OSError as exc:
                log.warning("cannot write the execution journal", extra=kv(error=str(exc)))

    # ------------------------------------------------------------------ lost node

    def _node_lost(self, node_id: int, reason: LeaseLost) -> None:
        """Called from any thread when the compute node is lost; the main thread acts."""
        if self._lost is None and node_id == self.node.get("id"):
            self._lost = (node_id, reason)
            self._wake_main()

    def _replace_node(self) -> None:
        """Gives up a lost compute node and registers a new one.

        The server gives every job the node held to other workers at the next attempt, so
        the jobs running here are killed unreported and the claimed ones dropped.
        """
        assert self._lost is not None
        node_id, reason = self._lost
        self.nodes_lost += 1
        log.warning("compute node lost; killing its jobs and registering a new node",
                    extra=kv(compute_node_id=node_id, reason=reason.value,
                             running=len(self.running), claimed=len(self.claimed)))
        self.lease.stop()
        for running in list(self.running.values()):
            running.killed = running.abandoned = True
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(running.pidfd, signal.SIGKILL)
        abandoned = set(self.running)
        for running in list(self.running.values()):
            self._reap(running)
        dropped = 0
        while self.claimed:  # (one by one: the claimer may be appending meanwhile)
            self.claimed.popleft()
            dropped += 1
        self._release(dropped)
        with self._reports_cv:
            keep = [r for r in self._reports if r.kind != "start" or r.job_id not in abandoned]
            self._reports.clear()
            self._reports.extend(keep)
        node = self._until_taken("create_compute_node", self._create_node)
        self._until_taken("heartbeat", lambda: self.lease.start(int(node["id"])))
        self.node = node
        self._lost = None
        self._claim_wake.set()
        log.info("new compute node registered", extra=kv(compute_node_id=node.get("id"),
                                                         replaces=node_id))

    # ------------------------------------------------------------------ outages

    def _note_failure(self, op: str, exc: StressError) -> None:
        now = time.monotonic()
        if classify_failure(exc) != "retry":
            raise exc
        if self._outage_since is None:
            self._outage_since = now
            log.warning("server not taking requests; retrying", extra=kv(op=op, error=str(exc)))
        elif now - self._outage_since > self.unavailable_timeout_s:
            raise exc

    def _note_success(self) -> None:
        if self._outage_since is not None:
            log.info("server back", extra=kv(
                outage_s=round(time.monotonic() - self._outage_since, 3)))
            self._outage_since = None

    def _until_taken(self, op: str, call: Callable[[], T]) -> T:
        """Calls ``call`` until the server answers (retryable errors back off)."""
        backoff = Backoff(0.05, 1.0)
        while True:
            try:
                value = call()
            except StressError as exc:
                self._note_failure(op, exc)
                if self._stop_requested:
                    raise
                self._sleep_or_stop(backoff.next())
                continue
            self._note_success()
            return value

    def _sleep_or_stop(self, seconds: float) -> None:
        """Sleeps, but wakes early for a stop signal."""
        for key, _ in self._selector.select(seconds):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)

    # ------------------------------------------------------------------ exit

    def _shutdown(self) -> None:
        """Kills what still runs, settles claimed jobs, delivers every report, stops threads."""
        self._closing = True
        self.lease.stop()
        self._claim_wake.set()
        for thread in self._threads:
            if thread.name == "worker-claimer":
                thread.join(timeout=35.0)
        self._kill_all()
        self._terminate_claimed()
        self._drain_reports(timeout=10.0)

    def _kill_all(self) -> None:
        """Kills running jobs and queues their completions as terminated (best effort)."""
        for running in list(self.running.values()):
            running.killed = True
            sig = signal.SIGTERM if running.job.get("supports_termination") else signal.SIGKILL
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(running.pidfd, sig)
        for running in list(self.running.values()):
            exited, _, _ = select.select([running.pidfd], [], [], 5.0)
            if not exited:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(running.pidfd, signal.SIGKILL)
            self._reap(running)

    def _terminate_claimed(self) -> None:
        """Reports claimed jobs that never got a slot as terminated, so none stays pending.

        NOTE: the server has no way to give a claim back; a terminated completion is the only
        way to leave nothing stranded. It happens only on a hard stop (second signal, grace
        over, unrecoverable error): a normal stop runs the claimed jobs first.
        """
        if not self.claimed or self._state == "canceled" or self.lease.active:
            # a leased node's claims go back to ready when it is marked inactive at exit
            self.claimed.clear()
            return
        log.warning("reporting claimed jobs that never ran as terminated",
                    extra=kv(count=len(self.claimed)))
        while self.claimed:
            self._report_completion(self.claimed.popleft(), "terminated", -signal.SIGTERM, 0.0)
            self._release(1)

    def _drain_reports(self, timeout: float) -> None:
        """Waits until the reporter has delivered everything (at most ``timeout`` seconds)."""
        reporter = next((t for t in self._threads if t.name == "worker-reporter"), None)
        with self._reports_cv:
            self._reporter_done = True
            self._reports_cv.notify()
        deadline = time.monotonic() + timeout
        if reporter is not None and reporter.is_alive():
            reporter.join(timeout)
        else:
            try:
                while self._reports and time.monotonic() < deadline:
                    if not self._deliver_head():
                        time.sleep(0.05)
            except Exception as exc:  # noqa: BLE001 - what is left is counted below
                log.debug("delivery at exit failed", extra=kv(error=str(exc)))
        self._abandon.set()
        if reporter is not None:
            reporter.join(1.0)
        if self._reports:
            log.warning("could not deliver every report before exit",
                        extra=kv(left=len(self._reports)))

    def _finish(self) -> None:
        if self.node.get("id") is not None:
            node = dict(self.node, is_active=False,
                        duration_seconds=round(time.time() - self.started_at, 3))
            try:
                self.client.update_compute_node(node)
            except StressError as exc:
                log.warning("could not mark the compute node inactive",
                            extra=kv(compute_node_id=node["id"], error=str(exc)))
        self._write_metrics()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w, self._devnull, self._journal_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def metrics_document(self) -> dict[str, Any]:
        """Returns the worker metrics document of docs/internals.md."""
        return build_metrics(
            node=self.node_name, pid=self.pid, compute_node_id=self.node.get("id"),
            jobs_run=self.jobs_run, jobs_failed=self.jobs_failed, started_at=self.started_at,
            latency=self.recorder.summaries(), job_wall_ms=self.job_wall_ms,
            retries=self.retries)

    def _write_metrics(self) -> None:
        path = metrics_path(self.output_dir, self.node_name, self.pid)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(orjson.dumps(self.metrics_document(), option=orjson.OPT_INDENT_2))
        except OSError as exc:
            log.warning("could not write the worker metrics", extra=kv(path=str(path),
                                                                      error=str(exc)))

