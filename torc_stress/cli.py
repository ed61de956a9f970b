"""The ``torc-stress`` console script: argparse front end of server, workflows, jobs and report.

Only this module and ``torc_stress/report/`` print. Errors become one line on stderr
(``torc-stress: error: ...``) and the error's exit code; never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson

from torc_stress.client import DEFAULT_URL, TorcClient
from torc_stress.errors import ConfigError, StressError
from torc_stress.statuses import JobStatus

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace, TextIO], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``torc-stress`` command line.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args, sys.stdout)
    except StressError as exc:
        _error_line(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _error_line("interrupted")
        return 130
    except BrokenPipeError:
        return 141


def _error_line(message: str) -> None:
    flat = " | ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"torc-stress: error: {flat}", file=sys.stderr)


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="torc-stress",
        description="Stress-test a torc-compatible workflow server the way a real cluster does.")
    parser.add_argument("--url", default=os.environ.get("TORC_API_URL", DEFAULT_URL),
                        help="server API URL (default: $TORC_API_URL, else %(default)s)")
    parser.add_argument("-f", "--format", choices=("table", "json"), default="table",
                        help="output format (json: exactly one JSON document on stdout)")
    parser.add_argument("--token-file", type=Path,
                        default=os.environ.get("TORC_TOKEN_FILE") or None,
                        help="file holding the API token (default: $TORC_TOKEN_FILE)")
    groups = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_server(groups)
    _add_workflows(groups)
    _add_jobs(groups)
    report = _command(groups, "report", "render the report of a run directory", _report)
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    return parser


def _group(groups: Any, name: str, help_text: str) -> Any:
    """Adds a command group (``server``, ``workflows``, ``jobs``); returns its subparsers."""
    group = groups.add_parser(name, help=help_text)
    return group.add_subparsers(title=f"{name.rstrip('s')} commands", metavar="COMMAND")


def _command(commands: Any, name: str, help_text: str, handler: Handler, *,
             workflow_id: bool = False) -> argparse.ArgumentParser:
    """Adds one subcommand that runs ``handler``, with a workflow ``ID`` argument if asked."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
    if workflow_id:
        parser.add_argument("workflow_id", type=int, metavar="ID")
    parser.set_defaults(handler=handler)
    return parser


def _add_server(groups: Any) -> None:
    commands = _group(groups, "server", "run or back up the server")
    run = _command(commands, "run", "run the torc-compatible server", _server_run)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    run.add_argument("--database", type=Path, required=True, help="SQLite database file")
    run.add_argument("--log-level", default="info")
    run.add_argument("--log-file", type=Path)
    run.add_argument("--metrics-file", type=Path)
    run.add_argument("--unblock-delay", type=float, default=0.0)
    run.add_argument("--lock-error-after", type=float, default=45.0)
    run.add_argument("--token-file", dest="server_token_file", type=Path)
    run.add_argument("--lease-s", type=float, default=5.0,
                     help="seconds a heartbeating compute node may go silent before its jobs "
                     "go back to ready (0: no leases; default 5)")
    from torc_stress.server.limits import add_limit_arguments

    add_limit_arguments(run)
    backup = _command(commands, "backup", "copy a live database consistently", _server_backup)
    backup.add_argument("src", type=Path, metavar="SRC")
    backup.add_argument("dest", type=Path, metavar="DEST")


def _add_workflows(groups: Any) -> None:
    commands = _group(groups, "workflows", "create, list, run and cancel workflows")
    create = _command(commands, "create", "create a workflow from a spec file", _workflows_create)
    create.add_argument("file", type=Path, metavar="FILE")
    create.add_argument("--user", default=_default_user())
    _command(commands, "list", "list workflows", _workflows_list)
    _command(commands, "status", "job counts per status", _workflows_status, workflow_id=True)
    _command(commands, "cancel", "cancel a workflow", _workflows_cancel, workflow_id=True)
    run = _command(commands, "run", "run the workflow's jobs on this host (a worker)",
                   _workflows_run, workflow_id=True)
    run.add_argument("--max-parallel-jobs", type=int, default=os.cpu_count() or 1)
    run.add_argument("--output-dir", type=Path, default=Path("torc_output"))
    run.add_argument("--node-name", default=socket.gethostname())
    run.add_argument("--batch-completions", action="store_true",
                     help="report completions with batch_complete_jobs")
    run.add_argument("--log-file", type=Path)
    run.add_argument("--log-level", default="info")


def _add_jobs(groups: Any) -> None:
    commands = _group(groups, "jobs", "inspect jobs")
    listing = _command(commands, "list", "list a workflow's jobs", _jobs_list, workflow_id=True)
    listing.add_argument("--status", choices=[s.wire for s in JobStatus])


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# ---------------------------------------------------------------------------- helpers


def _client(args: argparse.Namespace) -> TorcClient:
    token = None
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {args.token_file}: "
                              f"{exc.strerror}") from None
    return TorcClient(args.url, token=token)


def _quiet_logging(level: str = "warning", file: Path | None = None) -> None:
    from torc_stress.logs import configure_logging

    try:
        configure_logging(level, file)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _emit_json(stream: TextIO, doc: Any) -> None:
    stream.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def _emit_table(stream: TextIO, rows: list[list[Any]], headers: list[str]) -> None:
    # NOTE: imported here: every worker process starts through this module and never prints a
    # table, and tabulate's import is most of the CLI's start-up CPU.
    from tabulate import tabulate

    stream.write(tabulate(rows, headers=headers) + "\n")


