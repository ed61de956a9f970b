"""Run a playbook: linear strategy, all hosts of a play in parallel, ansible-playbook exit codes.

Each task runs on every remaining host of its play at once (a thread pool of ``forks``); the
next task starts when all hosts finished the current one. A host that fails is dropped from the
rest of the playbook while the others continue; a host that cannot be reached is UNREACHABLE,
with the reason. Exit code: 4 if any host was unreachable, else 2 if any failed, else 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from torc_stress.cluster import templar
from torc_stress.cluster.inventory import Host, Inventory
from torc_stress.cluster.modules import ModuleContext, is_sequence, render_args, run_module
from torc_stress.cluster.playbook import Play, Playbook, Task, load_playbook
from torc_stress.cluster.templar import LazyVars
from torc_stress.cluster.transport import ConnectionCache
from torc_stress.errors import PlaybookError, UnreachableError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 2, 4


class Status(StrEnum):
    """What a task did on one host."""

    OK = "ok"
    CHANGED = "changed"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class TaskEvent:
    """One task finished on one host."""

    host: str
    play: str
    task: str
    status: str
    message: str = ""
    ignored: bool = False
    duration_s: float = 0.0


@dataclass
class HostStats:
    """The PLAY RECAP counters of one host (``ok`` includes changed tasks, as in Ansible)."""

    ok: int = 0
    changed: int = 0
    unreachable: int = 0
    failed: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass
class PlaybookResult:
    """Everything a playbook run produced."""

    stats: dict[str, HostStats] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    registered: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 all ok, 2 some host failed, 4 some host unreachable (as ansible-playbook)."""
        if self.unreachable:
            return EXIT_UNREACHABLE
        return EXIT_FAILED if self.failures else EXIT_OK

    @property
    def ok(self) -> bool:
        """No host failed or was unreachable."""
        return self.exit_code == EXIT_OK


@dataclass(frozen=True)
class _Outcome:
    status: Status
    result: dict[str, Any]
    message: str
    ignored: bool = False


