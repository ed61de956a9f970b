"""``cluster-run``: deploy, start, run, watch, then always stop and gather, and record the run.

The phases, in order (each timed into ``run.json``):

1. *prepare* (nothing touched yet): load and validate the inventory, every playbook and the
   workflow spec; make ``runs/<run-id>/``.
2. *deploy*: build the wheelhouse when a host needs it, run ``playbooks/deploy.yml`` (it first
   checks that every host answers).
3. *start_server*: ``playbooks/start_server.yml``, then wait until the server answers ``/ping``.
4. *create*: create the workflow from the controller (``submit_plan``).
5. *start_workers*: ``playbooks/start_workers.yml`` on every worker host in parallel.
6. *run*: poll ``/workflows/{id}/progress`` until the workflow completes or the deadline passes.
7. *stop* and *gather*, always (also after a failure, Ctrl-C, SIGTERM or SIGHUP; see
   :mod:`torc_stress.cluster.interrupts`): faults still on are ended, ``playbooks/stop.yml``,
   then ``playbooks/gather.yml``, and the fetched tarballs are unpacked into ``hosts/<host>/``.

Faults (``--fault``, :mod:`torc_stress.cluster.faults`) are planned with the inventory and the
workflow before any host is touched, and injected from the run-watching loop.

Policy for unreachable hosts (``on_unreachable``): ``abort`` stops the run (exit code 4);
``continue`` goes on without them as long as the server host and one worker host answer.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import platform
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torc_stress
from torc_stress.client import TorcClient
from torc_stress.cluster import gather
from torc_stress.cluster.executor import PlaybookResult
from torc_stress.cluster.faults import (
    CONTROLLER,
    FaultCallback,
    FaultInjector,
    FaultRecord,
    plan_faults,
    stage_depths,
)
from torc_stress.cluster.harness import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PLAYBOOK,
    EXIT_UNREACHABLE,
    PLAYBOOKS,
    EventCallback,
    Harness,
    PlaybookCallback,
    RunAborted,
    new_run_id,
    registered_port,
    run_step,
    server_url,
)
from torc_stress.cluster.interrupts import RunInterrupted, StopSignals, signal_name
from torc_stress.cluster.inventory import Host
from torc_stress.cluster.progress import ProgressSnapshot, ProgressTracker, depth_labels
from torc_stress.cluster.settings import RunSettings
from torc_stress.cluster.transport import ConnectionCache, LocalTransport, Transport
from torc_stress.errors import ServerUnavailable, StressError
from torc_stress.spec import WorkflowPlan, expand, load_spec
from torc_stress.workflows import contention_workflow, write_workflow

__all__ = ["PLAYBOOKS", "Harness", "RunAborted", "RunOutcome", "cluster_run", "new_run_id",
           "registered_port", "run_step", "server_url"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[ProgressSnapshot], None]

#: Seconds between progress polls while a fault waits for its trigger (a stage of fast jobs
#: can pass half-way and end between two polls of poll_interval_s).
FAULT_POLL_S = 0.1


@dataclass
class RunOutcome:
    """What a cluster run produced.

    Attributes:
        run_id: the run's id (``<UTC time>-<suffix>``).
        run_dir: ``runs/<run-id>/`` with ``run.json`` and ``hosts/<host>/``.
        outcome: ``completed``, ``deadline``, ``failed`` or ``interrupted``.
        exit_code: 0 completed; 1 not completed or jobs failed; 2 a playbook failed on a host;
            4 a host was unreachable; 128 + the signal when interrupted (130 Ctrl-C, 143
            SIGTERM, 129 SIGHUP).
        message: one line saying why, when the run did not complete.
        workflow_id: the workflow's id on the server, once created.
        total_jobs: jobs in the workflow.
        counts: jobs per status at the end (from the gathered database when there is one).
        completed_per_host: completed jobs per worker host (from the gathered database).
        total_s: wall time of the whole run.
        phases: per phase ``{"start", "end", "seconds"}`` relative to the run's start.
        unreachable: host -> reason, for hosts that could not be reached.
        playbooks: the result of each playbook run, by playbook name.
        gathered: whether the gather ran (a second stop signal skips it).
    """

    run_id: str
    run_dir: Path
    outcome: str = "failed"
    exit_code: int = EXIT_FAILED
    message: str = ""
    workflow_id: int | None = None
    total_jobs: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    completed_per_host: dict[str, int] = field(default_factory=dict)
    total_s: float = 0.0
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    playbooks: dict[str, PlaybookResult] = field(default_factory=dict)
    gathered: bool = False


def make_run_dir(settings: RunSettings, run_id: str) -> Path:
    """Creates the run directory (``settings.run_dir`` or ``<runs_root>/<run_id>``)."""
    run_dir = settings.run_dir or settings.runs_root / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / gather.HOSTS_DIR).mkdir(exist_ok=True)
    return run_dir


def workflow_plan(settings: RunSettings, run_dir: Path) -> tuple[Path, WorkflowPlan]:
    """The workflow to run: generated into the run directory, or the given/seed spec."""
    if settings.generates_workflow:
        spec = contention_workflow(settings.stages, settings.jobs_per_stage)
        path = write_workflow(spec, run_dir / "workflow.yaml")
    else:
        path = settings.workflow_path
    return path, expand(load_spec(path))


def wait_for_server(client: TorcClient, timeout: float, *, interval: float = 0.2) -> float:
    """Pings until the server answers; returns the seconds it took.

    Raises:
        RunAborted: no answer within ``timeout`` seconds.
    """
    started = time.monotonic()
    while True:
        try:
            client.ping()
            return time.monotonic() - started
        except ServerUnavailable as exc:
            if time.monotonic() - started > timeout:
                raise RunAborted(f"the server did not answer within {timeout:g} s: {exc}") from exc
            time.sleep(interval)


@dataclass
class _Clock:
    started: float = field(default_factory=time.monotonic)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)

    def begin(self, name: str) -> None:
        self.phases[name] = {"start": round(time.monotonic() - self.started, 3)}

    def end(self, name: str) -> None:
        phase = self.phases.get(name)
        if phase is not None and "end" not in phase:
            phase["end"] = round(time.monotonic() - self.started, 3)
            phase["seconds"] = round(phase["end"] - phase["start"], 3)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class _ClusterRun(Harness):
    """One cluster run's state; :func:`cluster_run` is the public entry point."""

    def __init__(self, settings: RunSettings, on_progress: ProgressCallback | None,
                 on_event: EventCallback | None, on_playbook: PlaybookCallback | None,
                 on_fault: FaultCallback | None = None) -> None:
        super().__init__(settings, on_event=on_event, on_playbook=on_playbook)
        self.on_progress, self.on_fault = on_progress, on_fault
        self.clock = _Clock()
        make_run_dir(settings, self.run_id)
        self.outcome = RunOutcome(self.run_id, self.run_dir)
        self.outcome.playbooks = self.results
        self.workflow_path, self.plan = workflow_plan(settings, self.run_dir)
        self.outcome.total_jobs = len(self.plan.jobs)
        self.started_hosts = False
        self.url: str | None = None
        self.port = 0
        self.workers_started: float | None = None
        self.tracker = ProgressTracker(labels=depth_labels(self.plan.levels))
        self.fault_plan = plan_faults(
            settings.faults, self.inventory,
            stages=stage_depths(self.plan.levels, {j.name: j.depends_on for j in self.plan.jobs}),
            default_root=str(self.extra_vars["torc_default_root"]), run_id=self.run_id,
            link_exists=_controller_link)
        self.injector: FaultInjector | None = None
        self.signals = StopSignals()
        # NOTE: the token goes to the hosts only as file content; it is not in run.json or logs.
        self.token = secrets.token_urlsafe(24) if settings.require_token else None
        if self.token:
            self.extra_vars["torc_token"] = self.token

    # ---------------------------------------------------------------- playbooks

    def check(self, name: str, result: PlaybookResult) -> None:
        """Applies the unreachable policy and stops the run on a failed host."""
        if result.unreachable:
            self.outcome.unreachable.update(result.unreachable)
            self.apply_unreachable_policy(name, result.unreachable)
        if result.failures:
            hosts = ", ".join(sorted(result.failures))
            first = next(iter(result.failures.values()))
            raise RunAborted(f"{name}.yml failed on {hosts}: {first}", EXIT_PLAYBOOK)

    def apply_unreachable_policy(self, name: str, unreachable: Mapping[str, str]) -> None:
        hosts = ", ".join(sorted(unreachable))
        server = self.inventory.server.name
        workers_left = [w.name for w in self.inventory.workers
                        if w.name not in unreachable and w.name not in self.excluded]
        if self.settings.on_unreachable == "abort" or server in unreachable or not workers_left:
            raise RunAborted(
                f"{name}.yml: unreachable: {hosts} (policy: {self.settings.on_unreachable}); "
                "fix the host or its inventory entry, or pass --on-unreachable continue to "
                "run without unreachable worker hosts", EXIT_UNREACHABLE)
        log.warning("continuing without unreachable hosts %s", hosts)
        self.excluded.update(unreachable)

    def timed(self, phase: str, name: str, connections: ConnectionCache,
              **extra: Any) -> PlaybookResult:
        self.clock.begin(phase)
        try:
            result = self.play(name, connections, **extra)
        finally:
            self.clock.end(phase)
        self.check(name, result)
        return result

    # ---------------------------------------------------------------- phases

    def deploy(self, connections: ConnectionCache) -> None:
        if self.deploy_hosts:
            # NOTE: check reachability first: a cold wheelhouse build takes minutes.
            self.clock.begin("host_check")
            result = self.host_check(connections)
            self.clock.end("host_check")
            self.check("deploy", result)
            self.clock.begin("wheelhouse")
            self.build_wheelhouse()
            self.clock.end("wheelhouse")
        self.timed("deploy", "deploy", connections)

    def start_server(self, connections: ConnectionCache) -> TorcClient:
        self.started_hosts = True
        result = self.timed("start_server", "start_server", connections)
        server = self.inventory.server
        self.port = registered_port(result, server.name)
        self.url = server_url(server, self.port)
        client = TorcClient(self.url, token=self.token, timeout=30.0)
        self.clock.begin("server_ready")
        wait_for_server(client, self.settings.server_timeout_s)
        self.clock.end("server_ready")
        return client

    def create_workflow(self, client: TorcClient) -> int:
        self.clock.begin("create")
        workflow_id = _submit(client, self.plan, user=getpass.getuser())
        self.clock.end("create")
        self.outcome.workflow_id = workflow_id
        return workflow_id

    def start_workers(self, connections: ConnectionCache, workflow_id: int) -> None:
        # NOTE: progress and the deadline count from here: over SSH the first workers are
        # already running jobs before the playbook returns.
        self.workers_started = time.monotonic()
        self.injector = self.fault_injector(connections) if self.fault_plan else None
        self.timed("start_workers", "start_workers", connections,
                   server_url=self.url, workflow_id=workflow_id)

    def fault_injector(self, connections: ConnectionCache) -> FaultInjector:
        """The executor of the run's faults, over the run's own connections."""
        controller = LocalTransport(CONTROLLER)

        def transport_for(host: str) -> Transport:
            return controller if host == CONTROLLER else connections.get(self.inventory.hosts[host])

        def server_answers() -> bool:
            try:
                with TorcClient(str(self.url), token=self.token, timeout=5.0) as client:
                    client.ping()
                return True
            except StressError:
                return False

        return FaultInjector(self.fault_plan, transport_for=transport_for, port=self.port,
                             server_answers=server_answers,
                             ready_timeout_s=self.settings.server_timeout_s,
                             on_fault=self.on_fault)

    def watch(self, client: TorcClient, workflow_id: int) -> str:
        """Polls progress until complete or the deadline; returns the outcome."""
        self.clock.begin("run")
        started = self.workers_started or time.monotonic()
        deadline = started + self.settings.deadline_s
        failures_since: float | None = None
        shown = -math.inf
        try:
            while True:
                now = time.monotonic()
                try:
                    snap = self.tracker.update(client.progress(workflow_id), now - started)
                    failures_since = None
                except ServerUnavailable as exc:
                    failures_since = failures_since or now
                    if now - failures_since > self.settings.server_timeout_s:
                        raise RunAborted(f"lost the server during the run: {exc}") from exc
                    snap = None
                if self.injector is not None:
                    self.injector.poll(snap, now - started)
                finished = snap is not None and snap.finished
                if snap is not None and self.on_progress is not None and (
                        finished or now - shown >= self.settings.poll_interval_s * 0.99):
                    self.on_progress(snap)
                    shown = now
                if snap is not None and finished:
                    return "completed" if _all_completed(snap.counts) else "failed"
                self.check_stall(now - started)
                if now >= deadline:
                    return "deadline"
                time.sleep(min(self.poll_interval(), max(0.0, deadline - now)) or 0.05)
        finally:
            self.clock.end("run")

    def poll_interval(self) -> float:
        """Seconds to the next poll: shorter while a fault waits for its trigger."""
        if self.injector is not None and self.injector.pending:
            return min(self.settings.poll_interval_s, FAULT_POLL_S)
        return self.settings.poll_interval_s

    def check_stall(self, elapsed_s: float) -> None:
        stalled = self.tracker.stalled_for(elapsed_s)
        if stalled > self.settings.stall_timeout_s:
            raise RunAborted(
                f"no job finished for {stalled:.0f} s (stall_timeout): the workers are gone or "
                "stuck; see worker-*.out and worker-*.log under hosts/<host>/ in the run "
                "directory (raise stress.stall_timeout for workflows of long jobs)")

    def stop_and_gather(self, connections: ConnectionCache) -> None:
        """Ends faults, stops every process of the run, gathers; never raises a StressError.

        The stop always finishes; a second stop signal skips the gather, or ends it.
        """
        if self.injector is not None:
            self.injector.stop()
        self.step("stop", connections)
        if self.signals.skip_gather:
            log.warning("a second stop signal: the gather is skipped")
            return
        try:
            with self.signals.gathering():
                self.step("gather", connections)
                self.clock.begin("unpack")
                try:
                    gather.unpack_host_tarballs(self.run_dir, list(self.inventory.hosts))
                except StressError as exc:
                    log.error("%s", exc)
                self.clock.end("unpack")
        except RunInterrupted:
            log.warning("a second stop signal: the gather was ended")
            return
        self.outcome.gathered = True

    def step(self, name: str, connections: ConnectionCache) -> None:
        """Runs the stop or gather playbook as a phase of its own; logs a failure."""
        self.clock.begin(name)
        try:
            result = self.play(name, connections)
            self.outcome.unreachable.update(result.unreachable)
        except StressError as exc:
            log.error("%s.yml could not run: %s", name, exc)
        finally:
            self.clock.end(name)

    def note_late_signal(self) -> None:
        """A stop signal that came only while stopping still makes the run interrupted."""
        o, received = self.outcome, self.signals.received
        if received and o.outcome != "interrupted":
            o.outcome, o.exit_code = "interrupted", 128 + received[0]
            o.message = f"stopped by {signal_name(received[0])} while stopping; {o.message}"

    def read_results(self) -> None:
        """Fills counts and per-host completions from the gathered database."""
        workflow_id = self.outcome.workflow_id
        db = gather.find_server_db(self.run_dir, self.inventory.server.name)
        if workflow_id is None:
            return
        if db is not None:
            with suppress(StressError):
                self.outcome.counts = gather.job_counts(db, workflow_id)
                self.outcome.completed_per_host = gather.completed_per_host(db, workflow_id)
                return
        last = self.tracker.last
        if last is not None:
            self.outcome.counts = dict(last.counts)

    # ---------------------------------------------------------------- record

    def host_records(self) -> dict[str, Any]:
        versions = self.results.get("deploy")
        registered = versions.registered if versions else {}
        records = {}
        for host in self.inventory.hosts.values():
            info = _parse_versions(registered.get(host.name, {}).get("host_versions"))
            records[host.name] = {
                "roles": [g for g in host.groups if g in ("server", "workers")],
                "address": host.address, "connection": host.connection,
                "workers": _worker_count(host, self.settings) if "workers" in host.groups else 0,
                "deployed": host.name in self.deploy_hosts,
                **info,
            }
        return records

    def run_record(self) -> dict[str, Any]:
        o, inv = self.outcome, self.inventory
        return {
            "schema": 1,
            "run_id": self.run_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "controller": {"python": platform.python_version(), "host": platform.node(),
                           "torc_stress": torc_stress.__version__},
            "inventory": {"path": _relative(inv.path, self.settings.project_root),
                          "server": inv.server.name,
                          "workers": {w.name: _worker_count(w, self.settings)
                                      for w in inv.workers}},
            "hosts": self.host_records(),
            "settings": self.settings.to_record(),
            "workflow": {"path": _relative(self.workflow_path, self.settings.project_root),
                         "name": self.plan.name, "id": o.workflow_id, "jobs": o.total_jobs},
            "server": {"host": inv.server.name, "url": self.url},
            "wheelhouse": self.wheelhouse,
            "phases": self.clock.phases,
            "outcome": o.outcome,
            "exit_code": o.exit_code,
            "message": o.message,
            "counts": o.counts,
            "completed_per_host": o.completed_per_host,
            "unreachable": o.unreachable,
            "gathered": o.gathered,
            "faults": (self.injector.to_record() if self.injector is not None
                       else [FaultRecord(f).to_record() for f in self.fault_plan]),
            "total_s": round(o.total_s, 3),
        }

    def write_record(self) -> None:
        path = self.run_dir / "run.json"
        path.write_text(json.dumps(self.run_record(), indent=2, sort_keys=False) + "\n")

    # ---------------------------------------------------------------- main

    def execute(self) -> RunOutcome:
        """Runs every phase with the stop signals handled (see the module docstring)."""
        with self.signals:
            return self._execute()

    def _execute(self) -> RunOutcome:
        o = self.outcome
        connections = self.connections()
        try:
            self.deploy(connections)
            client = self.start_server(connections)
            with client:
                workflow_id = self.create_workflow(client)
                self.start_workers(connections, workflow_id)
                o.outcome = self.watch(client, workflow_id)
            o.exit_code = EXIT_OK if o.outcome == "completed" else EXIT_FAILED
            if o.outcome == "deadline":
                o.message = f"the workflow did not finish within {self.settings.deadline_s:g} s"
            elif o.outcome == "failed":
                o.message = "the workflow finished, but not every job completed"
        except RunAborted as exc:
            o.outcome, o.exit_code, o.message = "failed", exc.exit_code, str(exc)
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, RunInterrupted) else int(signal.SIGINT)
            o.outcome, o.exit_code = "interrupted", 128 + signum  # 130 = EXIT_INTERRUPTED
            o.message = f"stopped by {signal_name(signum)}"
        except StressError as exc:
            o.outcome, o.exit_code, o.message = "failed", EXIT_FAILED, str(exc)
        finally:
            self.signals.begin_stop()
            try:
                if self.started_hosts:
                    self.stop_and_gather(connections)
                self.read_results()
                self.note_late_signal()
            finally:
                connections.close_all()
                o.total_s = self.clock.elapsed()
                o.phases = self.clock.phases
                self.write_record()
        return o


