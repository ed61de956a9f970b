"""Invoke entry points of torc-stress: `invoke --list` shows them, `invoke --help TASK` the flags.

Thin on purpose: every task builds :class:`~torc_stress.cluster.settings.RunSettings` (defaults <
``invoke.yaml`` < ``INVOKE_STRESS_*`` environment variables < flags) and calls
``torc_stress.cluster``; this file only prints. Errors end as ``invoke.Exit(message, code)``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from invoke import Collection, Context, Exit, Task, task
from tabulate import tabulate

from torc_stress.cluster.settings import CONFIG_KEY, DEFAULTS, RunSettings, settings_from_config
from torc_stress.errors import StressError

PROJECT_ROOT = Path(__file__).resolve().parent

INVENTORY_HELP = "inventory file (default: inventory/local.yml, every role on this machine)"
RUN_ID_HELP = "the run the processes and files belong to (runs/<run-id>/)"


# ------------------------------------------------------------------------------------ helpers


def _settings(c: Context, **overrides: Any) -> RunSettings:
    """Settings from Invoke's ``stress`` config plus the flags that were given."""
    config = c.config.get(CONFIG_KEY, {}) if hasattr(c, "config") else {}
    return settings_from_config(dict(config), overrides, project_root=PROJECT_ROOT)


@contextmanager
def _exits() -> Iterator[None]:
    """Turns torc-stress errors and Ctrl-C into ``invoke.Exit`` (a message, never a traceback)."""
    try:
        yield
    except StressError as exc:
        raise Exit(f"error: {exc}", code=exc.exit_code) from None
    except KeyboardInterrupt as exc:  # a RunInterrupted knows its signal (128 + number)
        raise Exit("interrupted", code=getattr(exc, "exit_code", 130)) from None


def _print_event(event: Any) -> None:
    from torc_stress.report.recap import format_event

    print(format_event(event), flush=True)


def _print_recap(name: str, result: Any) -> None:
    from torc_stress.report.recap import format_recap

    print(f"\n{name}", flush=True)
    print(format_recap(result), flush=True)


def format_progress(snap: Any) -> str:
    """One progress line: jobs done, the current stage (or barrier), the rate."""
    depth = snap.current_depth
    where = f"{depth.name}: {depth.done}/{depth.total}" if depth else "all stages done"
    return (f"[{snap.elapsed_s:7.1f}s] done {snap.done}/{snap.total} ({snap.fraction:6.1%})  "
            f"{where}  rate {snap.rate:7.1f}/s (avg {snap.average_rate:.1f}/s)")


def _print_progress(snap: Any) -> None:
    print(format_progress(snap), flush=True)


def format_fault(record: Any, event: str) -> str:
    """One line when a fault is injected, ends or fails."""
    method, spec = record.planned.method, record.planned.spec.spec
    targets = " ".join(str(t) for t in record.targets)
    if event == "injected":
        what = {"sigkill": "SIGKILL", "restart": "SIGKILL server", "link-down": "link down",
                "sigstop": "SIGSTOP"}[method]
        return f"fault {spec}: injected: {what} {targets}"
    if event == "ended":
        how = {"sigkill": "", "restart": " (the restarted server answers)",
               "link-down": f" (link {targets} up)", "sigstop": f" (SIGCONT {targets})"}[method]
        return f"fault {spec}: ended{how}"
    return f"fault {spec}: FAILED: {record.error}"


def _print_fault(record: Any, event: str) -> None:
    print(format_fault(record, event), flush=True)


def format_summary(outcome: Any) -> str:
    """The end-of-run summary: outcome, jobs per status, completed jobs per host, total time."""
    lines = [f"\nrun {outcome.run_id}: {outcome.outcome} (exit {outcome.exit_code}) "
             f"in {outcome.total_s:.1f} s  ->  {outcome.run_dir}"]
    if outcome.message:
        lines.append(f"  {outcome.message}")
    if outcome.counts:
        rows = sorted(outcome.counts.items(), key=lambda kv: -kv[1])
        rows.append(("total", sum(outcome.counts.values())))
        lines.append(tabulate(rows, headers=["status", "jobs"], tablefmt="simple"))
    if outcome.completed_per_host:
        rows = sorted(outcome.completed_per_host.items())
        lines.append(tabulate(rows, headers=["host", "completed jobs"], tablefmt="simple"))
    if outcome.unreachable:
        rows = sorted(outcome.unreachable.items())
        lines.append(tabulate(rows, headers=["UNREACHABLE host", "reason"], tablefmt="simple"))
    phases = [(name, p.get("seconds", "")) for name, p in outcome.phases.items()]
    if phases:
        lines.append(tabulate(phases, headers=["phase", "seconds"], tablefmt="simple"))
    return "\n".join(lines)