class _Run:
    """The state of one playbook run (touched only from the calling thread)."""

    def __init__(self, playbook: Playbook, inventory: Inventory, extra_vars: Mapping[str, Any],
                 connections: ConnectionCache, on_event: Callable[[TaskEvent], None] | None,
                 pool: ThreadPoolExecutor) -> None:
        self.playbook, self.inventory, self.extra_vars = playbook, inventory, dict(extra_vars)
        self.connections, self.on_event, self.pool = connections, on_event, pool
        self.result = PlaybookResult()
        self.base_dir = playbook.path.parent.resolve()

    def dead(self, name: str) -> bool:
        return name in self.result.failures or name in self.result.unreachable

    def run_play(self, play: Play, allowed: set[str] | None) -> bool:
        """Run one play; return False when the playbook must stop."""
        hosts = [h for h in self.inventory.select(play.hosts)
                 if (allowed is None or h.name in allowed) and not self.dead(h.name)]
        log.info("play %r hosts=%s", play.name, ",".join(h.name for h in hosts) or "-")
        for host in hosts:
            self.result.stats.setdefault(host.name, HostStats())
            self.result.registered.setdefault(host.name, {})
        for task in play.tasks:
            active = [h for h in hosts if not self.dead(h.name)]
            if not active:
                break
            errors = self.run_task(play, task, active)
            if errors and play.any_errors_fatal:
                return False
        return not hosts or any(not self.dead(h.name) for h in hosts)

    def run_task(self, play: Play, task: Task, hosts: list[Host]) -> int:
        """Run ``task`` on ``hosts`` in parallel; return how many hosts failed or went away."""
        play_hosts = [h.name for h in hosts]
        # NOTE: a snapshot, so the hosts of this task see the results of the previous ones only
        registered = {name: dict(values) for name, values in self.result.registered.items()}
        futures: dict[Future[_Outcome], tuple[Host, float]] = {}
        for host in hosts:
            variables = self.host_vars(host, play, play_hosts, registered)
            future = self.pool.submit(self.run_on_host, task, host, variables)
            futures[future] = (host, time.monotonic())
        errors = 0
        for future in as_completed(futures):
            host, started = futures[future]
            outcome = future.result()
            errors += self.record(play, task, host, outcome, time.monotonic() - started)
        return errors

    def record(self, play: Play, task: Task, host: Host, outcome: _Outcome, seconds: float) -> int:
        stats = self.result.stats[host.name]
        if task.register and outcome.status is not Status.UNREACHABLE:
            self.result.registered[host.name][task.register] = outcome.result
        error = 0
        if outcome.status is Status.UNREACHABLE:
            stats.unreachable += 1
            self.result.unreachable[host.name] = outcome.message
            error = 1
        elif outcome.status is Status.SKIPPED:
            stats.skipped += 1
        elif outcome.status is Status.FAILED and not outcome.ignored:
            stats.failed += 1
            self.result.failures[host.name] = (f"play {play.name!r}, task {task.name!r}: "
                                              f"{outcome.message}")
            error = 1
        else:
            stats.ok += 1
            stats.ignored += outcome.ignored
            stats.changed += bool(outcome.result.get("changed"))
        if self.on_event is not None:
            self.on_event(TaskEvent(host.name, play.name, task.name, outcome.status.value,
                                    outcome.message, outcome.ignored, seconds))
        return error

    def host_vars(self, host: Host, play: Play, play_hosts: list[str],
                  registered: Mapping[str, Mapping[str, Any]]) -> LazyVars:
        """Inventory < magic < play vars < registered < extra vars (Ansible's precedence)."""
        return LazyVars(host.vars, self.magic(host, play_hosts, registered), play.vars,
                        registered.get(host.name, {}), self.extra_vars)

    def magic(self, host: Host, play_hosts: list[str],
              registered: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        return {
            "inventory_hostname": host.name,
            "inventory_hostname_short": host.name.split(".")[0],
            "group_names": [g for g in host.groups if g != "ungrouped"],
            "groups": {name: list(hosts) for name, hosts in self.inventory.groups.items()},
            "hostvars": _HostVars(self.inventory, registered, self.extra_vars),
            "playbook_dir": str(self.base_dir),
            "inventory_file": str(self.inventory.path),
            "ansible_play_hosts": list(play_hosts),
            "play_hosts": list(play_hosts),
        }

    def run_on_host(self, task: Task, host: Host, variables: LazyVars) -> _Outcome:
        """Run ``task`` on one host (in a pool thread); never raises."""
        try:
            return self.outcome(task, self.run_loop(task, host, variables), variables)
        except UnreachableError as exc:
            reason = str(exc).removeprefix(f"{exc.host}: ")
            return _Outcome(Status.UNREACHABLE, {"unreachable": True, "msg": reason}, reason)
        except PlaybookError as exc:
            message = str(exc)
            return _Outcome(Status.FAILED, {"failed": True, "changed": False, "msg": message},
                            message)
        except Exception as exc:  # a bug must fail the host, not hang the run
            log.exception("task %r crashed on %s", task.name, host.name)
            message = f"internal error: {exc!r}"
            return _Outcome(Status.FAILED, {"failed": True, "msg": message}, message)

    def outcome(self, task: Task, result: dict[str, Any], variables: LazyVars) -> _Outcome:
        if result.get("skipped"):
            return _Outcome(Status.SKIPPED, result, "")
        if result.get("failed"):
            ignored = task.ignore_errors
            if isinstance(ignored, str):
                ignored = templar.to_bool(templar.render(ignored, variables))
            return _Outcome(Status.FAILED, result, _failure_message(result), bool(ignored))
        status = Status.CHANGED if result.get("changed") else Status.OK
        return _Outcome(status, result, _summary(result))

    def run_loop(self, task: Task, host: Host, variables: LazyVars) -> dict[str, Any]:
        if task.loop is None:
            return self.run_item(task, host, variables)
        items = templar.template_value(task.loop, variables)
        if not is_sequence(items):
            raise PlaybookError(f"loop must be a list, got {type(items).__name__}: {items!r}")
        results = []
        for item in items:
            result = self.run_item(task, host, variables.with_layer({"item": item}))
            results.append({**result, "item": item})
        failed = any(r.get("failed") for r in results)
        return {
            "results": results, "changed": any(r.get("changed") for r in results),
            "failed": failed, "skipped": bool(results) and all(r.get("skipped") for r in results),
            "msg": "One or more items failed" if failed else "All items completed",
        }

    def run_item(self, task: Task, host: Host, variables: LazyVars) -> dict[str, Any]:
        if task.when and not templar.conditionals(task.when, variables):
            return {"changed": False, "skipped": True,
                    "skip_reason": "Conditional result was False",
                    "false_condition": next(str(c) for c in task.when
                                            if not templar.conditional(c, variables))}
        args = render_args(task.module, task.args, variables)
        ctx = ModuleContext(
            host=host.name, transport=lambda: self.connections.get(host), timeout=task.timeout,
            env=_environment(task, variables), base_dir=self.base_dir, vars=variables,
            python=str(variables.get("ansible_python_interpreter", "python3")),
        )
        result = run_module(task.module, args, ctx)
        result.setdefault("skipped", False)
        return _apply_overrides(task, result, variables)


class _HostVars(Mapping[str, Any]):
    """``hostvars``: every host's inventory vars, registered vars and extra vars."""

    def __init__(self, inventory: Inventory, registered: Mapping[str, Mapping[str, Any]],
                 extra_vars: Mapping[str, Any]) -> None:
        self._inventory, self._registered, self._extra = inventory, registered, extra_vars

    def __getitem__(self, name: str) -> Any:
        host = self._inventory.hosts[name]
        return LazyVars(host.vars, {"inventory_hostname": name},
                        self._registered.get(name, {}), self._extra)

    def __iter__(self) -> Iterator[str]:
        return iter(self._inventory.hosts)

    def __len__(self) -> int:
        return len(self._inventory.hosts)


def _environment(task: Task, variables: LazyVars) -> dict[str, str] | None:
    if task.environment is None:
        return None
    env = templar.template_value(task.environment, variables)
    if not isinstance(env, Mapping):
        raise PlaybookError(f"environment must be a mapping, got {env!r}")
    return {str(key): str(value) for key, value in env.items()}


def _apply_overrides(task: Task, result: dict[str, Any], variables: LazyVars) -> dict[str, Any]:
    if task.changed_when is None and task.failed_when is None:
        return result
    scope = variables.with_layer({task.register: result}) if task.register else variables
    if task.changed_when is not None:
        result["changed"] = templar.conditionals(task.changed_when, scope)
    if task.failed_when is not None:
        result["failed"] = templar.conditionals(task.failed_when, scope)
        if not result["failed"] and result.get("msg") == "non-zero return code":
            result["msg"] = ""
    return result


def _tail(text: str, lines: int = 5) -> str:
    return "\n".join(str(text).strip().splitlines()[-lines:])


def _failure_message(result: Mapping[str, Any]) -> str:
    if "results" in result:
        failed = [r for r in result["results"] if r.get("failed")]
        parts = [f"item {r.get('item')!r}: {_failure_message(r)}" for r in failed[:3]]
        return "; ".join(parts) or str(result.get("msg", ""))
    parts = [str(result.get("msg") or "")]
    if "rc" in result and result.get("rc"):
        parts.append(f"rc={result['rc']}")
    if result.get("stderr"):
        parts.append(_tail(result["stderr"]))
    elif result.get("stdout"):
        parts.append(_tail(result["stdout"]))
    return "\n".join(part for part in parts if part)


def _summary(result: Mapping[str, Any]) -> str:
    if result.get("stdout"):
        return _tail(result["stdout"], 3)
    return str(result.get("msg") or "")


def _allowed(inventory: Inventory, limit: Sequence[str] | None) -> set[str] | None:
    if limit is None:
        return None
    return {host.name for pattern in limit for host in inventory.select(pattern)}


def run_playbook(path: Path | Playbook, inventory: Inventory, *,
                 extra_vars: Mapping[str, Any] | None = None,
                 connections: ConnectionCache | None = None,
                 on_event: Callable[[TaskEvent], None] | None = None,
                 forks: int = 16, limit: Sequence[str] | None = None) -> PlaybookResult:
    """Run a playbook against an inventory.

    Args:
        path: The playbook file (or an already loaded Playbook).
        inventory: The validated inventory.
        extra_vars: Variables that override all others (``-e``).
        connections: Open transports to reuse (and leave open); a private cache is made and
            closed otherwise.
        on_event: Called in the calling thread after each task finished on each host.
        forks: How many hosts run a task at the same time.
        limit: Host patterns; only matching hosts run.

    Returns:
        Per-host stats, unreachable reasons, failures, registered vars; ``exit_code``.

    Raises:
        PlaybookError: The playbook is invalid (nothing has run then).
        InventoryError: A play's host pattern or ``limit`` matches nothing known.
    """
    started = time.monotonic()
    playbook = path if isinstance(path, Playbook) else load_playbook(path)
    for play in playbook.plays:
        inventory.select(play.hosts)  # validate every pattern before touching a host
    allowed = _allowed(inventory, limit)
    own = connections is None
    cache = connections or ConnectionCache()
    pool = ThreadPoolExecutor(max_workers=max(1, forks), thread_name_prefix="play")
    run = _Run(playbook, inventory, extra_vars or {}, cache, on_event, pool)
    try:
        for play in playbook.plays:
            if not run.run_play(play, allowed):
                log.info("no hosts left, stopping the playbook after play %r", play.name)
                break
    except BaseException:
        # NOTE: Ctrl-C: closing the transports ends the commands still running in the pool, so
        # nothing waits for their timeouts; the cache reconnects on next use.
        cache.close_all()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if own:
            cache.close_all()
    pool.shutdown()
    run.result.duration_s = time.monotonic() - started
    return run.result
