"""The executor over fake transports: parallel hosts, dropping failed hosts, exit codes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from torc_stress.cluster.executor import PlaybookResult, TaskEvent, run_playbook
from torc_stress.cluster.inventory import Host, Inventory, build_inventory
from torc_stress.cluster.transport import ConnectionCache, FakeTransport
from torc_stress.errors import PlaybookError, UnreachableError

HOSTS = ("s1", "w1", "w2")


def make_inventory(tmp_path: Path, **host_vars: dict[str, Any]) -> Inventory:
    hosts = {name: dict(host_vars.get(name, {})) for name in HOSTS}
    data = {"all": {"vars": {"who": "inventory"}, "children": {
        "server": {"hosts": {"s1": hosts["s1"]}},
        "workers": {"hosts": {"w1": hosts["w1"], "w2": hosts["w2"]}}}}}
    return build_inventory(tmp_path / "inv.yml", data)


class FakeHosts:
    """A ConnectionCache whose transports answer with ``answer(host, command)``."""

    def __init__(self, answer: Callable[[str, str], tuple[int, str, str]],
                 unreachable: tuple[str, ...] = ()) -> None:
        self.transports: dict[str, FakeTransport] = {}
        self.opened: list[str] = []

        def factory(host: Host) -> FakeTransport:
            self.opened.append(host.name)
            if host.name in unreachable:
                raise UnreachableError(host.name, "cannot connect: [Errno 111] refused")
            fake = FakeTransport(lambda cmd: answer(host.name, cmd), host=host.name)
            self.transports[host.name] = fake
            return fake

        self.cache = ConnectionCache(factory=factory)

    def commands(self, host: str) -> list[str]:
        return [call[1] for call in self.transports[host].calls if call[0] == "run"]


def ok(host: str, command: str) -> tuple[int, str, str]:
    return 0, f"{host}: {command}\n", ""


def run(tmp_path: Path, plays: list[dict[str, Any]], hosts: FakeHosts,
        inventory: Inventory | None = None, **kwargs: Any) -> tuple[PlaybookResult,
                                                                     list[TaskEvent]]:
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    events: list[TaskEvent] = []
    result = run_playbook(path, inventory or make_inventory(tmp_path),
                          connections=hosts.cache, on_event=events.append, **kwargs)
    return result, events


def play(*tasks: dict[str, Any], hosts: str = "all", **keys: Any) -> dict[str, Any]:
    return {"name": "P", "hosts": hosts, "gather_facts": False, **keys, "tasks": list(tasks)}


def statuses(events: list[TaskEvent], task: str) -> dict[str, str]:
    return {e.host: e.status for e in events if e.task == task}


def test_a_failed_host_is_dropped_from_later_tasks_and_plays_while_others_continue(
        tmp_path: Path) -> None:
    hosts = FakeHosts(lambda h, c: (1, "", "boom\n") if h == "w1" and "first" in c else ok(h, c))
    result, events = run(tmp_path, [
        play({"name": "first", "shell": "first"}, {"name": "second", "shell": "second"}),
        play({"name": "third", "shell": "third"}, hosts="workers")], hosts)
    assert statuses(events, "first") == {"s1": "changed", "w1": "failed", "w2": "changed"}
    assert statuses(events, "second") == {"s1": "changed", "w2": "changed"}
    assert statuses(events, "third") == {"w2": "changed"}
    assert hosts.commands("w1") == ["first"]
    assert (result.stats["w1"].failed, result.stats["w1"].ok) == (1, 0)
    assert (result.stats["w2"].ok, result.stats["w2"].changed) == (3, 3)
    assert "first" in result.failures["w1"] and "boom" in result.failures["w1"]
    assert result.exit_code == 2


def test_ignore_errors_keeps_the_host_and_counts_ok_and_ignored(tmp_path: Path) -> None:
    hosts = FakeHosts(lambda h, c: (1, "", "") if c == "bad" else ok(h, c))
    result, events = run(tmp_path, [play(
        {"name": "bad", "command": "bad", "ignore_errors": True, "register": "r"},
        {"name": "after", "debug": {"msg": "rc was {{ r.rc }}"}})], hosts)
    assert {e.ignored for e in events if e.task == "bad"} == {True}
    assert statuses(events, "after") == dict.fromkeys(HOSTS, "ok")
    assert {e.message for e in events if e.task == "after"} == {"rc was 1"}
    stats = result.stats["w1"]
    assert (stats.ok, stats.ignored, stats.failed, stats.changed) == (2, 1, 0, 1)
    assert result.exit_code == 0


@pytest.mark.parametrize(("when", "expected"), [
    ("inventory_hostname == 'w2'", {"s1": "skipped", "w1": "skipped", "w2": "changed"}),
    (["'workers' in group_names", "inventory_hostname != 'w1'"],
     {"s1": "skipped", "w1": "skipped", "w2": "changed"}),
    (True, dict.fromkeys(HOSTS, "changed")),
    ("flag | bool", dict.fromkeys(HOSTS, "skipped")),
])
def test_when_runs_or_skips_per_host(tmp_path: Path, when: Any, expected: dict[str, str]) -> None:
    hosts = FakeHosts(ok)
    result, events = run(tmp_path, [play({"name": "t", "shell": "x", "when": when},
                                         vars={"flag": "no"})], hosts)
    assert statuses(events, "t") == expected
    skipped = [h for h, s in expected.items() if s == "skipped"]
    assert all(result.stats[h].skipped == 1 for h in skipped)
    assert all(h not in hosts.transports for h in skipped)  # skipped hosts were never contacted


def test_a_non_boolean_when_fails_the_task_with_the_reason(tmp_path: Path) -> None:
    result, events = run(tmp_path, [play({"name": "t", "shell": "x", "when": "count"},
                                         vars={"count": 3})], FakeHosts(ok))
    assert statuses(events, "t") == dict.fromkeys(HOSTS, "failed")
    assert "task 't'" in result.failures["w1"]
    assert "conditionals must have a boolean result" in result.failures["w1"]
    assert result.exit_code == 2


def test_a_templating_error_names_the_task_and_the_variable(tmp_path: Path) -> None:
    result, _ = run(tmp_path, [play({"name": "Start it", "shell": "run {{ missing_var }}"})],
                    FakeHosts(ok))
    assert "task 'Start it'" in result.failures["s1"]
    assert "'missing_var' is undefined" in result.failures["s1"]


def test_an_undefined_variable_inside_a_list_argument_fails_the_task(tmp_path: Path) -> None:
    result, _ = run(tmp_path, [play({"name": "t", "command": {"argv": ["x", "{{ nope }}"]}},
                                    hosts="w1")], FakeHosts(ok))
    assert "'nope' is undefined" in result.failures["w1"]
    assert "internal error" not in result.failures["w1"]


def test_loop_runs_per_item_and_registers_every_result(tmp_path: Path) -> None:
    hosts = FakeHosts(ok)
    result, _ = run(tmp_path, [play(
        {"name": "t", "command": {"argv": ["start", "{{ item }}"]}, "register": "out",
         "loop": "{{ range(1, n + 1) | list }}"}, hosts="w1", vars={"n": 3})], hosts)
    assert hosts.commands("w1") == ["start 1", "start 2", "start 3"]
    registered = result.registered["w1"]["out"]
    assert [r["item"] for r in registered["results"]] == [1, 2, 3]
    assert [r["stdout"] for r in registered["results"]] == [f"w1: start {i}" for i in (1, 2, 3)]
    assert registered["changed"] is True and registered["failed"] is False


def test_a_loop_over_a_non_list_fails(tmp_path: Path) -> None:
    result, _ = run(tmp_path, [play({"name": "t", "shell": "x", "loop": "{{ 5 }}"},
                                    hosts="w1")], FakeHosts(ok))
    assert "loop must be a list" in result.failures["w1"]


def test_register_changed_when_and_failed_when_use_the_result(tmp_path: Path) -> None:
    hosts = FakeHosts(lambda h, c: (3, "present\n", "") if h == "w1" else (0, "absent\n", ""))
    result, events = run(tmp_path, [play(
        {"name": "probe", "shell": "probe", "register": "p",
         "changed_when": "'absent' in p.stdout", "failed_when": "p.rc not in [0, 3]"},
        {"name": "act", "shell": "act {{ p.stdout_lines[0] }}", "when": "p.rc == 0"})],
        hosts)
    assert statuses(events, "probe") == {"s1": "changed", "w1": "ok", "w2": "changed"}
    assert hosts.commands("w2") == ["probe", "act absent"]
    assert hosts.commands("w1") == ["probe"]
    assert result.registered["w1"]["p"]["rc"] == 3
    assert result.exit_code == 0


def test_extra_vars_beat_registered_play_and_inventory_vars(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path, w1={"who": "host"})
    hosts = FakeHosts(ok)
    _, events = run(tmp_path, [play(
        {"name": "show", "debug": {"msg": "{{ who }} {{ what }} {{ where }}"}}, hosts="w1",
        vars={"what": "play", "where": "play"})], hosts, inventory,
        extra_vars={"where": "extra"})
    assert [e.message for e in events] == ["host play extra"]


def test_play_vars_are_templated_lazily_from_inventory_vars(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path, w1={"torc_root": "/srv/torc"})
    hosts = FakeHosts(ok)
    run(tmp_path, [play({"name": "t", "shell": "ls {{ bin }}"}, hosts="w1",
                        vars={"bin": "{{ venv }}/bin", "venv": "{{ torc_root }}/venv"})],
        hosts, inventory)
    assert hosts.commands("w1") == ["ls /srv/torc/venv/bin"]


def test_magic_variables_hostvars_and_groups_are_available(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path, s1={"ansible_host": "10.1.1.1", "torc_port": 8080})
    hosts = FakeHosts(ok)
    run(tmp_path, [play({"name": "t", "shell":
                         "connect {{ hostvars[groups['server'][0]]['ansible_host'] }}:"
                         "{{ hostvars['s1'].torc_port }} as {{ inventory_hostname }}"},
                        hosts="w2")], hosts, inventory)
    assert hosts.commands("w2") == ["connect 10.1.1.1:8080 as w2"]


def test_hostvars_show_other_hosts_registered_results_of_earlier_tasks(tmp_path: Path) -> None:
    hosts = FakeHosts(lambda h, c: (0, "8080\n", "") if h == "s1" else ok(h, c))
    run(tmp_path, [
        play({"name": "port", "shell": "read-port", "register": "server_port"}, hosts="server"),
        play({"name": "use", "shell": "connect {{ hostvars['s1'].server_port.stdout }}"},
             hosts="workers")], hosts)
    assert hosts.commands("w1") == ["connect 8080"]


def test_an_unreachable_host_gives_exit_4_with_the_reason_and_others_continue(
        tmp_path: Path) -> None:
    hosts = FakeHosts(ok, unreachable=("w1",))
    result, events = run(tmp_path, [play({"name": "a", "shell": "a"},
                                         {"name": "b", "shell": "b"})], hosts)
    assert statuses(events, "a") == {"s1": "changed", "w1": "unreachable", "w2": "changed"}
    assert statuses(events, "b") == {"s1": "changed", "w2": "changed"}
    assert result.unreachable == {"w1": "cannot connect: [Errno 111] refused"}
    assert result.stats["w1"].unreachable == 1
    assert result.exit_code == 4


def test_controller_only_tasks_do_not_connect(tmp_path: Path) -> None:
    hosts = FakeHosts(ok, unreachable=("w1",))
    result, _ = run(tmp_path, [play({"name": "d", "debug": {"msg": "hi"}},
                                    {"name": "a", "assert": {"that": "1 == 1"}})], hosts)
    assert hosts.opened == [] and result.exit_code == 0


def test_all_hosts_of_a_task_run_in_parallel(tmp_path: Path) -> None:
    barrier = threading.Barrier(len(HOSTS), timeout=5)

    def answer(host: str, command: str) -> tuple[int, str, str]:
        barrier.wait()  # raises BrokenBarrierError unless every host is in here at once
        return 0, "", ""

    result, _ = run(tmp_path, [play({"name": "t", "shell": "x"})], FakeHosts(answer))
    assert result.exit_code == 0


def test_one_connection_per_host_is_reused_across_tasks_and_playbooks(tmp_path: Path) -> None:
    hosts = FakeHosts(ok)
    plays = [play({"name": "a", "shell": "a"}, {"name": "b", "shell": "b"})]
    run(tmp_path, plays, hosts)
    run(tmp_path, plays, hosts)
    assert sorted(hosts.opened) == sorted(HOSTS)
    assert hosts.commands("s1") == ["a", "b", "a", "b"]


def test_any_errors_fatal_stops_every_host(tmp_path: Path) -> None:
    hosts = FakeHosts(lambda h, c: (1, "", "") if h == "w1" else ok(h, c))
    result, events = run(tmp_path, [play({"name": "a", "shell": "a"},
                                         {"name": "b", "shell": "b"}, any_errors_fatal=True),
                                    play({"name": "c", "shell": "c"})], hosts)
    assert not [e for e in events if e.task in ("b", "c")]
    assert result.exit_code == 2


def test_limit_restricts_the_hosts(tmp_path: Path) -> None:
    hosts = FakeHosts(ok)
    _, events = run(tmp_path, [play({"name": "a", "shell": "a"})], hosts, limit=["w2", "server"])
    assert statuses(events, "a") == {"s1": "changed", "w2": "changed"}


def test_an_invalid_playbook_is_refused_before_any_host_is_contacted(tmp_path: Path) -> None:
    hosts = FakeHosts(ok)
    with pytest.raises(PlaybookError, match="task 2 \\('b'\\): unknown keyword or module 'sudo'"):
        run(tmp_path, [play({"name": "a", "shell": "a"}, {"name": "b", "shell": "b",
                                                          "sudo": True})], hosts)
    assert hosts.opened == []


def test_a_command_timeout_fails_the_host_with_the_timeout(tmp_path: Path) -> None:
    from torc_stress.errors import CommandTimeout

    def answer(host: str, command: str) -> tuple[int, str, str]:
        if host == "w1":
            raise CommandTimeout(host, command, 7)
        return ok(host, command)

    result, _ = run(tmp_path, [play({"name": "slow", "shell": "sleep 100", "timeout": 7})],
                    FakeHosts(answer))
    assert "timed out after 7 s" in result.failures["w1"]
    assert set(result.failures) == {"w1"}


def test_an_interrupt_ends_running_commands_instead_of_waiting_for_them(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path, **{h: {"ansible_connection": "local"} for h in HOSTS})
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump([play(
        {"name": "t", "shell": "{{ 'true' if inventory_hostname == 's1' else 'sleep 30' }}"})]))

    def interrupt(event: TaskEvent) -> None:
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_playbook(path, inventory, on_event=interrupt)
    assert time.monotonic() - started < 10


def test_an_interrupt_returns_at_once_even_while_a_command_still_hangs(tmp_path: Path) -> None:
    """Ctrl-C does not wait for a hung command's timeout: the pool is not joined."""
    release = threading.Event()

    def answer(host: str, command: str) -> tuple[int, str, str]:
        if host != "s1":
            release.wait(30)  # a remote command that closing the transport does not end
        return ok(host, command)

    def interrupt(event: TaskEvent) -> None:
        raise KeyboardInterrupt  # arrives while w1 and w2 are still running

    hosts = FakeHosts(answer)
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump([play({"name": "hang", "shell": "sleep 600", "timeout": 600})]))
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_playbook(path, make_inventory(tmp_path), connections=hosts.cache,
                         on_event=interrupt)
        assert time.monotonic() - started < 1.0
        assert ("close",) in hosts.transports["w1"].calls
    finally:
        release.set()  # let the abandoned pool threads finish
