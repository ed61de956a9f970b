"""Jinja2 templating with Ansible's rules: StrictUndefined, lazy variables, strict conditionals.

A string that is exactly one ``{{ expression }}`` evaluates to the expression's native value
(an int stays an int); any other string containing ``{{`` or ``{%`` renders to a string.
Variables are templated lazily when looked up, so ``venv: "{{ torc_root }}/venv"`` works.
"""

from __future__ import annotations

import json
import os.path
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from torc_stress.errors import PlaybookError

_SINGLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)


def to_bool(value: Any) -> bool:
    """Ansible's ``bool`` filter: yes/on/1/true/y/t (any case) are true."""
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "on", "1", "true", "y", "t")
    return bool(value)


def _regex_replace(value: str, pattern: str, replacement: str = "") -> str:
    return re.sub(pattern, replacement, str(value))


def _result_test(key: str, expected: bool = True) -> Any:
    def test(result: Any) -> bool:
        if not isinstance(result, Mapping):
            raise jinja2.TemplateError(f"the '{key}' test expects a registered result")
        return bool(result.get(key, False)) == expected
    return test


def _make_env() -> jinja2.Environment:
    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined,
                                        keep_trailing_newline=True)
    env.filters.update({
        "bool": to_bool, "quote": lambda v: shlex.quote(str(v)),
        "basename": lambda v: os.path.basename(str(v)),
        "dirname": lambda v: os.path.dirname(str(v)),
        "to_json": json.dumps, "from_json": json.loads,
        "to_yaml": lambda v: yaml.safe_dump(v, default_flow_style=True).strip(),
        "regex_replace": _regex_replace,
        "mandatory": lambda v: v,
    })
    env.tests.update({
        "failed": _result_test("failed"), "changed": _result_test("changed"),
        "skipped": _result_test("skipped"), "succeeded": _result_test("failed", False),
        "success": _result_test("failed", False),
    })
    return env


ENV = _make_env()


class LazyVars(Mapping[str, Any]):
    """Layers of variables (later layers win); string values are templated on lookup."""

    def __init__(self, *layers: Mapping[str, Any]) -> None:
        self._layers = layers
        self._cache: dict[str, Any] = {}
        self._busy: set[str] = set()

    def with_layer(self, layer: Mapping[str, Any]) -> LazyVars:
        """Return a new LazyVars with ``layer`` on top."""
        return LazyVars(*self._layers, layer)

    def raw(self, key: str) -> Any:
        for layer in reversed(self._layers):
            if key in layer:
                return layer[key]
        raise KeyError(key)

    def __getitem__(self, key: str) -> Any:
        if key in self._cache:
            return self._cache[key]
        raw = self.raw(key)
        if key in self._busy:
            raise PlaybookError(f"variable {key!r} refers to itself")
        self._busy.add(key)
        try:
            value = template_value(raw, self)
        finally:
            self._busy.discard(key)
        self._cache[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        return any(key in layer for layer in self._layers)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for layer in self._layers:
            for key in layer:
                if key not in seen:
                    seen.add(key)
                    yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Globals(Mapping[str, Any]):
    """Variables first, then jinja2's globals (range, dict, ...)."""

    def __init__(self, variables: Mapping[str, Any]) -> None:
        self._vars = variables

    def __getitem__(self, key: str) -> Any:
        if key in self._vars:
            return self._vars[key]
        return ENV.globals[key]

    def __contains__(self, key: object) -> bool:
        return key in self._vars or key in ENV.globals

    def __iter__(self) -> Iterator[str]:
        return iter({*self._vars, *ENV.globals})

    def __len__(self) -> int:
        return len({*self._vars, *ENV.globals})


def evaluate(expression: str, variables: Mapping[str, Any]) -> Any:
    """Evaluate a bare Jinja2 expression to its native value.

    Raises:
        PlaybookError: Syntax error or undefined variable, with the expression.
    """
    try:
        compiled = ENV.compile_expression(expression, undefined_to_none=False)
        template = compiled._template  # NOTE: reuse jinja2's expression template, shared vars
        context = template.new_context(_Globals(variables), shared=True)  # type: ignore[arg-type]
        for _ in template.root_render_func(context):
            pass
        return _defined(context.vars["result"])
    except PlaybookError:
        raise
    except jinja2.TemplateError as exc:
        raise PlaybookError(f"cannot evaluate {expression!r}: {_explain(exc)}") from exc
    except Exception as exc:  # errors raised by filters and tests inside the expression
        raise PlaybookError(f"cannot evaluate {expression!r}: {exc}") from exc


def _defined(value: Any) -> Any:
    """Return ``value``, raising UndefinedError if it is or holds an Undefined."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises here with the variable's name
    elif isinstance(value, Mapping):
        for item in value.values():
            _defined(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _defined(item)
    return value


def render(text: str, variables: Mapping[str, Any]) -> Any:
    """Template one string: native value for ``{{ expr }}``, else the rendered text."""
    if "{{" not in text and "{%" not in text:
        return text
    match = _SINGLE.match(text)
    if match:
        return evaluate(match.group("expr").strip(), variables)
    try:
        template = ENV.from_string(text)
        # NOTE: shared=True makes jinja2 look variables up lazily in the mapping itself
        context = template.new_context(_Globals(variables), shared=True)  # type: ignore[arg-type]
        return "".join(template.root_render_func(context))
    except PlaybookError:
        raise
    except jinja2.TemplateError as exc:
        raise PlaybookError(f"cannot template {text!r}: {_explain(exc)}") from exc
    except Exception as exc:
        raise PlaybookError(f"cannot template {text!r}: {exc}") from exc


def template_value(value: Any, variables: Mapping[str, Any]) -> Any:
    """Template every string inside ``value`` (dicts and lists recursively)."""
    if isinstance(value, str):
        return render(value, variables)
    if isinstance(value, Mapping):
        return {key: template_value(item, variables) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        return [template_value(item, variables) for item in value]
    return value


def conditional(expression: str | bool, variables: Mapping[str, Any]) -> bool:
    """Evaluate a ``when``-style conditional; it must yield a bool, as in ansible-core 2.19.

    Raises:
        PlaybookError: The result is not a bool, or the expression cannot be evaluated.
    """
    if isinstance(expression, bool):
        return expression
    result = evaluate(expression, variables)
    if not isinstance(result, bool):
        raise PlaybookError(
            f"conditional {expression!r} has result {result!r} of type "
            f"{type(result).__name__}; conditionals must have a boolean result (compare "
            "explicitly, e.g. 'x | length > 0' or 'x | bool')")
    return result


def conditionals(expressions: Sequence[str | bool], variables: Mapping[str, Any]) -> bool:
    """All conditionals of a list are true (Ansible's list form of ``when``)."""
    return all(conditional(expr, variables) for expr in expressions)


def _explain(exc: jinja2.TemplateError) -> str:
    message = str(exc)
    if isinstance(exc, jinja2.UndefinedError):
        return f"{message} (define it in the inventory, the play's vars or with extra vars)"
    return message
