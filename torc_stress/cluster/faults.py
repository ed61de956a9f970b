"""Fault injection for ``cluster-run``: parse ``--fault`` specs, plan them, inject them.

A spec is ``KIND[:ARGS]@TRIGGER``:

```
kill-worker:HOST:N@TRIGGER        SIGKILL N worker processes of HOST (each with its jobs)
restart-server@TRIGGER            SIGKILL the server, start it again with the same command line
                                  (database, port, token), then wait until it answers
partition:HOST:SECONDS@TRIGGER    a testbed host: its link down for SECONDS, then up again;
                                  any other host: SIGSTOP its workers for SECONDS, then SIGCONT
TRIGGER:  stageN   completed jobs of the N-th stage reach half (stages as the report counts them:
                   dependency depths that are not barriers)
          Ts       T seconds after the workers were started (e.g. 30s, 2.5s)
```

:func:`parse_fault` and :func:`plan_faults` are pure: a bad spec, a host that is not in the
inventory or a stage the workflow does not have is a :class:`ConfigError` before any host is
touched. The shell commands are built by pure functions too. :class:`FaultInjector` is the small
executor the run-watching loop calls: each due fault runs on a thread of its own (the progress
display never waits for it), and :meth:`FaultInjector.stop` ends every partition early (link up,
SIGCONT) and waits for restarts in flight, so nothing is left down or stopped. Only pids read from
the run's own pid files, and only while ``/proc/<pid>/cmdline`` is a torc-stress process, are
ever signalled (the same rule as ``playbooks/stop.yml``).
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torc_stress.cluster.inventory import Host, Inventory
from torc_stress.cluster.progress import ProgressSnapshot
from torc_stress.cluster.transport import CmdResult, Transport
from torc_stress.errors import ConfigError, StressError

log = logging.getLogger(__name__)

KINDS = ("kill-worker", "restart-server", "partition")
FORMS = {
    "kill-worker": "kill-worker:HOST:N@TRIGGER",
    "restart-server": "restart-server@TRIGGER",
    "partition": "partition:HOST:SECONDS@TRIGGER",
}
TRIGGER_FORMS = "stageN (e.g. stage2) or SECONDSs (e.g. 30s)"
#: The controller itself, for commands that run here (testbed links live in its namespace).
CONTROLLER = "controller"
COMMAND_TIMEOUT_S = 30.0

_STAGE = re.compile(r"^stage([1-9][0-9]*)$")
_SECONDS = re.compile(r"^([0-9]+(?:\.[0-9]*)?)s$")
_OURS = "ours() { grep -qaE 'torc[-_]stress' /proc/$1/cmdline 2>/dev/null; };"


# ------------------------------------------------------------------------------ parsing


@dataclass(frozen=True)
class Trigger:
    """When a fault fires: at half of a stage's jobs, or some seconds after the workers started."""

    stage: int | None = None
    after_s: float | None = None

    def __str__(self) -> str:
        return f"stage{self.stage}" if self.stage is not None else f"{self.after_s:g}s"


@dataclass(frozen=True)
class FaultSpec:
    """One parsed ``--fault`` spec (``host``, ``count``, ``seconds`` where the kind has them)."""

    spec: str
    kind: str
    trigger: Trigger
    host: str | None = None
    count: int | None = None
    seconds: float | None = None


def _bad(text: str, why: str, kind: str | None = None) -> ConfigError:
    forms = FORMS[kind] if kind else ", ".join(FORMS.values())
    return ConfigError(f"--fault {text!r}: {why}; write {forms} (TRIGGER: {TRIGGER_FORMS})")


def parse_trigger(text: str, spec: str) -> Trigger:
    """Parses ``stageN`` or ``<seconds>s``.

    Raises:
        ConfigError: anything else; the message shows both forms.
    """
    if match := _STAGE.match(text):
        return Trigger(stage=int(match.group(1)))
    if match := _SECONDS.match(text):
        return Trigger(after_s=float(match.group(1)))
    raise ConfigError(f"--fault {spec!r}: bad trigger {text!r}; write {TRIGGER_FORMS}")


