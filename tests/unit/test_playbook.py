"""Playbook loading: the strict subset is validated before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from torc_stress.cluster.playbook import DEFAULT_TASK_TIMEOUT, load_playbook
from torc_stress.errors import PlaybookError

PROJECT = Path(__file__).parents[2]


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "play.yml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def play(*tasks: dict[str, Any], **keys: Any) -> list[dict[str, Any]]:
    return [{"name": "P", "hosts": "all", "gather_facts": False, **keys, "tasks": list(tasks)}]


def test_a_valid_playbook_becomes_plays_and_tasks(tmp_path: Path) -> None:
    path = write(tmp_path, play(
        {"name": "a", "ansible.builtin.shell": "echo hi", "register": "out",
         "when": "x | bool", "timeout": 5},
        {"name": "b", "command": {"argv": ["ls"]}, "loop": [1, 2], "ignore_errors": True,
         "changed_when": False, "failed_when": ["out.rc != 0", "true"],
         "environment": {"A": "1"}},
        vars={"x": "yes"}, any_errors_fatal=True))
    book = load_playbook(path)
    (p,) = book.plays
    assert (p.name, p.hosts, p.vars, p.any_errors_fatal) == ("P", "all", {"x": "yes"}, True)
    a, b = p.tasks
    assert (a.module, a.args, a.register, a.when, a.timeout) == (
        "shell", {"cmd": "echo hi"}, "out", ("x | bool",), 5.0)
    assert (b.module, b.loop, b.ignore_errors, b.changed_when, b.failed_when, b.timeout) == (
        "command", [1, 2], True, (False,), ("out.rc != 0", "true"), DEFAULT_TASK_TIMEOUT)


@pytest.mark.parametrize(("data", "message"), [
    ({"hosts": "all"}, "a playbook is a non-empty list of plays"),
    ([{"hosts": "all", "tasks": []}], "play 1: add 'gather_facts: false'"),
    (play(become=True), r"play 1 \('P'\): unsupported play keyword\(s\) become"),
    ([{"gather_facts": False, "tasks": []}], "'hosts' must be a host pattern"),
    (play({"name": "t", "shell": "x", "notify": "h"}),
     r"play 1 \('P'\), task 1 \('t'\): unknown keyword or module 'notify'"),
    (play({"name": "t", "template": {"src": "a", "dest": "b"}}), "unknown keyword or module "
     "'template'"),
    (play({"name": "t"}), "a task needs exactly one module, found none"),
    (play({"name": "t", "shell": "x", "command": "y"}), "exactly one module, found shell, command"),
    (play({"name": "t", "copy": {"src": "a", "dest": "b", "owner": "root"}}),
     r"task 1 \('t'\): unknown argument\(s\) owner for module copy"),
    (play({"name": "t", "copy": "src=a dest=b"}), "must be a mapping \\(dict form"),
    (play({"name": "t", "file": {"state": "directory"}}), "module file needs path"),
    (play({"name": "t", "shell": "x", "when": "{{ x }}"}), "remove the {{ }} delimiters"),
    (play({"name": "t", "shell": "x", "when": 3}), "when: 3 must be a bare Jinja2 expression"),
    (play({"name": "t", "shell": "x", "register": "not valid"}), "not a valid variable name"),
    (play({"name": "t", "shell": "x", "timeout": 0}), "timeout must be a positive number"),
    (play({"name": "t", "shell": "x", "ignore_errors": "yes"}), "ignore_errors must be true"),
    (play({"name": "t", "shell": "x", "environment": ["A=1"]}), "environment must be a mapping"),
    (play(any_errors_fatal="yes"), "any_errors_fatal must be true or false"),
])
def test_invalid_playbooks_name_file_play_task_and_key(
        tmp_path: Path, data: Any, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(PlaybookError, match=message) as info:
        load_playbook(path)
    assert str(path) in str(info.value)


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "- hosts: all\n  tasks: [\n")
    with pytest.raises(PlaybookError, match=r"play.yml: line \d+, column \d+: not valid YAML"):
        load_playbook(path)


@pytest.mark.parametrize("path", sorted((PROJECT / "playbooks").glob("*.yml")),
                         ids=lambda p: p.name)
def test_the_shipped_playbooks_are_in_the_subset(path: Path) -> None:
    assert load_playbook(path).plays