# ---------------------------------------------------------------------------- handlers


def _server_run(args: argparse.Namespace, stream: TextIO) -> int:
    from torc_stress.server.limits import limit_settings
    from torc_stress.server.main import ServerSettings, serve

    settings = ServerSettings(
        host=args.host, port=args.port, database=args.database, log_level=args.log_level,
        log_file=args.log_file, metrics_file=args.metrics_file, unblock_delay=args.unblock_delay,
        lock_error_after=args.lock_error_after, token_file=args.server_token_file,
        lease_s=args.lease_s, **limit_settings(args))
    return serve(settings)


def _server_backup(args: argparse.Namespace, stream: TextIO) -> int:
    from torc_stress.server.backup import backup_database

    _quiet_logging()
    backup_database(args.src, args.dest)
    if args.format == "json":
        _emit_json(stream, {"source": str(args.src), "destination": str(args.dest)})
    else:
        stream.write(f"Backed up {args.src} to {args.dest}\n")
    return 0


def _workflows_create(args: argparse.Namespace, stream: TextIO) -> int:
    from torc_stress.spec import expand, load_spec
    from torc_stress.submit import submit_plan

    _quiet_logging()
    plan = expand(load_spec(args.file))
    with _client(args) as client:
        workflow_id = submit_plan(client, plan, user=args.user)
    if args.format == "json":
        _emit_json(stream, {"id": workflow_id, "name": plan.name, "jobs": len(plan.jobs)})
    else:
        stream.write(f"{workflow_id}\n")
    return 0


def _workflows_list(args: argparse.Namespace, stream: TextIO) -> int:
    _quiet_logging()
    with _client(args) as client:
        workflows = client.list_workflows()
    if args.format == "json":
        _emit_json(stream, {"workflows": workflows})
    else:
        rows = [[w.get("id"), w.get("name"), w.get("user"), w.get("timestamp", "")]
                for w in workflows]
        _emit_table(stream, rows, ["id", "name", "user", "created"])
    return 0


def status_counts(jobs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Counts jobs per wire status, every status present (zero if none).

    Args:
        jobs: job models with a ``status`` field.

    Returns:
        ``{status: count}`` in torc's status order.
    """
    counts = {status.wire: 0 for status in JobStatus}
    for job in jobs:
        counts[str(job.get("status"))] = counts.get(str(job.get("status")), 0) + 1
    return counts


def _workflows_status(args: argparse.Namespace, stream: TextIO) -> int:
    _quiet_logging()
    with _client(args) as client:
        workflow = client.get_workflow(args.workflow_id)
        counts = status_counts(client.list_jobs(args.workflow_id))
        state = client.is_complete(args.workflow_id)
    doc = {"id": args.workflow_id, "name": workflow.get("name"),
           "total": sum(counts.values()), "counts": counts,
           "is_complete": bool(state.get("is_complete")),
           "is_canceled": bool(state.get("is_canceled"))}
    if args.format == "json":
        _emit_json(stream, doc)
        return 0
    stream.write(f"Workflow {args.workflow_id} ({doc['name']}): {doc['total']} jobs, "
                 f"complete={doc['is_complete']}, canceled={doc['is_canceled']}\n")
    _emit_table(stream, [[k, v] for k, v in counts.items() if v], ["status", "jobs"])
    return 0


def _workflows_cancel(args: argparse.Namespace, stream: TextIO) -> int:
    _quiet_logging()
    with _client(args) as client:
        client.cancel_workflow(args.workflow_id)
    if args.format == "json":
        _emit_json(stream, {"id": args.workflow_id, "status": "canceled"})
    else:
        stream.write(f"Canceled workflow {args.workflow_id}\n")
    return 0


def _workflows_run(args: argparse.Namespace, stream: TextIO) -> int:
    from torc_stress.worker import Worker

    if args.max_parallel_jobs < 1:
        raise ConfigError("--max-parallel-jobs must be at least 1")
    _quiet_logging(args.log_level, args.log_file)
    with _client(args) as client:
        worker = Worker(client, args.workflow_id, max_parallel_jobs=args.max_parallel_jobs,
                        output_dir=args.output_dir, node_name=args.node_name,
                        batch_completions=args.batch_completions)
        code = worker.run()
    if args.format == "json":
        doc = worker.metrics_document()
        _emit_json(stream, {"id": args.workflow_id, "exit_code": code,
                            "jobs_run": doc["jobs_run"], "jobs_failed": doc["jobs_failed"]})
    return code


def _jobs_list(args: argparse.Namespace, stream: TextIO) -> int:
    _quiet_logging()
    with _client(args) as client:
        jobs = client.list_jobs(args.workflow_id, status=args.status)
    if args.format == "json":
        _emit_json(stream, {"jobs": jobs})
    else:
        rows = [[j.get("id"), j.get("name"), j.get("status"), j.get("command")] for j in jobs]
        _emit_table(stream, rows, ["id", "name", "status", "command"])
    return 0


def _report(args: argparse.Namespace, stream: TextIO) -> int:
    from torc_stress.report import report_command

    _quiet_logging()
    return report_command(args.run_dir, stream)


if __name__ == "__main__":
    sys.exit(main())