def _count(text: str, spec: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise _bad(spec, f"N must be a whole number of worker processes >= 1, got {text!r}",
                   "kill-worker")
    return int(text)


def _seconds(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise _bad(spec, f"SECONDS must be a number of seconds > 0, got {text!r}", "partition")
    return value


def parse_fault(text: str) -> FaultSpec:
    """Parses one fault spec (pure).

    Args:
        text: ``KIND[:ARGS]@TRIGGER``, e.g. ``kill-worker:node1:2@stage2``.

    Returns:
        The spec as data.

    Raises:
        ConfigError: a bad spec or an unknown kind; the message shows the forms.
    """
    if not isinstance(text, str):
        raise ConfigError(f"--fault {text!r}: a fault spec must be a string such as "
                          f"{FORMS['kill-worker']}")
    spec = text.strip()
    body, at, trigger_text = spec.rpartition("@")
    if not at or not body:
        raise _bad(spec, "no @TRIGGER")
    kind, *args = body.split(":")
    if kind not in KINDS:
        raise _bad(spec, f"unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    expected = FORMS[kind].split("@")[0].count(":")
    if len(args) != expected or not all(args):
        raise _bad(spec, f"{kind} takes {expected} argument(s)", kind)
    trigger = parse_trigger(trigger_text, spec)
    if kind == "kill-worker":
        return FaultSpec(spec, kind, trigger, host=args[0], count=_count(args[1], spec))
    if kind == "partition":
        return FaultSpec(spec, kind, trigger, host=args[0], seconds=_seconds(args[1], spec))
    return FaultSpec(spec, kind, trigger)


def parse_faults(values: Iterable[str] | str | None) -> tuple[FaultSpec, ...]:
    """Parses the ``faults`` setting: a list of specs (``[]`` or None: no faults).

    Raises:
        ConfigError: the value is not a list, or one spec is bad.
    """
    if values is None:
        return ()
    if isinstance(values, str):
        raise ConfigError(f"setting faults: expected a list of fault specs, got {values!r}; "
                          "in invoke.yaml write faults: [\"kill-worker:HOST:1@stage2\"]")
    return tuple(parse_fault(v) for v in values)


# ------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class PlannedFault:
    """A fault checked against the run: where it acts, how, and when.

    Attributes:
        spec: the parsed spec.
        method: ``sigkill``, ``restart``, ``link-down`` or ``sigstop``.
        host: the host the command runs on (the server host for restart-server,
            :data:`CONTROLLER` for a testbed link).
        run_dir: the run's directory on that host (pid files), "" for a link.
        depth: the workflow depth whose completions trigger it (stage triggers).
        link: the testbed link taken down (link-down).
    """

    spec: FaultSpec
    method: str
    host: str
    run_dir: str = ""
    depth: int | None = None
    link: str | None = None


def stage_depths(levels: Sequence[Sequence[str]],
                 depends_on: Mapping[str, Sequence[str]]) -> list[int]:
    """The depths that are stages, in order: every depth except barriers (pure).

    A barrier is a depth of one job that depends on every job of the previous depth (when that
    depth has more than one), as the report counts them.
    """
    stages: list[int] = []
    for depth, names in enumerate(levels):
        previous = levels[depth - 1] if depth else []
        barrier = (len(names) == 1 and len(previous) > 1
                   and set(previous) <= set(depends_on.get(names[0], ())))
        if not barrier:
            stages.append(depth)
    return stages


def host_run_dir(host: Host, default_root: str, run_id: str) -> str:
    """``<torc_root>/run/<run_id>`` on ``host``, as the playbooks compute it."""
    return f"{host.vars.get('torc_root') or default_root}/run/{run_id}"


def _worker_host(inventory: Inventory, name: str, spec: FaultSpec) -> Host:
    host = inventory.hosts.get(name)
    if host is None:
        raise ConfigError(f"--fault {spec.spec!r}: host {name!r} is not in the inventory "
                          f"{inventory.path} (hosts: {', '.join(inventory.hosts)})")
    if "workers" not in host.groups:
        workers = ", ".join(h.name for h in inventory.workers)
        raise ConfigError(f"--fault {spec.spec!r}: host {name!r} runs no workers (group workers: "
                          f"{workers}); name a worker host")
    return host


def _testbed_link(host: Host, spec: FaultSpec, link_exists: Callable[[str], bool]) -> str | None:
    link = host.vars.get("testbed_link")
    if not link:
        return None
    if not link_exists(str(link)):
        raise ConfigError(f"--fault {spec.spec!r}: host {host.name} is a testbed host, but its "
                          f"link {link} does not exist on this machine (as root: invoke "
                          "testbed-up), or drop the fault")
    return str(link)


def _trigger_depth(spec: FaultSpec, stages: Sequence[int]) -> int | None:
    stage = spec.trigger.stage
    if stage is None:
        return None
    if stage > len(stages):
        raise ConfigError(f"--fault {spec.spec!r}: the workflow has {len(stages)} stage(s) "
                          f"(stage1..stage{len(stages)}), no stage{stage}")
    return stages[stage - 1]


def plan_fault(spec: FaultSpec, inventory: Inventory, *, stages: Sequence[int],
               default_root: str, run_id: str,
               link_exists: Callable[[str], bool]) -> PlannedFault:
    """Checks one spec against the inventory and the workflow (pure but for ``link_exists``).

    Raises:
        ConfigError: an unknown or unfit host, or a stage the workflow does not have.
    """
    depth = _trigger_depth(spec, stages)
    if spec.kind == "restart-server":
        server = inventory.server
        return PlannedFault(spec, "restart", server.name,
                            host_run_dir(server, default_root, run_id), depth)
    host = _worker_host(inventory, str(spec.host), spec)
    run_dir = host_run_dir(host, default_root, run_id)
    if spec.kind == "kill-worker":
        return PlannedFault(spec, "sigkill", host.name, run_dir, depth)
    link = _testbed_link(host, spec, link_exists)
    if link is not None:
        return PlannedFault(spec, "link-down", CONTROLLER, "", depth, link)
    return PlannedFault(spec, "sigstop", host.name, run_dir, depth)


def plan_faults(specs: Sequence[FaultSpec], inventory: Inventory, *, stages: Sequence[int],
                default_root: str, run_id: str,
                link_exists: Callable[[str], bool]) -> tuple[PlannedFault, ...]:
    """Plans every spec, in the order given; see :func:`plan_fault`."""
    return tuple(plan_fault(s, inventory, stages=stages, default_root=default_root,
                            run_id=run_id, link_exists=link_exists) for s in specs)


def is_due(fault: PlannedFault, snap: ProgressSnapshot | None, elapsed_s: float) -> bool:
    """Whether the fault's trigger has fired (pure).

    Args:
        fault: the planned fault.
        snap: the latest progress snapshot (None while the server does not answer).
        elapsed_s: seconds since the workers were started.
    """
    trigger = fault.spec.trigger
    if trigger.after_s is not None:
        return elapsed_s >= trigger.after_s
    if snap is None:
        return False
    depth = next((d for d in snap.depths if d.depth == fault.depth), None)
    return depth is not None and depth.total > 0 and 2 * depth.completed >= depth.total


# ------------------------------------------------------------------------------ commands


def kill_command(run_dir: str, count: int) -> str:
    """SIGKILL the sessions (worker and its jobs) of ``count`` live workers; prints their pids."""
    return (
        f"cd {shlex.quote(run_dir)} || exit 3; {_OURS} n=0; pids=''; "
        "for f in worker-*.pid; do [ -e \"$f\" ] || continue; "
        f"[ $n -lt {count} ] || break; p=$(cat \"$f\"); ours \"$p\" || continue; "
        "kill -KILL -\"$p\" 2>/dev/null || kill -KILL \"$p\" || continue; "
        "pids=\"$pids $p\"; n=$((n+1)); done; echo \"pids:$pids\"; "
        f"[ $n -eq {count} ] || {{ echo \"only $n of {count} worker processes of this run "
        "were running\" >&2; exit 3; }"
    )


def stop_workers_command(run_dir: str) -> str:
    """SIGSTOP the sessions of every live worker of the run; prints their pids."""
    return (
        f"cd {shlex.quote(run_dir)} || exit 3; {_OURS} pids=''; "
        "for f in worker-*.pid; do [ -e \"$f\" ] || continue; p=$(cat \"$f\"); "
        "ours \"$p\" || continue; kill -STOP -\"$p\" 2>/dev/null || kill -STOP \"$p\" || continue; "
        "pids=\"$pids $p\"; done; echo \"pids:$pids\"; "
        "[ -n \"$pids\" ] || { echo 'no worker process of this run was running' >&2; exit 3; }"
    )


def continue_command(pids: Sequence[int]) -> str:
    """SIGCONT the sessions of ``pids`` (only while they are still torc-stress processes)."""
    listed = " ".join(str(int(p)) for p in pids)
    return (f"{_OURS} for p in {listed}; do ours $p || continue; "
            "kill -CONT -$p 2>/dev/null || kill -CONT $p; done; true")


_RESTART_PY = (
    "import subprocess, sys\n"
    "argv = open('server.cmdline', 'rb').read().split(b'\\0')[:-1]\n"
    "argv[argv.index(b'--port') + 1] = sys.argv[1].encode()\n"
    "out = open('server.out', 'ab')\n"
    "proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, "
    "start_new_session=True)\n"
    "open('server.pid', 'w').write(f'{proc.pid}\\n')\n"
    "print(f'new:{proc.pid}')\n"
)


def restart_command(run_dir: str, port: int) -> str:
    """SIGKILL the server of the run, wait until it is gone, start its command line again.

    The new server gets the same arguments (database, token file, log and metrics files) with
    ``--port`` set to ``port``; its output is appended to ``server.out`` and its pid replaces
    ``server.pid``. Prints ``pids: OLD`` then ``new:NEW``.
    """
    return (
        f"cd {shlex.quote(run_dir)} || exit 3; {_OURS} p=$(cat server.pid 2>/dev/null); "
        "ours \"$p\" || { echo 'no server process of this run was running' >&2; exit 3; }; "
        "py=$(readlink /proc/$p/exe); cp /proc/$p/cmdline server.cmdline || exit 3; "
        "kill -KILL \"$p\" || exit 3; echo \"pids: $p\"; "
        "while ours \"$p\"; do sleep 0.05; done; "
        f"exec \"$py\" -c {shlex.quote(_RESTART_PY)} {int(port)}"
    )


def link_command(link: str, state: str) -> str:
    """``ip link set LINK down|up`` (run on the controller, where testbed links live)."""
    return shlex.join(["ip", "link", "set", link, state])


def parse_pids(stdout: str) -> list[int]:
    """The pids of a ``pids: 1 2`` line in a command's output."""
    for line in stdout.splitlines():
        if line.startswith("pids:"):
            return [int(tok) for tok in line[5:].split() if tok.isdigit()]
    return []


# ------------------------------------------------------------------------------ records


@dataclass
class FaultRecord:
    """What happened to one fault; :meth:`to_record` is its ``run.json`` entry."""

    planned: PlannedFault
    injected_at: float | None = None
    ended_at: float | None = None
    targets: list[int | str] = field(default_factory=list)
    error: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The ``run.json`` ``faults`` entry (key order as in docs/internals.md)."""
        spec = self.planned.spec
        return {"spec": spec.spec, "kind": spec.kind, "host": spec.host, "count": spec.count,
                "seconds": spec.seconds, "trigger": str(spec.trigger),
                "injected_at": self.injected_at, "ended_at": self.ended_at,
                "method": self.planned.method, "targets": list(self.targets),
                "error": self.error}


# ------------------------------------------------------------------------------ executor

FaultCallback = Callable[[FaultRecord, str], None]
"""Called with a record and ``injected``, ``ended`` or ``failed`` (from a fault's thread)."""


class _Failed(StressError):
    """An injection step failed; the message goes into the record's ``error``."""


def _check(result: CmdResult) -> None:
    """Raises :class:`_Failed` with the command's last stderr line unless it exited 0."""
    if not result.ok:
        detail = result.stderr.strip().splitlines()[-1:] or [f"exit {result.exit_code}"]
        raise _Failed(f"{result.host}: {detail[0]}")


class FaultInjector:
    """Injects planned faults when their triggers fire, each on a thread of its own.

    Args:
        faults: the planned faults, in spec order.
        transport_for: the open transport of a host name (:data:`CONTROLLER`: this machine).
        port: the server's port (a restarted server binds it again).
        server_answers: whether the server answers now (a restart ends when it does).
        ready_timeout_s: how long a restarted server may take to answer.
        on_fault: called when a fault is injected, ends or fails.
    """

    def __init__(self, faults: Sequence[PlannedFault], *,
                 transport_for: Callable[[str], Transport], port: int,
                 server_answers: Callable[[], bool], ready_timeout_s: float = 60.0,
                 on_fault: FaultCallback | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.records = [FaultRecord(f) for f in faults]
        self._transport_for, self._port = transport_for, port
        self._server_answers, self._ready_timeout_s = server_answers, ready_timeout_s
        self._on_fault, self._clock = on_fault, clock
        self._started: set[int] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._restore_lock = threading.Lock()

    @property
    def pending(self) -> bool:
        """Whether some fault has not fired yet."""
        return len(self._started) < len(self.records)

    def poll(self, snap: ProgressSnapshot | None, elapsed_s: float) -> None:
        """Starts every fault whose trigger fired (returns at once)."""
        if self._stopping.is_set():
            return
        for index, record in enumerate(self.records):
            if index not in self._started and is_due(record.planned, snap, elapsed_s):
                self._started.add(index)
                thread = threading.Thread(target=self._inject, args=(record,), daemon=True,
                                          name=f"fault-{index}")
                self._threads.append(thread)
                thread.start()

    def stop(self, timeout_s: float = 2 * COMMAND_TIMEOUT_S) -> None:
        """Ends partitions now, waits for injections in flight; nothing is left down/stopped."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout_s)
        for record in self.records:
            self._restore(record)

    def to_record(self) -> list[dict[str, Any]]:
        """The ``run.json`` ``faults`` list, in spec order."""
        return [r.to_record() for r in self.records]

    # ------------------------------------------------------------------ one fault

    def _inject(self, record: FaultRecord) -> None:
        method = record.planned.method
        try:
            if method == "sigkill":
                self._kill(record)
            elif method == "restart":
                self._restart(record)
            else:
                self._partition(record)
        except StressError as exc:
            record.error = str(exc)
            log.warning("fault failed spec=%s error=%s", record.planned.spec.spec, exc)
            self._tell(record, "failed")

    def _run(self, host: str, command: str) -> CmdResult:
        return self._transport_for(host).run(command, timeout=COMMAND_TIMEOUT_S)

    def _hit(self, record: FaultRecord, targets: Sequence[int | str], at: float) -> None:
        if targets:
            record.targets, record.injected_at = list(targets), at
            self._tell(record, "injected")

    def _kill(self, record: FaultRecord) -> None:
        p = record.planned
        at = self._clock()
        result = self._run(p.host, kill_command(p.run_dir, int(p.spec.count or 1)))
        self._hit(record, parse_pids(result.stdout), at)  # a partial kill still killed these
        if record.injected_at is not None:
            record.ended_at = at
        _check(result)
        self._tell(record, "ended")

    def _restart(self, record: FaultRecord) -> None:
        p = record.planned
        at = self._clock()
        result = self._run(p.host, restart_command(p.run_dir, self._port))
        self._hit(record, parse_pids(result.stdout), at)
        _check(result)
        deadline = time.monotonic() + self._ready_timeout_s
        while not self._server_answers():
            if time.monotonic() > deadline or self._stopping.wait(0.2):
                raise _Failed(f"the restarted server did not answer within "
                              f"{self._ready_timeout_s:g} s; see server.out in the run directory")
        record.ended_at = self._clock()
        self._tell(record, "ended")

    def _partition(self, record: FaultRecord) -> None:
        p = record.planned
        at = self._clock()
        if p.link is not None:
            _check(self._run(CONTROLLER, link_command(p.link, "down")))
            self._hit(record, [p.link], at)
        else:
            result = self._run(p.host, stop_workers_command(p.run_dir))
            self._hit(record, parse_pids(result.stdout), at)
            _check(result)
        try:
            self._stopping.wait(float(p.spec.seconds or 0))
        finally:
            self._restore(record)

    def _restore(self, record: FaultRecord) -> None:
        """Ends a partition that is still on (link up / SIGCONT); harmless otherwise."""
        p = record.planned
        with self._restore_lock:
            if p.spec.kind != "partition" or record.injected_at is None \
                    or record.ended_at is not None:
                return
            command = (link_command(p.link, "up") if p.link is not None
                       else continue_command([int(t) for t in record.targets]))
            try:
                _check(self._run(CONTROLLER if p.link else p.host, command))
            except StressError as exc:
                record.error = f"could not end the partition: {exc}"
                log.error("fault not ended spec=%s error=%s", p.spec.spec, exc)
                self._tell(record, "failed")
                return
            record.ended_at = self._clock()
        self._tell(record, "ended")

    def _tell(self, record: FaultRecord, event: str) -> None:
        if self._on_fault is not None:
            try:
                self._on_fault(record, event)
            except Exception:  # a display problem must not stop an injection or a restore
                log.exception("fault callback failed")
