"""Load and validate a playbook in torc-stress's strict Ansible subset.

Everything is checked at load time, before any host is contacted: unknown play or task keywords,
unknown modules or module arguments, missing ``gather_facts: false``, ``{{ }}`` in ``when``.
Errors name the file, the play, the task and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torc_stress.cluster.modules import MODULE_NAMES, MODULES, check_args, free_form_args
from torc_stress.cluster.yamlfile import read_yaml
from torc_stress.errors import PlaybookError

PLAY_KEYS = frozenset({"name", "hosts", "vars", "gather_facts", "tasks", "any_errors_fatal"})
TASK_KEYS = frozenset({"name", "register", "when", "loop", "ignore_errors", "environment",
                       "changed_when", "failed_when", "timeout"})
#: Seconds a task's commands may run unless the task sets ``timeout``.
DEFAULT_TASK_TIMEOUT = 600.0


@dataclass(frozen=True)
class Task:
    """One task: a module call plus the keywords that steer it."""

    name: str
    module: str  # short name, a key of modules.MODULES
    args: Mapping[str, Any]
    register: str | None = None
    when: tuple[str | bool, ...] = ()
    loop: Any = None
    ignore_errors: bool | str = False
    environment: Mapping[str, Any] | str | None = None
    changed_when: tuple[str | bool, ...] | None = None
    failed_when: tuple[str | bool, ...] | None = None
    timeout: float = DEFAULT_TASK_TIMEOUT


@dataclass(frozen=True)
class Play:
    """One play: a host pattern, vars and tasks."""

    name: str
    hosts: str
    vars: Mapping[str, Any]
    tasks: tuple[Task, ...]
    any_errors_fatal: bool = False


@dataclass(frozen=True)
class Playbook:
    """A list of plays read from ``path``."""

    path: Path
    plays: tuple[Play, ...]


def load_playbook(path: Path) -> Playbook:
    """Read and validate a playbook.

    Args:
        path: A YAML playbook (a list of plays).

    Returns:
        The validated playbook.

    Raises:
        PlaybookError: Not readable, not YAML, or outside the supported subset; the message
            names the file, play, task and key.
    """
    path = Path(path)
    data = read_yaml(path, PlaybookError, "playbook")
    return parse_playbook(path, data)


def parse_playbook(path: Path, data: Any) -> Playbook:
    """Validate already-parsed YAML ``data`` (pure; see :func:`load_playbook`)."""
    if not isinstance(data, list) or not data:
        raise PlaybookError(f"{path}: a playbook is a non-empty list of plays")
    return Playbook(path, tuple(_parse_play(path, i, play) for i, play in enumerate(data, 1)))


def _named(where: str, raw: Any, shape: str) -> str:
    """Returns ``where`` with the item's name added; refuses an item that is not a mapping."""
    if not isinstance(raw, dict):
        raise PlaybookError(f"{where}: {shape}")
    return f"{where} ({raw['name']!r})" if raw.get("name") else where


def _parse_play(path: Path, index: int, raw: Any) -> Play:
    where = _named(f"{path}: play {index}", raw,
                   "a play is a mapping with hosts, gather_facts and tasks")
    unknown = sorted(map(str, set(raw) - PLAY_KEYS))
    if unknown:
        raise PlaybookError(f"{where}: unsupported play keyword(s) {', '.join(unknown)} "
                            f"(supported: {', '.join(sorted(PLAY_KEYS))})")
    if not isinstance(raw.get("hosts"), str) or not raw["hosts"].strip():
        raise PlaybookError(f"{where}: 'hosts' must be a host pattern such as all, workers or a:b")
    if raw.get("gather_facts", True) is not False:
        raise PlaybookError(f"{where}: add 'gather_facts: false' (facts cannot be gathered; "
                            "ansible-playbook would gather them by default)")
    variables = raw.get("vars") or {}
    if not isinstance(variables, dict):
        raise PlaybookError(f"{where}: 'vars' must be a mapping")
    tasks = raw.get("tasks") or []
    if not isinstance(tasks, list):
        raise PlaybookError(f"{where}: 'tasks' must be a list of tasks")
    return Play(
        name=str(raw.get("name") or raw["hosts"]),
        hosts=raw["hosts"].strip(),
        vars=dict(variables),
        tasks=tuple(_parse_task(where, i, task) for i, task in enumerate(tasks, 1)),
        any_errors_fatal=_bool(where, "any_errors_fatal", raw.get("any_errors_fatal", False)),
    )


