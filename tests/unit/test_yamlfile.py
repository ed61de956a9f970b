"""Reading harness YAML files: the error class the caller asks for, pointing at the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from torc_stress.cluster.yamlfile import read_yaml
from torc_stress.errors import InventoryError, PlaybookError, StressError


@pytest.mark.parametrize(
    ("text", "error", "what", "message"),
    [
        ("a: [1, 2\n", PlaybookError, "playbook", r"f.yml: line 2, column 1: not valid YAML: "),
        ("a: b: c\n", InventoryError, "inventory", r"f.yml: line 1, column 5: not valid YAML"),
        (None, InventoryError, "inventory", r"f.yml: cannot read the inventory: "),
    ],
)
def test_a_bad_yaml_file_raises_the_callers_error_naming_file_and_position(
    tmp_path: Path, text: str | None, error: type[StressError], what: str, message: str
) -> None:
    path = tmp_path / "f.yml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(error, match=message):
        read_yaml(path, error, what)


def test_a_good_yaml_file_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "f.yml"
    path.write_text("all:\n  hosts: {a: {x: 1}}\n")
    assert read_yaml(path, PlaybookError, "playbook") == {"all": {"hosts": {"a": {"x": 1}}}}