def cluster_run(settings: RunSettings, *, on_progress: ProgressCallback | None = None,
                on_event: EventCallback | None = None,
                on_playbook: PlaybookCallback | None = None,
                on_fault: FaultCallback | None = None) -> RunOutcome:
    """Runs the workflow on the inventory's hosts end to end; always stops and gathers.

    Args:
        settings: validated run settings.
        on_progress: called with each progress snapshot (about every ``poll_interval_s``).
        on_event: called for each task result on each host (for host-prefixed output).
        on_playbook: called with each playbook's name and result (for the PLAY RECAP).
        on_fault: called when a fault is injected, ends or fails (from the fault's thread).

    Returns:
        The outcome; ``run.json`` in ``outcome.run_dir`` records it.

    Raises:
        InventoryError: the inventory is invalid (nothing was touched).
        PlaybookError: a playbook is invalid (nothing was touched).
        SpecError: the workflow spec is invalid (nothing was touched).
        ConfigError: a setting or a fault is invalid (nothing was touched).
    """
    return _ClusterRun(settings, on_progress, on_event, on_playbook, on_fault).execute()


def _submit(client: TorcClient, plan: WorkflowPlan, *, user: str) -> int:
    from torc_stress.submit import submit_plan

    return submit_plan(client, plan, user=user)


def _controller_link(name: str) -> bool:
    """Whether this process can take the link down: it exists here and we are root."""
    return os.geteuid() == 0 and Path("/sys/class/net", name).exists()


def _all_completed(counts: Mapping[str, int]) -> bool:
    return all(n == 0 for status, n in counts.items() if status not in ("completed", "disabled"))


def _worker_count(host: Host, settings: RunSettings) -> int:
    if settings.workers_per_host:
        return settings.workers_per_host
    return int(host.vars.get("torc_workers", 1))


def _parse_versions(result: Mapping[str, Any] | None) -> dict[str, Any]:
    if not result or result.get("skipped"):
        return {}
    with suppress(ValueError, TypeError):
        data = json.loads(str(result.get("stdout", "")))
        if isinstance(data, dict):
            return data
    return {}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)