def _parse_task(play_where: str, index: int, raw: Any) -> Task:
    where = _named(f"{play_where}, task {index}", raw,
                   "a task is a mapping with a name and one module")
    modules = [key for key in raw if key in MODULE_NAMES]
    unknown = sorted(map(str, set(raw) - TASK_KEYS - set(modules)))
    if unknown:
        raise PlaybookError(
            f"{where}: unknown keyword or module {', '.join(map(repr, unknown))}. Keywords: "
            f"{', '.join(sorted(TASK_KEYS))}; modules: {', '.join(sorted(MODULES))} "
            "(short or ansible.builtin.)")
    if len(modules) != 1:
        raise PlaybookError(f"{where}: a task needs exactly one module, found "
                            f"{', '.join(modules) or 'none'}")
    module = MODULE_NAMES[modules[0]]
    args = _module_args(where, module, raw[modules[0]])
    register = raw.get("register")
    if register is not None and (not isinstance(register, str) or not register.isidentifier()):
        raise PlaybookError(f"{where}: register: {register!r} is not a valid variable name")
    return Task(
        name=str(raw.get("name") or module),
        module=module,
        args=args,
        register=register,
        when=_conditions(where, "when", raw.get("when")) or (),
        loop=raw.get("loop"),
        ignore_errors=_bool_or_template(where, "ignore_errors", raw.get("ignore_errors", False)),
        environment=_environment(where, raw.get("environment")),
        changed_when=_conditions(where, "changed_when", raw.get("changed_when")),
        failed_when=_conditions(where, "failed_when", raw.get("failed_when")),
        timeout=_timeout(where, raw.get("timeout", DEFAULT_TASK_TIMEOUT)),
    )


def _module_args(where: str, module: str, raw: Any) -> dict[str, Any]:
    spec = MODULES[module]
    if raw is None:
        raw = {}
    if isinstance(raw, str) and spec.free_form:
        args = free_form_args(module, raw)
    elif isinstance(raw, dict):
        args = {str(key): value for key, value in raw.items()}
    else:
        raise PlaybookError(f"{where}: arguments of {module} must be a mapping (dict form; "
                            "k=v strings are not supported)")
    problem = check_args(module, args)
    if problem:
        raise PlaybookError(f"{where}: {problem}")
    return args


def _conditions(where: str, key: str, raw: Any) -> tuple[str | bool, ...] | None:
    if raw is None:
        return None
    items = raw if isinstance(raw, list) else [raw]
    for item in items:
        if isinstance(item, bool):
            continue
        if not isinstance(item, str) or not item.strip():
            raise PlaybookError(f"{where}: {key}: {item!r} must be a bare Jinja2 expression "
                                "or a boolean")
        if "{{" in item or "{%" in item:
            raise PlaybookError(f"{where}: {key}: {item!r} is a bare expression; remove the "
                                "{{ }} delimiters")
    return tuple(items)


def _bool(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise PlaybookError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _bool_or_template(where: str, key: str, value: Any) -> bool | str:
    if isinstance(value, bool) or (isinstance(value, str) and "{{" in value):
        return value
    raise PlaybookError(f"{where}: {key} must be true, false or a {{{{ }}}} template")


def _environment(where: str, value: Any) -> Mapping[str, Any] | str | None:
    if value is None or isinstance(value, dict) or (isinstance(value, str) and "{{" in value):
        return value
    raise PlaybookError(f"{where}: environment must be a mapping of variable names to values")


def _timeout(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise PlaybookError(f"{where}: timeout must be a positive number of seconds, "
                            f"got {value!r}")
    return float(value)
