"""The settings of one cluster run: defaults, validation, and where they come from.

Precedence, lowest first: :data:`DEFAULTS` (declared to Invoke with ``ns.configure`` under the key
``stress``, so ``INVOKE_STRESS_*`` environment variables work), ``invoke.yaml`` next to
``tasks.py``, ``INVOKE_STRESS_*`` variables, then the task's command-line flags. Every value is
validated when :class:`RunSettings` is built, before any host is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from torc_stress.cluster.faults import FaultSpec, parse_faults
from torc_stress.errors import ConfigError

#: Where the settings live in Invoke's configuration (``c.config.stress``).
CONFIG_KEY = "stress"

#: What to do when a host cannot be reached: stop the run (exit 4), or go on without it.
UNREACHABLE_POLICIES = ("abort", "continue")
LOG_LEVELS = ("debug", "info", "warning", "error")

#: The defaults, in the shape Invoke's config wants (plain types; "" means "not set").
DEFAULTS: dict[str, Any] = {
    "inventory": "inventory/local.yml",
    "workflow": "",
    "stages": 0,
    "jobs_per_stage": 0,
    "workers_per_host": 0,
    "max_parallel_jobs": 4,
    "deadline": 600.0,
    "runs_root": "runs",
    "run_dir": "",
    "report": True,
    "on_unreachable": "abort",
    "forks": 16,
    "server_timeout": 60.0,
    "poll_interval": 1.0,
    "stop_grace": 20.0,
    "log_level": "info",
    "wheelhouse_cache": "runs/.wheelhouse",
    "require_token": True,
    "stall_timeout": 120.0,
    "faults": [],
    "lease": "",
}

#: The project's copy of the seed workflow (5 stages x 1000 jobs).
DEFAULT_WORKFLOW = "workflows/database_contention.yaml"


@dataclass(frozen=True)
class RunSettings:
    """Everything that shapes one ``cluster-run``; validated on construction.

    Relative paths are relative to ``project_root``.

    Attributes:
        project_root: the checkout (where ``tasks.py`` is).
        inventory: the inventory file.
        workflow: the workflow spec; None = the project's copy of the seed workflow, or a
            generated one when ``stages``/``jobs_per_stage`` are given.
        stages: generate a contention workflow with this many stages (0 = do not generate).
        jobs_per_stage: jobs per generated stage (0 = do not generate).
        workers_per_host: worker processes per worker host; 0 = each host's ``torc_workers``.
        max_parallel_jobs: jobs each worker process runs at once.
        deadline_s: seconds the workflow may run before the run stops it.
        runs_root: where run directories are made (``<runs_root>/<run-id>/``).
        run_dir: use exactly this run directory instead (must be empty or absent).
        report: run ``torc-stress report`` on the run directory at the end.
        on_unreachable: ``abort`` (default; exit 4) or ``continue`` without those hosts.
        forks: hosts a playbook works on at once.
        server_timeout_s: seconds to wait for the started server to answer.
        poll_interval_s: seconds between progress polls.
        stop_grace_s: seconds processes get between TERM and KILL.
        log_level: the server's log level.
        wheelhouse_cache: where wheelhouse builds are cached.
        stall_timeout_s: stop the run when no job finished for this long (workers gone or
            stuck) instead of waiting for the deadline; raise it for workflows of long jobs.
        require_token: the server requires an API token, made fresh for each run and handed to
            the hosts in 0600 files (never on a command line, never in the run directory).
        faults: faults to inject during the run (``--fault``; see
            :mod:`torc_stress.cluster.faults`), in the order given.
        lease_s: the server's ``--lease-s`` (seconds a worker's lease lasts; 0 disables
            leases); None = the server's default, and the flag is not passed.
    """

    project_root: Path
    inventory: Path = Path(DEFAULTS["inventory"])
    workflow: Path | None = None
    stages: int = 0
    jobs_per_stage: int = 0
    workers_per_host: int = 0
    max_parallel_jobs: int = 4
    deadline_s: float = 600.0
    runs_root: Path = Path("runs")
    run_dir: Path | None = None
    report: bool = True
    on_unreachable: str = "abort"
    forks: int = 16
    server_timeout_s: float = 60.0
    poll_interval_s: float = 1.0
    stop_grace_s: float = 20.0
    log_level: str = "info"
    wheelhouse_cache: Path = Path("runs/.wheelhouse")
    require_token: bool = True
    stall_timeout_s: float = 120.0
    faults: tuple[FaultSpec, ...] = ()
    lease_s: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        root = Path(self.project_root).resolve()
        object.__setattr__(self, "project_root", root)
        for name in ("inventory", "workflow", "runs_root", "run_dir", "wheelhouse_cache"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _absolute(root, Path(value)))
        self._validate()

    def _validate(self) -> None:
        _check_int("stages", self.stages, minimum=0)
        _check_int("jobs_per_stage", self.jobs_per_stage, minimum=0)
        if bool(self.stages) != bool(self.jobs_per_stage):
            raise ConfigError("--stages and --jobs-per-stage go together: give both or neither")
        if self.stages and self.workflow is not None:
            raise ConfigError("give either --workflow or --stages/--jobs-per-stage, not both")
        _check_int("workers_per_host", self.workers_per_host, minimum=0)
        _check_int("max_parallel_jobs", self.max_parallel_jobs, minimum=1)
        _check_int("forks", self.forks, minimum=1)
        for name in ("deadline_s", "server_timeout_s", "poll_interval_s", "stop_grace_s",
                     "stall_timeout_s"):
            _check_positive(name, getattr(self, name))
        if self.lease_s is not None and (not math.isfinite(self.lease_s) or self.lease_s < 0):
            raise ConfigError(f"setting lease: expected a number of seconds >= 0 (0 disables "
                              f"leases), got {self.lease_s!r}")
        _check_choice("on_unreachable", self.on_unreachable, UNREACHABLE_POLICIES)
        _check_choice("log_level", self.log_level, LOG_LEVELS)
        if not self.inventory.is_file():
            raise ConfigError(f"inventory {self.inventory} does not exist; pass --inventory PATH "
                              f"(the default is {DEFAULTS['inventory']})")
        if self.workflow is not None and not self.workflow.is_file():
            raise ConfigError(f"workflow {self.workflow} does not exist; pass --workflow PATH")
        if self.run_dir is not None and self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise ConfigError(f"run directory {self.run_dir} is not empty; pick a new one or "
                              "leave --run-dir out to get runs/<run-id>/")

    @property
    def generates_workflow(self) -> bool:
        """Whether the workflow is generated from ``stages`` x ``jobs_per_stage``."""
        return self.stages > 0

    @property
    def workflow_path(self) -> Path:
        """The spec file used when not generating: ``workflow`` or the seed copy."""
        return self.workflow or self.project_root / DEFAULT_WORKFLOW

    def to_record(self) -> dict[str, Any]:
        """The settings as plain JSON-able values, for ``run.json`` (holds no secrets)."""
        record: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            record[f.name] = str(value) if isinstance(value, Path) else value
        record["faults"] = [f.spec for f in self.faults]
        record["extra"] = dict(self.extra)
        return record


def settings_from_config(
    config: Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    project_root: Path,
) -> RunSettings:
    """Builds validated settings from Invoke's ``stress`` config plus command-line overrides.

    Args:
        config: the ``stress`` section of Invoke's config (keys as in :data:`DEFAULTS`); may be
            None or partial.
        overrides: values given on the command line; None values mean "not given".
        project_root: the checkout, for relative paths.

    Returns:
        The validated settings.

    Raises:
        ConfigError: an unknown key or an invalid value; the message names it.
    """
    merged = dict(DEFAULTS)
    for source in (config or {}, overrides or {}):
        for key, value in dict(source).items():
            if key not in DEFAULTS:
                known = ", ".join(sorted(DEFAULTS))
                raise ConfigError(f"unknown setting {CONFIG_KEY}.{key}; known settings: {known}")
            if value is not None:
                merged[key] = value
    return RunSettings(
        project_root=project_root,
        inventory=Path(str(merged["inventory"])),
        workflow=Path(str(merged["workflow"])) if merged["workflow"] else None,
        stages=_as_int("stages", merged["stages"]),
        jobs_per_stage=_as_int("jobs_per_stage", merged["jobs_per_stage"]),
        workers_per_host=_as_int("workers_per_host", merged["workers_per_host"]),
        max_parallel_jobs=_as_int("max_parallel_jobs", merged["max_parallel_jobs"]),
        deadline_s=_as_float("deadline", merged["deadline"]),
        runs_root=Path(str(merged["runs_root"])),
        run_dir=Path(str(merged["run_dir"])) if merged["run_dir"] else None,
        report=_as_bool("report", merged["report"]),
        on_unreachable=str(merged["on_unreachable"]),
        forks=_as_int("forks", merged["forks"]),
        server_timeout_s=_as_float("server_timeout", merged["server_timeout"]),
        poll_interval_s=_as_float("poll_interval", merged["poll_interval"]),
        stop_grace_s=_as_float("stop_grace", merged["stop_grace"]),
        log_level=str(merged["log_level"]).lower(),
        wheelhouse_cache=Path(str(merged["wheelhouse_cache"])),
        require_token=_as_bool("require_token", merged["require_token"]),
        stall_timeout_s=_as_float("stall_timeout", merged["stall_timeout"]),
        faults=parse_faults(merged["faults"]),
        lease_s=_as_float("lease", merged["lease"]) if merged["lease"] != "" else None,
    )


def with_changes(settings: RunSettings, **changes: Any) -> RunSettings:
    """Returns a validated copy of ``settings`` with some fields replaced."""
    return replace(settings, **changes)


def _absolute(root: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (root / path)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"setting {name}: expected a whole number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}: expected a whole number, got {value!r}") from None
    if not number.is_integer():
        raise ConfigError(f"setting {name}: expected a whole number, got {value!r}")
    return int(number)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"setting {name}: expected a number of seconds, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}: expected a number of seconds, got {value!r}") from None


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"setting {name}: expected true or false, got {value!r}")


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"setting {name}: expected a whole number >= {minimum}, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or value <= 0:
        raise ConfigError(f"setting {name}: expected a number of seconds > 0, got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"setting {name}: {value!r} is not one of {', '.join(choices)}")
