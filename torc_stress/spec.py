"""Workflow specs in torc's format: load, validate, expand parameters, resolve dependencies.

The pipeline is ``load_spec`` (read YAML/JSON/JSON5) -> ``parse_spec`` (validate fields into
frozen dataclasses, like serde ``deny_unknown_fields``) -> ``expand`` (torc's parameter expansion,
dependency resolution and topological levels) -> :class:`WorkflowPlan`, which ``submit.py`` sends
to a server. Everything here is pure except reading the spec file; every problem is a
:class:`~torc_stress.errors.SpecError` naming the job and the field.

Parameter expansion copies torc's client (``src/client/parameter_expansion.rs``) including its
quirks: inclusive range ends, float ranges with a 1e-10 end epsilon, Rust float display without a
trailing ``.0``, and ``{p:fmt}`` suppressing a plain ``{p}`` in the same string. One deliberate
difference: torc iterates parameters in ``HashMap`` order (random per process); we use spec order,
last parameter varying fastest, so job order is deterministic.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import json5
import yaml

from torc_stress.errors import SpecError

logger = logging.getLogger(__name__)

ParamValue = int | float | str

#: Upper bound on the values of one parameter and the jobs of one spec entry (a typo guard).
MAX_EXPANDED = 1_000_000

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

_MEMORY_RE = re.compile(r"([0-9]+)([kmgtKMGT]?)\Z")
_DURATION_RE = re.compile(
    r"P(?:([0-9]+)D)?(?:T(?=[0-9.])(?:([0-9]+)H)?(?:([0-9]+)M)?(?:([0-9]+(?:\.[0-9]+)?)S)?)?\Z"
)
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(
    r"[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\Z", re.IGNORECASE
)
_INT_FORMAT_RE = re.compile(r"0([0-9]+)d\Z")
_FLOAT_FORMAT_RE = re.compile(r"\.([0-9]+)f\Z")


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
    if not _MEMORY_RE.match(rr.memory):
        raise reader.fail("memory", f"{rr.memory!r} is not a memory size like '100m' or '1g'")
    if not _valid_duration(rr.runtime):
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


def memory_to_bytes(memory: str) -> int:
    """Converts torc's memory strings (``"100m"``, ``"1g"``, ``"512"``) to bytes.

    Args:
        memory: digits with an optional unit ``k``, ``m``, ``g`` or ``t`` (powers of 1024).

    Returns:
        The size in bytes.

    Raises:
        SpecError: the string is not a memory size.
    """
    match = _MEMORY_RE.match(memory.strip())
    if not match:
        raise SpecError(f"{memory!r} is not a memory size like '100m' or '1g'", field="memory")
    return int(match[1]) * 1024 ** " kmgt".index(match[2].lower() or " ")


def _valid_duration(text: str) -> bool:
    return text not in ("P", "PT") and _DURATION_RE.match(text) is not None


def duration_to_seconds(duration: str) -> float:
    """Converts an ISO-8601 duration (``PT1M``, ``P0DT1M``, ``P1DT2H3M4.5S``) to seconds.

    Args:
        duration: the duration string.

    Returns:
        The duration in seconds.

    Raises:
        SpecError: the string is not such a duration.
    """
    match = _DURATION_RE.match(duration) if _valid_duration(duration) else None
    if match is None:
        raise SpecError(f"{duration!r} is not an ISO-8601 duration like 'PT1M'", field="runtime")
    days, hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


# --------------------------------------------------------------------------------------------
# Parameter values, display and substitution (torc's parameter_expansion.rs)


def parse_parameter_value(raw: str) -> list[ParamValue]:
    """Parses one parameter value into its list of values, by torc's rules.

    Args:
        raw: ``"start:end[:step]"`` (inclusive, int or float), ``"[a,b,c]"``, or a scalar;
            a ``{...}`` wrapper without a comma is stripped.

    Returns:
        The values in order.

    Raises:
        ValueError: a bad range or step (the caller turns it into a SpecError).
    """
    text = raw.strip()
    if text.startswith("{") and text.endswith("}") and "," not in text:
        text = text[1:-1].strip()
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_parse_list_item(item.strip()) for item in inner.split(",")] if inner else []
    if ":" in text:
        return _parse_range(text)
    return [_parse_scalar(text)]


def _parse_int(text: str) -> int | None:
    if _INT_RE.match(text):
        value = int(text)
        if -(2**63) <= value < 2**63:
            return value
    return None


def _parse_float(text: str) -> float | None:
    return float(text) if _FLOAT_RE.match(text) else None


def _parse_scalar(text: str) -> ParamValue:
    number = _parse_int(text)
    if number is not None:
        return number
    real = _parse_float(text)
    return real if real is not None else text


def _parse_list_item(text: str) -> ParamValue:
    value = _parse_scalar(text)
    return value.strip("'\"") if isinstance(value, str) else value


def _parse_range(text: str) -> list[ParamValue]:
    parts = [part.strip() for part in text.split(":")]
    if len(parts) not in (2, 3):
        raise ValueError(f"invalid range {text!r}: expected start:end or start:end:step")
    start, end = _parse_int(parts[0]), _parse_int(parts[1])
    if start is not None and end is not None:
        step = _parse_int(parts[2]) if len(parts) == 3 else 1
        if step is None:
            raise ValueError(f"invalid range {text!r}: step {parts[2]!r} is not an integer")
        return list(_int_range(text, start, end, step))
    fstart, fend = _parse_float(parts[0]), _parse_float(parts[1])
    if fstart is None or fend is None:
        raise ValueError(f"invalid range {text!r}: start and end must be numbers")
    fstep = _parse_float(parts[2]) if len(parts) == 3 else 1.0
    if fstep is None:
        raise ValueError(f"invalid range {text!r}: step {parts[2]!r} is not a number")
    return list(_float_range(text, fstart, fend, fstep))


def _int_range(text: str, start: int, end: int, step: int) -> range:
    if step == 0:
        raise ValueError(f"invalid range {text!r}: step must not be 0")
    values = range(start, end + 1, step) if step > 0 else range(start, end - 1, step)
    if len(values) > MAX_EXPANDED:
        raise ValueError(f"range {text!r} has {len(values)} values, more than {MAX_EXPANDED}")
    return values


def _float_range(text: str, start: float, end: float, step: float) -> Iterator[float]:
    if step == 0 or math.isnan(step):
        raise ValueError(f"invalid range {text!r}: step must be a non-zero number")
    count = (end - start) / step
    if not math.isfinite(count) or count > MAX_EXPANDED:
        raise ValueError(f"range {text!r} has too many values (more than {MAX_EXPANDED})")
    current = start
    # NOTE: torc adds the step repeatedly, so rounding errors accumulate; copy that.
    while (current <= end + 1e-10) if step > 0 else (current >= end - 1e-10):
        yield current
        current += step


def display_value(value: ParamValue) -> str:
    """Returns a value as Rust's ``Display`` prints it (floats without a trailing ``.0``).

    Args:
        value: an int, float or string parameter value.

    Returns:
        The text: ``7`` -> ``"7"``, ``1.0`` -> ``"1"``, ``0.1`` -> ``"0.1"``,
        ``1e20`` -> ``"100000000000000000000"`` (never an exponent).
    """
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = format(Decimal(repr(value)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def format_value(value: ParamValue, spec: str) -> str:
    """Formats a value with a ``{p:SPEC}`` spec the way torc does.

    Only ``0Nd`` for integers and ``.Nf`` for finite floats are honoured; anything else falls
    back to :func:`display_value`.
    """
    if isinstance(value, int) and (match := _INT_FORMAT_RE.match(spec)):
        return f"{value:0{int(match[1])}d}"
    match = _FLOAT_FORMAT_RE.match(spec)
    if isinstance(value, float) and math.isfinite(value) and match:
        return f"{value:.{int(match[1])}f}"
    return display_value(value)


def substitute(text: str, values: Sequence[tuple[str, ParamValue]]) -> str:
    """Substitutes parameter values into a string with torc's rules.

    For each parameter ``p`` in order: if ``{p:`` occurs, the first ``{p:SPEC}`` is formatted
    and every identical occurrence replaced, and a plain ``{p}`` is left alone (torc's quirk);
    otherwise every ``{p}`` becomes the display form.
    """
    for name, value in values:
        prefix = "{" + name + ":"
        start = text.find(prefix)
        if start >= 0:
            end = text.find("}", start + len(prefix))
            if end >= 0:
                spec = text[start + len(prefix):end]
                text = text.replace(text[start:end + 1], format_value(value, spec))
            continue
        text = text.replace("{" + name + "}", display_value(value))
    return text


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


def _combinations(job: JobSpec, params: list[tuple[str, str]]) -> list[list[tuple[str, Any]]]:
    names, value_lists = [], []
    for name, raw in params:
        try:
            value_lists.append(parse_parameter_value(raw))
        except ValueError as exc:
            raise SpecError(str(exc), job=job.name, field=f"parameters.{name}") from exc
        names.append(name)
    if job.parameter_mode == "zip":
        for name, values in zip(names[1:], value_lists[1:], strict=True):
            if len(values) != len(value_lists[0]):
                raise SpecError(
                    "All parameters must have the same number of values when using 'zip' mode. "
                    f"Parameter '{names[0]}' has {len(value_lists[0])} values, but '{name}' has "
                    f"{len(values)} values.", job=job.name, field="parameters",
                )
        rows: Iterable[tuple[Any, ...]] = zip(*value_lists, strict=True)
    else:
        total = math.prod(len(values) for values in value_lists)
        if total > MAX_EXPANDED:
            raise SpecError(f"the parameters expand to {total} jobs, more than {MAX_EXPANDED}",
                            job=job.name, field="parameters")
        rows = itertools.product(*value_lists)
    return [list(zip(names, row, strict=True)) for row in rows]


def _expand_job(job: JobSpec, workflow: Mapping[str, str]) -> list[_ExpandedJob]:
    params = _job_parameters(job, workflow)
    combos = _combinations(job, params) if params else [[]]
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
        jobs.append(_with_deps(item.job, tuple(deps)))
    return jobs


def _with_deps(job: PlannedJob, deps: tuple[str, ...]) -> PlannedJob:
    return PlannedJob(job.name, job.command, job.invocation_script, job.resource_requirements,
                      deps, job.cancel_on_blocking_job_failure, job.supports_termination)


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
