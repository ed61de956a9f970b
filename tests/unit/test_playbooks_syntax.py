"""Every harness playbook passes `ansible-playbook --syntax-check` and loads in our executor."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from torc_stress.cluster.inventory import load_inventory
from torc_stress.cluster.playbook import load_playbook
from torc_stress.cluster.run import PLAYBOOKS

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK_FILES = sorted((ROOT / "playbooks").glob("*.yml"))
ANSIBLE = Path(sys.executable).parent / "ansible-playbook"


def ansible_playbook() -> str:
    found = str(ANSIBLE) if ANSIBLE.is_file() else shutil.which("ansible-playbook")
    if not found:
        pytest.skip("ansible-playbook is not installed (pip install -e '.[dev]')")
    return found


def test_the_harness_ships_exactly_its_five_playbooks() -> None:
    assert sorted(p.stem for p in PLAYBOOK_FILES) == sorted(PLAYBOOKS)


def test_every_playbook_passes_ansible_playbook_syntax_check(tmp_path: Path) -> None:
    # NOTE: one ansible-playbook process for all of them: each start costs seconds.
    proc = subprocess.run(
        [ansible_playbook(), "--syntax-check", "-i", str(ROOT / "inventory" / "local.yml"),
         *map(str, PLAYBOOK_FILES)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "ANSIBLE_NOCOLOR": "1", "HOME": str(tmp_path),
             "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("playbook", PLAYBOOK_FILES, ids=lambda p: p.name)
def test_the_playbook_loads_in_our_executor(playbook: Path) -> None:
    loaded = load_playbook(playbook)
    assert loaded.plays
    inventory = load_inventory(ROOT / "inventory" / "local.yml")
    for play in loaded.plays:
        assert inventory.select(play.hosts)


@pytest.mark.parametrize("name", ["local.yml", "lab.example.yml"])
def test_the_shipped_inventories_load_with_one_server_and_some_workers(name: str) -> None:
    inventory = load_inventory(ROOT / "inventory" / name)
    assert inventory.server.name
    assert inventory.workers
    assert all(isinstance(w.vars.get("torc_workers"), int) for w in inventory.workers)