def _run_report(run_dir: Path) -> int:
    try:
        from torc_stress.report.command import report_command
    except ImportError:  # the report is its own issue; the run is still complete without it
        print("(torc_stress.report.command is not available: no report)", flush=True)
        return 0
    return report_command(run_dir, sys.stdout)


def _step(c: Context, name: str, inventory: str | None, run_id: str,
          **extra: Any) -> Any:
    from torc_stress.cluster.run import run_step

    settings = _settings(c, inventory=inventory)
    result = run_step(settings, name, run_id=run_id, on_event=_print_event,
                      on_playbook=_print_recap, **extra)
    if result.exit_code:
        raise Exit(f"{name}.yml: exit {result.exit_code}", code=result.exit_code)
    return result


def _new_run_id() -> str:
    from torc_stress.cluster.run import new_run_id

    return new_run_id()


# -------------------------------------------------------------------------------------- tasks


@task(iterable=["fault"], help={
    "inventory": INVENTORY_HELP,
    "workflow": "workflow spec (default: workflows/database_contention.yaml, the seed's 5x1000)",
    "stages": "generate the contention workflow with this many stages (with --jobs-per-stage)",
    "jobs_per_stage": "jobs per generated stage (with --stages)",
    "workers_per_host": "worker processes per worker host (default: each host's torc_workers)",
    "max_parallel_jobs": "jobs each worker process runs at once (default 4)",
    "deadline": "seconds the workflow may run before it is stopped (default 600)",
    "runs_root": "where run directories are made (default: runs/)",
    "run_dir": "use exactly this (new or empty) run directory instead of runs/<run-id>/",
    "report": "run `torc-stress report` on the run directory at the end (--no-report: skip)",
    "on_unreachable": "abort (default, exit 4) or continue without unreachable worker hosts",
    "fault": "inject a fault, KIND[:ARGS]@TRIGGER (repeatable): kill-worker:HOST:N, "
             "restart-server, partition:HOST:SECONDS; TRIGGER stageN (half of its jobs "
             "completed) or SECONDSs (after the workers started)",
})
def cluster_run(c: Context, inventory: str | None = None, workflow: str | None = None,
                stages: int | None = None, jobs_per_stage: int | None = None,
                workers_per_host: int | None = None, max_parallel_jobs: int | None = None,
                deadline: float | None = None, runs_root: str | None = None,
                run_dir: str | None = None, report: bool = True,
                on_unreachable: str | None = None, fault: list[str] | None = None) -> None:
    """Deploy, start the server and workers, run the workflow, watch it, stop, gather, report."""
    from torc_stress.cluster.run import cluster_run as run

    with _exits():
        settings = _settings(
            c, inventory=inventory, workflow=workflow, stages=stages,
            jobs_per_stage=jobs_per_stage, workers_per_host=workers_per_host,
            max_parallel_jobs=max_parallel_jobs, deadline=deadline, runs_root=runs_root,
            run_dir=run_dir, report=None if report else False, on_unreachable=on_unreachable,
            faults=list(fault) if fault else None)
        outcome = run(settings, on_progress=_print_progress, on_event=_print_event,
                      on_playbook=_print_recap, on_fault=_print_fault)
    print(format_summary(outcome), flush=True)
    report_code = 0
    if settings.report and outcome.workflow_id is not None and outcome.gathered:
        print(flush=True)
        report_code = _run_report(outcome.run_dir)
    elif settings.report and outcome.workflow_id is not None:
        print("(a second stop signal skipped the gather: no report)", flush=True)
    if outcome.exit_code:
        raise Exit(f"cluster-run: {outcome.outcome}: {outcome.message}", code=outcome.exit_code)
    if report_code:
        raise Exit(f"cluster-run: the report found failed checks; see {outcome.run_dir}",
                   code=report_code)


@task(help={"inventory": INVENTORY_HELP})
def deploy(c: Context, inventory: str | None = None) -> None:
    """Build the wheelhouse and install torc-stress on every host (a redeploy is a no-op)."""
    with _exits():
        _step(c, "deploy", inventory, run_id=_new_run_id())


