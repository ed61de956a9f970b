"""Every module behaves as its data files say: tests/unit/modules/<module>/<case>.yaml.

A case gives ``args`` (dict or free-form string), ``vars``, fake command ``results`` (first
regex ``match`` wins; unmatched commands exit 0 with no output), ``remote_files`` and
``local_files`` (relative to the playbook dir); ``expected`` lists the transport calls
(``run: <command>``, ``put: <path> [mode=0NNN]``, ``get: <path>``; a ``{regex: ...}`` entry
matches with re.search), ``changed``, ``failed``, a ``result`` subset, files that must exist
afterwards, or an ``error`` the module must raise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from torc_stress.cluster.modules import (
    MODULES,
    ModuleContext,
    check_args,
    free_form_args,
    render_args,
    run_module,
)
from torc_stress.cluster.templar import LazyVars
from torc_stress.cluster.transport import FakeTransport
from torc_stress.errors import PlaybookError

CASES = sorted((Path(__file__).parent / "modules").glob("*/*.yaml"))


def _handler(results: list[dict[str, Any]]) -> Any:
    def answer(command: str) -> tuple[int, str, str]:
        for result in results:
            if re.search(result["match"], command):
                return result.get("rc", 0), result.get("stdout", ""), result.get("stderr", "")
        return 0, "", ""
    return answer


def _call_text(call: tuple[Any, ...]) -> str:
    if call[0] == "put":
        return f"put: {call[1]}" + (f" mode={call[2]:04o}" if call[2] is not None else "")
    return f"{call[0]}: {call[1]}"


def _matches(expected: str | dict[str, str], actual: str) -> bool:
    if isinstance(expected, dict):
        return re.search(expected["regex"], actual, re.DOTALL) is not None
    return expected == actual


@pytest.mark.parametrize("case_file", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_module_case_behaves_as_its_data_file_says(case_file: Path, tmp_path: Path) -> None:
    case = yaml.safe_load(case_file.read_text())
    module, expected = case_file.parent.name, case["expected"]
    raw = case["args"]
    args = free_form_args(module, raw) if isinstance(raw, str) else dict(raw)
    assert check_args(module, args) is None
    for name, text in (case.get("local_files") or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    fake = FakeTransport(_handler(case.get("results") or []), host="h1")
    fake.files.update({k: v.encode() for k, v in (case.get("remote_files") or {}).items()})
    variables = LazyVars(case.get("vars") or {})
    ctx = ModuleContext(host="h1", transport=lambda: fake, base_dir=tmp_path, vars=variables,
                        python=str(variables.get("ansible_python_interpreter", "python3")))

    if "error" in expected:
        with pytest.raises(PlaybookError, match=re.escape(expected["error"])):
            run_module(module, render_args(module, args, variables), ctx)
        return
    result = run_module(module, render_args(module, args, variables), ctx)

    calls = [_call_text(call) for call in fake.calls]
    assert len(calls) == len(expected["commands"]), calls
    for want, got in zip(expected["commands"], calls, strict=True):
        assert _matches(want, got), f"expected {want!r}, got {got!r}"
    assert result["changed"] is expected["changed"]
    assert result["failed"] is expected["failed"]
    for key, value in (expected.get("result") or {}).items():
        assert result[key] == value, key
    for name, text in (expected.get("remote_files") or {}).items():
        assert fake.files[name].decode() == text
    for name, text in (expected.get("local_files") or {}).items():
        assert (tmp_path / name).read_text() == text


def test_every_module_has_data_file_cases() -> None:
    assert {case.parent.name for case in CASES} == set(MODULES)


@pytest.mark.parametrize(("module", "args", "problem"), [
    ("command", {"cmd": "x", "shell": True}, "unknown argument(s) shell"),
    ("command", {"chdir": "/"}, "needs argv or cmd"),
    ("command", {"cmd": "x", "argv": ["x"]}, "mutually exclusive"),
    ("copy", {"dest": "/x"}, "needs content or src"),
    ("copy", {"src": "a"}, "needs dest"),
    ("fetch", {"src": "a"}, "needs dest"),
    ("wait_for", {"port": 1, "path": "/x"}, "mutually exclusive"),
    ("assert", {}, "needs that"),
])
def test_bad_module_arguments_are_named(module: str, args: dict[str, Any], problem: str) -> None:
    assert problem in (check_args(module, args) or "")
