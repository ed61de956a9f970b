"""Reading the harness's YAML files (inventories, playbooks) with errors that point at the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from torc_stress.errors import StressError


def read_yaml(path: Path, error: type[StressError], what: str) -> Any:
    """Reads and parses one YAML file.

    Args:
        path: the file.
        error: the error class to raise (``InventoryError``, ``PlaybookError``).
        what: what the file is, for the message (``"inventory"``, ``"playbook"``).

    Returns:
        The parsed document (None for an empty file).

    Raises:
        StressError: of class ``error``; the file cannot be read, or is not valid YAML (with the
            line and column when YAML knows them).
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise error(f"{path}:{line} not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
