"""A small playbook run for real on this machine (ansible_connection: local), twice."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from torc_stress.cluster.executor import PlaybookResult, TaskEvent, run_playbook
from torc_stress.cluster.inventory import load_inventory
from torc_stress.cluster.transport import ConnectionCache
from torc_stress.report.recap import format_event, format_recap

pytestmark = pytest.mark.integration

PLAYBOOK = """
- name: Prepare every host
  hosts: all
  gather_facts: false
  vars:
    work: "{{ root }}/{{ inventory_hostname }}"
  tasks:
    - name: Create the work directory
      ansible.builtin.file:
        path: "{{ work }}"
        state: directory
        mode: "0750"
    - name: Write a config
      ansible.builtin.copy:
        content: "port={{ port }}\\n"
        dest: "{{ work }}/app.conf"
        mode: "0640"
    - name: Read it back without a shell
      ansible.builtin.command:
        argv: [cat, app.conf]
        chdir: "{{ work }}"
      register: conf
      changed_when: false
    - name: Check what we read
      ansible.builtin.assert:
        that: "conf.stdout == 'port=' ~ port"
    - name: Make files in a loop, once
      ansible.builtin.shell:
        cmd: "echo {{ item }} > {{ work }}/{{ item }}.txt"
        creates: "{{ work }}/{{ item }}.txt"
      loop: [a, b]
    - name: Use the environment
      ansible.builtin.shell: 'printf %s "$GREETING" > {{ work }}/env.txt'
      environment:
        GREETING: "hello {{ inventory_hostname }}"
      changed_when: false

- name: Check the server
  hosts: server
  gather_facts: false
  tasks:
    - name: Wait for the port
      ansible.builtin.wait_for:
        host: 127.0.0.1
        port: "{{ port }}"
        timeout: 10
    - name: Fetch the config
      ansible.builtin.fetch:
        src: "{{ root }}/{{ inventory_hostname }}/env.txt"
        dest: "{{ fetched }}"
"""


def run(tmp_path: Path, inventory_text: str, port: int,
        cache: ConnectionCache | None = None) -> tuple[PlaybookResult, list[TaskEvent]]:
    (tmp_path / "inv.yml").write_text(inventory_text)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    events: list[TaskEvent] = []
    result = run_playbook(tmp_path / "play.yml", load_inventory(tmp_path / "inv.yml"),
                          extra_vars={"root": str(tmp_path / "root"), "port": port,
                                      "fetched": str(tmp_path / "fetched")},
                          on_event=events.append, connections=cache)
    return result, events


LOCAL = """
all:
  vars: {ansible_connection: local}
  children:
    server: {hosts: {srv: {}}}
    workers: {hosts: {w1: {torc_workers: 2}, w2: {}}}
"""


@pytest.fixture
def port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_a_local_playbook_runs_then_reruns_without_changes(tmp_path: Path, port: int) -> None:
    first, events = run(tmp_path, LOCAL, port)
    assert first.exit_code == 0, format_recap(first) + "\n".join(map(format_event, events))
    root = tmp_path / "root"
    for host in ("srv", "w1", "w2"):
        assert (root / host / "app.conf").read_text() == f"port={port}\n"
        assert (root / host / "app.conf").stat().st_mode & 0o777 == 0o640
        assert (root / host / "env.txt").read_text() == f"hello {host}"
        assert (root / host / "b.txt").read_text() == "b\n"
    fetched = tmp_path / "fetched" / "srv" / str(root / "srv" / "env.txt").lstrip("/")
    assert fetched.read_text() == "hello srv"
    assert first.stats["w1"].changed == 3 and first.stats["srv"].changed == 4

    second, _ = run(tmp_path, LOCAL, port)
    assert second.exit_code == 0
    assert {host: stats.changed for host, stats in second.stats.items()} == {
        "srv": 0, "w1": 0, "w2": 0}
    assert "srv" in format_recap(second) and "changed=0" in format_recap(second)


def test_an_unreachable_host_is_reported_and_the_others_finish(tmp_path: Path, port: int) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    inventory = LOCAL.replace(
        "w2: {}", f"w2: {{ansible_connection: ssh, ansible_host: 127.0.0.1, "
                  f"ansible_port: {dead_port}}}")
    (tmp_path / "known_hosts").write_text("")
    with ConnectionCache(known_hosts=tmp_path / "known_hosts", connect_timeout=2) as cache:
        result, events = run(tmp_path, inventory, port, cache)
    assert result.exit_code == 4
    assert set(result.unreachable) == {"w2"}
    assert "cannot connect" in result.unreachable["w2"]
    assert result.stats["w1"].failed == 0 and result.stats["srv"].ok > 0
    assert "UNREACHABLE w2: cannot connect" in format_recap(result)


@pytest.mark.skipif(shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) is None,
                    reason="ansible-core not installed")
def test_the_playbook_also_passes_ansible_syntax_check(tmp_path: Path) -> None:
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    (tmp_path / "inv.yml").write_text(LOCAL)
    tool = Path(sys.executable).parent / "ansible-playbook"
    proc = subprocess.run([str(tool), "--syntax-check", "-i", str(tmp_path / "inv.yml"),
                           str(tmp_path / "play.yml")], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert yaml.safe_load(PLAYBOOK)
