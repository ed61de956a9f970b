"""Workflow specs in torc's format: load, validate, expand parameters, resolve dependencies.

The pipeline is ``load_spec`` (read YAML/JSON/JSON5) -> ``parse_spec`` (validate fields into
frozen dataclasses, like serde ``deny_unknown_fields``) -> ``expand`` (torc's parameter expansion,
dependency resolution and topological levels) -> :class:`WorkflowPlan`, which ``submit.py`` sends
to a server. Everything here is pure except reading the spec file; every problem is a
:class:`~torc_stress.errors.SpecError` naming the job and the field.
Parameter values, their expansion and substitution live in :mod:`torc_stress.parameters`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import json5
import yaml

from torc_stress.errors import SpecError
from torc_stress.parameters import (
    ParamValue,
    display_value,
    expand_parameters,
    parse_parameter_value,
    substitute,
)
from torc_stress.quantities import (
    duration_to_seconds,
    is_duration,
    is_memory_size,
    memory_to_bytes,
)

# NOTE: parameter and quantity names stay importable from here (tests and callers use them).
__all__ = [
    "JobSpec",
    "ParamValue",
    "PlannedJob",
    "ResourceRequirementsSpec",
    "WorkflowPlan",
    "WorkflowSpec",
    "display_value",
    "duration_to_seconds",
    "expand",
    "load_spec",
    "memory_to_bytes",
    "parse_parameter_value",
    "parse_spec",
    "substitute",
]

logger = logging.getLogger(__name__)


_WORKFLOW_OPTIONS: dict[str, type] = {
    "use_pending_failed": bool,
    "compute_node_wait_for_new_jobs_seconds": int,
    "compute_node_expiration_buffer_seconds": int,
    "compute_node_ignore_workflow_completion": bool,
    "compute_node_wait_for_healthy_database_minutes": int,
    "compute_node_min_time_for_new_jobs_seconds": int,
    "jobs_sort_method": str,
}
_SORT_METHODS = ("gpus_runtime_memory", "gpus_memory_runtime", "none")
_WORKFLOW_FIELDS = frozenset(
    {"name", "description", "user", "jobs", "resource_requirements", "parameters"}
    | set(_WORKFLOW_OPTIONS)
)
_WORKFLOW_UNSUPPORTED = frozenset(
    {"files", "user_data", "failure_handlers", "slurm_schedulers", "slurm_defaults",
     "resource_monitor", "actions"}
)
_JOB_FIELDS = frozenset(
    {"name", "command", "invocation_script", "supports_termination",
     "cancel_on_blocking_job_failure", "resource_requirements", "depends_on",
     "depends_on_regexes", "parameters", "parameter_mode", "use_parameters"}
)
_JOB_UNSUPPORTED = frozenset(
    {"failure_handler", "scheduler", "input_files", "output_files", "input_user_data",
     "output_user_data", "input_file_regexes", "output_file_regexes",
     "input_user_data_regexes", "output_user_data_regexes"}
)
_RR_FIELDS = frozenset({"name", "num_cpus", "num_gpus", "num_nodes", "memory", "runtime"})




# --------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class ResourceRequirementsSpec:
    """A named set of resource requirements (torc's ``ResourceRequirementsSpec``)."""

    name: str
    num_cpus: int
    memory: str
    num_gpus: int = 0
    num_nodes: int = 1
    runtime: str = "PT1H"

    @property
    def memory_bytes(self) -> int:
        """Returns the memory in bytes (``k``/``m``/``g``/``t`` are powers of 1024)."""
        return memory_to_bytes(self.memory)

    @property
    def runtime_seconds(self) -> float:
        """Returns the runtime in seconds."""
        return duration_to_seconds(self.runtime)


@dataclass(frozen=True)
class JobSpec:
    """One ``jobs`` entry as written, before parameter expansion."""

    name: str
    command: str
    invocation_script: str | None = None
    supports_termination: bool = False
    cancel_on_blocking_job_failure: bool | None = None
    resource_requirements: str | None = None
    depends_on: tuple[str, ...] = ()
    depends_on_regexes: tuple[str, ...] = ()
    parameters: Mapping[str, str] | None = None
    parameter_mode: str | None = None
    use_parameters: tuple[str, ...] | None = None


@dataclass(frozen=True)
class WorkflowSpec:
    """A validated workflow spec (torc's ``WorkflowSpec``), not yet expanded."""

    name: str
    jobs: tuple[JobSpec, ...]
    description: str | None = None
    user: str | None = None
    resource_requirements: tuple[ResourceRequirementsSpec, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<spec>"


@dataclass(frozen=True)
class PlannedJob:
    """One job after expansion, with its dependencies resolved to job names."""

    name: str
    command: str
    invocation_script: str | None
    resource_requirements: str | None
    depends_on: tuple[str, ...]
    cancel_on_blocking_job_failure: bool | None
    supports_termination: bool


@dataclass(frozen=True)
class WorkflowPlan:
    """Everything needed to create the workflow on a server, in creation order.

    ``levels`` lists job names by topological level (level 0 has no dependencies); a job's
    dependencies are all in earlier levels. ``options`` holds workflow-level settings
    (``compute_node_*``, ``jobs_sort_method``, ``use_pending_failed``) that were given.
    """

    name: str
    description: str | None
    user: str | None
    resource_requirements: list[ResourceRequirementsSpec]
    jobs: list[PlannedJob]
    levels: list[list[str]]
    edges: int
    options: Mapping[str, Any] = field(default_factory=dict)

    def jobs_by_level(self) -> list[list[PlannedJob]]:
        """Returns the planned jobs grouped like ``levels``."""
        by_name = {job.name: job for job in self.jobs}
        return [[by_name[name] for name in level] for level in self.levels]


# --------------------------------------------------------------------------------------------
# Loading


def load_spec(path: Path) -> WorkflowSpec:
    """Reads and validates a workflow spec file.

    Args:
        path: a ``.yaml``/``.yml``, ``.json`` or ``.json5`` file; any other extension is tried as
            YAML, then JSON, then JSON5 (as torc does).

    Returns:
        The validated, unexpanded spec.

    Raises:
        SpecError: the file cannot be read or parsed, or the spec is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read workflow spec {path}: {exc}") from exc
    suffix = path.suffix.lower()
    if suffix == ".kdl":
        raise SpecError(f"{path}: KDL specs are not supported by torc-stress; use YAML or JSON")
    parsers = _PARSERS_BY_SUFFIX.get(suffix, list(_PARSERS))
    errors = []
    for kind in parsers:
        try:
            data = _PARSERS[kind](text)
        except Exception as exc:  # noqa: BLE001 - each parser has its own exception types
            errors.append(f"{kind}: {' '.join(str(exc).split())}")  # one line
            continue
        if not isinstance(data, Mapping):
            errors.append(f"{kind}: the document is a {type(data).__name__}, not a mapping")
            continue
        return parse_spec(data, str(path))
    raise SpecError(f"cannot parse workflow spec {path}: " + "; ".join(errors))


def _load_yaml(text: str) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader


_PARSERS: dict[str, Callable[[str], Any]] = {
    "yaml": _load_yaml, "json": json.loads, "json5": json5.loads,
}
_PARSERS_BY_SUFFIX = {".yaml": ["yaml"], ".yml": ["yaml"], ".json": ["json"], ".json5": ["json5"]}


# --------------------------------------------------------------------------------------------
# Validation (parse_spec)


def parse_spec(data: Mapping[str, Any], source: str = "<spec>") -> WorkflowSpec:
    """Validates a spec mapping (as loaded from YAML/JSON) into a :class:`WorkflowSpec`.

    Args:
        data: the top-level mapping.
        source: where it came from (a path), kept on the result.

    Returns:
        The validated, unexpanded spec.

    Raises:
        SpecError: an unknown or unsupported field, a missing required field, or a wrong type.
    """
    if not isinstance(data, Mapping):
        raise SpecError(f"a workflow spec must be a mapping, not {type(data).__name__}")
    _check_fields(data, _WORKFLOW_FIELDS, _WORKFLOW_UNSUPPORTED, "workflow", None)
    reader = _Reader(data, "workflow", None)
    jobs_data = reader.required("jobs", list)
    rrs_data = reader.optional("resource_requirements", list) or []
    rrs = tuple(_parse_rr(item, index) for index, item in enumerate(rrs_data))
    _check_unique_rr_names(rrs)
    return WorkflowSpec(
        name=reader.required("name", str),
        description=reader.optional("description", str),
        user=reader.optional("user", str),
        jobs=tuple(_parse_job(item, index) for index, item in enumerate(jobs_data)),
        resource_requirements=rrs,
        parameters=reader.str_map("parameters") or {},
        options=_parse_options(reader),
        source=source,
    )


def _check_fields(
    data: Mapping[str, Any], allowed: frozenset[str], unsupported: frozenset[str], where: str,
    job: str | None,
) -> None:
    for key, value in data.items():
        if key in unsupported:
            if value in (None, [], {}, ""):
                continue  # present but empty: nothing would be ignored
            raise SpecError(
                f"{where} field is accepted by torc but not supported by torc-stress; remove it",
                job=job, field=str(key),
            )
        if key not in allowed:
            raise SpecError(
                f"unknown {where} field; allowed fields are {', '.join(sorted(allowed))}",
                job=job, field=str(key),
            )


class _Reader:
    """Typed access to one mapping of a spec, with errors that name the job and field."""

    def __init__(self, data: Mapping[str, Any], where: str, job: str | None) -> None:
        self.data = data
        self.where = where
        self.job = job

    def fail(self, key: str, message: str) -> SpecError:
        return SpecError(f"{self.where}: {message}", job=self.job, field=key)

    def required(self, key: str, kind: type) -> Any:
        if self.data.get(key) is None:
            raise self.fail(key, "this required field is missing")
        return self.optional(key, kind)

    def optional(self, key: str, kind: type, default: Any = None) -> Any:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(
                key, f"expected {_TYPE_NAMES[kind]}, got {type(value).__name__} {value!r}"
            )
        return value

    def integer(self, key: str, default: int | None, minimum: int) -> int:
        value = self.required(key, int) if default is None else self.optional(key, int, default)
        if value < minimum:
            raise self.fail(key, f"must be at least {minimum}, got {value}")
        return int(value)

    def str_list(self, key: str) -> tuple[str, ...] | None:
        items = self.optional(key, list)
        if items is None:
            return None
        for item in items:
            if not isinstance(item, str):
                raise self.fail(key, f"every item must be a string, got {item!r}")
        return tuple(items)

    def str_map(self, key: str) -> dict[str, str] | None:
        mapping = self.optional(key, Mapping)
        if mapping is None:
            return None
        for name, value in mapping.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise self.fail(
                    key, f"parameter {name!r} must map to a quoted string, got {value!r}"
                    " (write e.g. i: \"1:10\")",
                )
        return dict(mapping)


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list",
               Mapping: "a mapping"}


def _parse_options(reader: _Reader) -> dict[str, Any]:
    options = {}
    for key, kind in _WORKFLOW_OPTIONS.items():
        value = reader.optional(key, kind)
        if value is not None:
            options[key] = value
    method = options.get("jobs_sort_method")
    if method is not None and method not in _SORT_METHODS:
        raise reader.fail("jobs_sort_method", f"must be one of {', '.join(_SORT_METHODS)}")
    return options


def _parse_job(data: Any, index: int) -> JobSpec:
    label = f"jobs[{index}]"
    if not isinstance(data, Mapping):
        raise SpecError(f"a job must be a mapping, got {type(data).__name__}", job=label)
    name = data.get("name")
    job = name if isinstance(name, str) and name else label
    _check_fields(data, _JOB_FIELDS, _JOB_UNSUPPORTED, "job", job)
    reader = _Reader(data, "job", job)
    return JobSpec(
        name=reader.required("name", str),
        command=reader.required("command", str),
        invocation_script=reader.optional("invocation_script", str),
        supports_termination=reader.optional("supports_termination", bool, False),
        cancel_on_blocking_job_failure=reader.optional("cancel_on_blocking_job_failure", bool),
        resource_requirements=reader.optional("resource_requirements", str),
        depends_on=reader.str_list("depends_on") or (),
        depends_on_regexes=reader.str_list("depends_on_regexes") or (),
        parameters=reader.str_map("parameters"),
        parameter_mode=reader.optional("parameter_mode", str),
        use_parameters=reader.str_list("use_parameters"),
    )


def _parse_rr(data: Any, index: int) -> ResourceRequirementsSpec:
    label = f"resource_requirements[{index}]"
    if not isinstance(data, Mapping):
        raise SpecError(f"{label} must be a mapping, got {type(data).__name__}")
    name = data.get("name")
    where = f"resource requirements {name!r}" if isinstance(name, str) else label
    _check_fields(data, _RR_FIELDS, frozenset(), where, None)
    reader = _Reader(data, where, None)
    rr = ResourceRequirementsSpec(
        name=reader.required("name", str),
        num_cpus=reader.integer("num_cpus", None, 1),
        memory=reader.required("memory", str),
        num_gpus=reader.integer("num_gpus", 0, 0),
        num_nodes=reader.integer("num_nodes", 1, 1),
        runtime=reader.optional("runtime", str, "PT1H"),
    )
    if not is_memory_size(rr.memory):
        raise reader.fail("memory", f"{rr.memory!r} is not a memory size like '100m' or '1g'")
    if not is_duration(rr.runtime):
        raise reader.fail("runtime", f"{rr.runtime!r} is not an ISO-8601 duration like 'PT1M'")
    return rr


def _check_unique_rr_names(rrs: Sequence[ResourceRequirementsSpec]) -> None:
    seen: set[str] = set()
    for rr in rrs:
        if rr.name in seen:
            raise SpecError(
                f"resource requirements {rr.name!r} are defined twice; rename one",
                field="resource_requirements",
            )
        seen.add(rr.name)


# --------------------------------------------------------------------------------------------
# Expansion


@dataclass(frozen=True)
class _ExpandedJob:
    job: PlannedJob
    template: str
    depends_on: tuple[str, ...]
    depends_on_regexes: tuple[str, ...]


def expand(spec: WorkflowSpec) -> WorkflowPlan:
    """Expands parameters, resolves dependencies and sorts the jobs into levels.

    Args:
        spec: a spec from :func:`load_spec` or :func:`parse_spec`.

    Returns:
        The plan; jobs keep spec order (product order within one entry).

    Raises:
        SpecError: bad parameter values, zip lengths that differ, duplicate job names, an
            unknown resource requirements name or dependency, a regex that does not compile or
            matches nothing, or a dependency cycle.
    """
    expanded = [item for job in spec.jobs for item in _expand_job(job, spec.parameters)]
    _check_unique_names(expanded)
    _check_resource_names(expanded, spec.resource_requirements)
    jobs = _resolve_dependencies(expanded)
    levels = _levels(jobs, expanded)
    return WorkflowPlan(
        name=spec.name, description=spec.description, user=spec.user,
        resource_requirements=list(spec.resource_requirements), jobs=jobs, levels=levels,
        edges=sum(len(job.depends_on) for job in jobs), options=dict(spec.options),
    )


def _job_parameters(job: JobSpec, workflow: Mapping[str, str]) -> list[tuple[str, str]]:
    if job.parameters:
        return list(job.parameters.items())
    if not job.use_parameters:
        return []
    missing = [name for name in job.use_parameters if name not in workflow]
    if missing:  # torc ignores these silently; say so at least in the log
        logger.warning("use_parameters names no workflow parameter job=%s names=%s",
                       job.name, ",".join(missing))
    return [(name, workflow[name]) for name in job.use_parameters if name in workflow]


def _expand_job(job: JobSpec, workflow: Mapping[str, str]) -> list[_ExpandedJob]:
    params = _job_parameters(job, workflow)
    combos = expand_parameters(params, job.parameter_mode, job.name) if params else [[]]
    return [_instantiate(job, values) for values in combos]


def _instantiate(job: JobSpec, values: Sequence[tuple[str, ParamValue]]) -> _ExpandedJob:
    def sub(text: str) -> str:
        return substitute(text, values) if values else text

    planned = PlannedJob(
        name=sub(job.name), command=sub(job.command),
        invocation_script=None if job.invocation_script is None else sub(job.invocation_script),
        resource_requirements=(
            None if job.resource_requirements is None else sub(job.resource_requirements)
        ),
        depends_on=(), cancel_on_blocking_job_failure=job.cancel_on_blocking_job_failure,
        supports_termination=job.supports_termination,
    )
    return _ExpandedJob(
        planned, job.name, tuple(sub(name) for name in job.depends_on),
        tuple(sub(pattern) for pattern in job.depends_on_regexes),
    )


def _check_unique_names(expanded: Sequence[_ExpandedJob]) -> None:
    templates: dict[str, str] = {}
    for item in expanded:
        name = item.job.name
        if name in templates:
            raise SpecError(
                f"duplicate job name (from entries {templates[name]!r} and {item.template!r}); "
                "job names must be unique after parameter expansion",
                job=name, field="name",
            )
        templates[name] = item.template


def _check_resource_names(
    expanded: Sequence[_ExpandedJob], rrs: Sequence[ResourceRequirementsSpec]
) -> None:
    known = {rr.name for rr in rrs}
    for item in expanded:
        name = item.job.resource_requirements
        if name is not None and name not in known:
            defined = ", ".join(sorted(known)) or "none"
            raise SpecError(
                f"unknown resource requirements {name!r}; defined: {defined}",
                job=item.job.name, field="resource_requirements",
            )


def _resolve_dependencies(expanded: Sequence[_ExpandedJob]) -> list[PlannedJob]:
    names = [item.job.name for item in expanded]
    known = set(names)
    cache: dict[str, tuple[str, ...]] = {}
    jobs = []
    for item in expanded:
        deps = dict.fromkeys(_exact_dependencies(item, known))
        for pattern in item.depends_on_regexes:
            if pattern not in cache:
                cache[pattern] = _regex_matches(item, pattern, names)
            if not cache[pattern]:
                raise SpecError(f"regex {pattern!r} matches no job name", job=item.job.name,
                                field="depends_on_regexes")
            deps.update(dict.fromkeys(cache[pattern]))
        jobs.append(replace(item.job, depends_on=tuple(deps)))
    return jobs


def _exact_dependencies(item: _ExpandedJob, known: set[str]) -> tuple[str, ...]:
    for name in item.depends_on:
        if name not in known:
            raise SpecError(f"unknown dependency {name!r}: no job has that name "
                            "(after parameter expansion)", job=item.job.name, field="depends_on")
    return item.depends_on


def _regex_matches(item: _ExpandedJob, pattern: str, names: Sequence[str]) -> tuple[str, ...]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise SpecError(f"regex {pattern!r} does not compile: {exc}", job=item.job.name,
                        field="depends_on_regexes") from exc
    return tuple(name for name in names if regex.search(name))


def _levels(jobs: Sequence[PlannedJob], expanded: Sequence[_ExpandedJob]) -> list[list[str]]:
    index = {job.name: i for i, job in enumerate(jobs)}
    dependents: list[list[int]] = [[] for _ in jobs]
    waiting = [len(job.depends_on) for job in jobs]
    for i, job in enumerate(jobs):
        for dep in job.depends_on:
            dependents[index[dep]].append(i)
    level = [0] * len(jobs)
    queue = [i for i, count in enumerate(waiting) if count == 0]
    for i in queue:  # the list grows while we walk it (Kahn's algorithm)
        for j in dependents[i]:
            level[j] = max(level[j], level[i] + 1)
            waiting[j] -= 1
            if waiting[j] == 0:
                queue.append(j)
    if len(queue) < len(jobs):
        _raise_cycle(jobs, expanded, {i for i, count in enumerate(waiting) if count}, index)
    levels: list[list[str]] = [[] for _ in range(max(level, default=-1) + 1)]
    for i, job in enumerate(jobs):
        levels[level[i]].append(job.name)
    return levels


def _raise_cycle(
    jobs: Sequence[PlannedJob], expanded: Sequence[_ExpandedJob], stuck: set[int],
    index: Mapping[str, int],
) -> None:
    # Every stuck job waits on another stuck job, so walking "first stuck dependency" loops.
    path: list[int] = []
    current = min(stuck)
    while current not in path:
        path.append(current)
        current = next(index[d] for d in jobs[current].depends_on if index[d] in stuck)
    cycle = [jobs[i].name for i in path[path.index(current):]]
    first = path[path.index(current)]
    field_name = "depends_on" if cycle[(1 % len(cycle))] in expanded[first].depends_on \
        else "depends_on_regexes"
    chain = " -> ".join([*cycle, cycle[0]])
    raise SpecError(
        f"dependency cycle: {chain} (each job depends on the next); remove one of these "
        "dependencies", job=cycle[0], field=field_name,
    )