@task(help={"inventory": INVENTORY_HELP, "run_id": RUN_ID_HELP + " (default: a new one)"})
def start_server(c: Context, inventory: str | None = None, run_id: str | None = None) -> None:
    """Start the server detached on the server host and print its URL."""
    from torc_stress.cluster.inventory import load_inventory
    from torc_stress.cluster.run import registered_port, server_url

    with _exits():
        run_id = run_id or _new_run_id()
        result = _step(c, "start_server", inventory, run_id=run_id)
        server = load_inventory(_settings(c, inventory=inventory).inventory).server
        url = server_url(server, registered_port(result, server.name))
    print(f"run id: {run_id}\nserver: {url}")


@task(help={"inventory": INVENTORY_HELP, "run_id": RUN_ID_HELP,
            "url": "the server URL start-server printed",
            "workflow_id": "the workflow the workers run",
            "workers_per_host": "worker processes per worker host (default: torc_workers)"})
def start_workers(c: Context, run_id: str, url: str, workflow_id: int,
                  inventory: str | None = None, workers_per_host: int | None = None) -> None:
    """Start the worker processes on every worker host in parallel."""
    with _exits():
        extra: dict[str, Any] = {"server_url": url, "workflow_id": int(workflow_id)}
        if workers_per_host:
            extra["workers_per_host"] = int(workers_per_host)
        _step(c, "start_workers", inventory, run_id=run_id, **extra)


@task(help={"inventory": INVENTORY_HELP, "run_id": RUN_ID_HELP})
def gather(c: Context, run_id: str, inventory: str | None = None) -> None:
    """Bring logs, metrics, job output and a consistent DB copy back into runs/<run-id>/."""
    with _exits():
        _step(c, "gather", inventory, run_id=run_id)


@task(help={"inventory": INVENTORY_HELP, "run_id": RUN_ID_HELP})
def stop(c: Context, run_id: str, inventory: str | None = None) -> None:
    """Stop the run's workers, then its server (TERM, grace period, KILL; only our pids)."""
    with _exits():
        _step(c, "stop", inventory, run_id=run_id)


def _testbed_config(hosts: int | None, subnet: str | None) -> Any:
    from torc_stress.cluster.testbed import TestbedConfig

    kwargs: dict[str, Any] = {"state_dir": PROJECT_ROOT / ".testbed"}
    if hosts:
        kwargs["hosts"] = ("server", *(f"worker{i}" for i in range(1, int(hosts))))
    if subnet:
        kwargs["subnet"] = subnet
    return TestbedConfig(**kwargs)


@task(help={"hosts": "hosts including the server host (default 4: server + 3 workers)",
            "subnet": "bridge subnet (default 198.18.0.0/24, inside 198.18.0.0/15)",
            "workers_per_host": "torc_workers written into inventory/testbed.yml (default 1)"})
def testbed_up(c: Context, hosts: int | None = None, subnet: str | None = None,
               workers_per_host: int = 1) -> None:
    """Build the SSH testbed (root): network namespaces, bridge, sshd per host, testbed.yml."""
    from torc_stress.cluster.testbed import testbed_up as up
    from torc_stress.cluster.testbed import write_testbed_inventory

    with _exits():
        testbed = up(_testbed_config(hosts, subnet))
        path = write_testbed_inventory(testbed, PROJECT_ROOT / "inventory" / "testbed.yml",
                                       workers_per_host=int(workers_per_host))
    print(f"testbed up: {', '.join(testbed.hosts)}; inventory: {path}")


@task(help={"hosts": "hosts the testbed was built with (default 4)",
            "subnet": "subnet the testbed was built with"})
def testbed_down(c: Context, hosts: int | None = None, subnet: str | None = None) -> None:
    """Remove every namespace, link, sshd and file testbed-up made."""
    from torc_stress.cluster.testbed import testbed_down as down

    with _exits():
        down(_testbed_config(hosts, subnet))
    print("testbed down")


# ---------------------------------------------------------------------------------- namespace


def _namespace(*tasks: Task) -> Collection:
    ns = Collection()
    for t in tasks:
        ns.add_task(t)
    # NOTE: declaring every setting here is what makes INVOKE_STRESS_<NAME> variables work.
    ns.configure({CONFIG_KEY: dict(DEFAULTS)})
    return ns


ns = _namespace(cluster_run, deploy, start_server, start_workers, gather, stop, testbed_up,
                testbed_down)

logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

