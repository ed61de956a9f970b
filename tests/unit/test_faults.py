"""Fault specs: parsing, planning against the inventory and workflow, triggers, the injector."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from torc_stress.cluster.faults import (
    CONTROLLER,
    FaultInjector,
    FaultRecord,
    FaultSpec,
    PlannedFault,
    Trigger,
    is_due,
    parse_fault,
    parse_faults,
    plan_faults,
    stage_depths,
)
from torc_stress.cluster.inventory import Inventory, load_inventory
from torc_stress.cluster.progress import DepthProgress, ProgressSnapshot
from torc_stress.cluster.transport import FakeTransport
from torc_stress.errors import ConfigError
from torc_stress.spec import expand, parse_spec
from torc_stress.workflows import contention_workflow

# ------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(("text", "expected"), [
    ("kill-worker:node1:2@stage2",
     FaultSpec("kill-worker:node1:2@stage2", "kill-worker", Trigger(stage=2), host="node1",
               count=2)),
    ("restart-server@stage3", FaultSpec("restart-server@stage3", "restart-server",
                                        Trigger(stage=3))),
    ("partition:worker2:5@stage2",
     FaultSpec("partition:worker2:5@stage2", "partition", Trigger(stage=2), host="worker2",
               seconds=5.0)),
    ("partition:w:2.5@30s",
     FaultSpec("partition:w:2.5@30s", "partition", Trigger(after_s=30.0), host="w",
               seconds=2.5)),
    ("restart-server@0.5s", FaultSpec("restart-server@0.5s", "restart-server",
                                      Trigger(after_s=0.5))),
    ("  kill-worker:localhost:1@stage12 ",
     FaultSpec("kill-worker:localhost:1@stage12", "kill-worker", Trigger(stage=12),
               host="localhost", count=1)),
], ids=["kill-at-a-stage", "restart-at-a-stage", "partition-at-a-stage",
        "partition-after-seconds", "restart-after-fractional-seconds", "surrounding-space"])
def test_a_valid_spec_becomes_data_with_only_the_arguments_its_kind_has(
        text: str, expected: FaultSpec) -> None:
    assert parse_fault(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("kill-worker:node1:2", "no @TRIGGER"),
    ("@stage2", "no @TRIGGER"),
    ("explode:node1@stage2", "unknown kind 'explode'"),
    ("kill-worker:node1@stage2", "kill-worker takes 2 argument(s)"),
    ("kill-worker::1@stage2", "kill-worker takes 2 argument(s)"),
    ("kill-worker:node1:0@stage2", "N must be a whole number"),
    ("kill-worker:node1:two@stage2", "N must be a whole number"),
    ("restart-server:srv@stage2", "restart-server takes 0 argument(s)"),
    ("partition:node1@stage2", "partition takes 2 argument(s)"),
    ("partition:node1:-1@stage2", "SECONDS must be a number of seconds > 0"),
    ("partition:node1:inf@stage2", "SECONDS must be a number of seconds > 0"),
    ("restart-server@stage0", "bad trigger 'stage0'"),
    ("restart-server@later", "bad trigger 'later'"),
    ("restart-server@30", "bad trigger '30'"),
], ids=["no-trigger", "nothing-before-the-trigger", "unknown-kind", "kill-without-count",
        "kill-with-an-empty-host", "kill-zero-workers", "kill-a-word-of-workers",
        "restart-with-an-argument", "partition-without-seconds", "partition-negative-seconds",
        "partition-infinite-seconds", "stage-zero", "unknown-trigger", "seconds-without-unit"])
def test_a_bad_spec_is_refused_with_a_message_showing_the_form(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_fault(text)
    assert message in str(info.value)
    assert repr(text.strip()) in str(info.value)
    assert "@TRIGGER" in str(info.value) or "stageN" in str(info.value)


def test_the_faults_setting_is_a_list_and_a_lone_string_is_refused() -> None:
    assert parse_faults(None) == ()
    assert [f.kind for f in parse_faults(["restart-server@stage1", "kill-worker:a:1@2s"])] \
        == ["restart-server", "kill-worker"]
    with pytest.raises(ConfigError, match="expected a list of fault specs"):
        parse_faults("restart-server@stage1")


# ------------------------------------------------------------------------------ planning


def contention_levels(stages: int) -> tuple[list[list[str]], dict[str, tuple[str, ...]]]:
    plan = expand(parse_spec(contention_workflow(stages, 3)))
    return plan.levels, {j.name: j.depends_on for j in plan.jobs}


def test_the_stages_of_the_contention_workflow_are_the_depths_between_its_barriers() -> None:
    assert stage_depths(*contention_levels(3)) == [0, 2, 4]


def test_a_workflow_without_barriers_has_one_stage_per_depth() -> None:
    levels = [["a", "b"], ["c"], ["d", "e"]]
    assert stage_depths(levels, {"c": ("a",), "d": ("c",), "e": ("c",)}) == [0, 1, 2]


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    data = {"all": {"children": {
        "server": {"hosts": {"srv": {"torc_root": "/srv/root"}}},
        "workers": {"hosts": {"w1": None, "tb2": {"testbed_link": "tstb-v2",
                                                  "testbed_namespace": "tstb-tb2"}}},
    }}}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return load_inventory(path)


def plan(inventory: Inventory, *texts: str, links: tuple[str, ...] = ("tstb-v2",)
         ) -> tuple[PlannedFault, ...]:
    return plan_faults(parse_faults(texts), inventory, stages=[0, 2, 4], default_root="/d",
                       run_id="R1", link_exists=lambda name: name in links)


def test_each_kind_is_planned_on_its_host_with_its_method_and_the_stage_depth(
        inventory: Inventory) -> None:
    kill, restart, stop, down = plan(inventory, "kill-worker:w1:1@stage2",
                                     "restart-server@stage3", "partition:w1:5@1s",
                                     "partition:tb2:5@stage1")
    assert (kill.method, kill.host, kill.run_dir, kill.depth) == ("sigkill", "w1", "/d/run/R1", 2)
    assert (restart.method, restart.host, restart.run_dir, restart.depth) == (
        "restart", "srv", "/srv/root/run/R1", 4)
    assert (stop.method, stop.host, stop.depth) == ("sigstop", "w1", None)
    assert (down.method, down.host, down.link, down.depth) == ("link-down", CONTROLLER,
                                                               "tstb-v2", 0)


@pytest.mark.parametrize(("text", "message"), [
    ("kill-worker:nope:1@stage1", "host 'nope' is not in the inventory"),
    ("kill-worker:srv:1@stage1", "host 'srv' runs no workers"),
    ("partition:nope:5@stage1", "host 'nope' is not in the inventory"),
    ("restart-server@stage4", "the workflow has 3 stage(s) (stage1..stage3), no stage4"),
    ("kill-worker:w1:1@stage9", "no stage9"),
], ids=["unknown-host", "host-without-workers", "unknown-partition-host", "missing-stage",
        "far-missing-stage"])
def test_a_fault_that_does_not_fit_the_run_is_refused_before_any_host_is_touched(
        inventory: Inventory, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan(inventory, text)
    assert message in str(info.value) and text in str(info.value)
    assert info.value.exit_code == 2


def test_a_testbed_host_whose_link_is_missing_is_refused_with_what_to_do(
        inventory: Inventory) -> None:
    with pytest.raises(ConfigError, match="testbed-up"):
        plan(inventory, "partition:tb2:5@stage1", links=())


# ------------------------------------------------------------------------------ triggers


def snap(depth: int, total: int, completed: int) -> ProgressSnapshot:
    depths = (DepthProgress(0, 10, 10, completed=10),
              DepthProgress(depth, total, completed, completed=completed))
    return ProgressSnapshot(elapsed_s=1.0, total=100, done=0, counts={}, depths=depths)


@pytest.mark.parametrize(("completed", "due"), [(0, False), (49, False), (50, True), (80, True)])
def test_a_stage_trigger_fires_once_half_of_its_jobs_completed(
        inventory: Inventory, completed: int, due: bool) -> None:
    [fault] = plan(inventory, "kill-worker:w1:1@stage2")
    assert is_due(fault, snap(2, 100, completed), elapsed_s=0.0) is due


def test_a_stage_trigger_waits_while_the_server_does_not_answer(inventory: Inventory) -> None:
    [fault] = plan(inventory, "kill-worker:w1:1@stage2")
    assert not is_due(fault, None, elapsed_s=999.0)


def test_a_seconds_trigger_fires_that_long_after_the_workers_started(
        inventory: Inventory) -> None:
    [fault] = plan(inventory, "kill-worker:w1:1@2.5s")
    assert not is_due(fault, None, elapsed_s=2.4)
    assert is_due(fault, None, elapsed_s=2.5)


# ------------------------------------------------------------------------------ injector


def injector(faults: tuple[PlannedFault, ...], answers: dict[str, Any],
             events: list[tuple[str, str]] | None = None, *,
             server_answers: bool = True) -> tuple[FaultInjector, dict[str, FakeTransport]]:
    """An injector whose hosts answer each command from ``answers`` (first matching word)."""
    def handler(command: str) -> tuple[int, str, str]:
        return next((v for k, v in answers.items() if k in command), (0, "", ""))

    transports: dict[str, FakeTransport] = {}

    def transport_for(host: str) -> FakeTransport:
        return transports.setdefault(host, FakeTransport(handler, host=host))

    clock = iter(float(t) for t in range(100, 200))
    inj = FaultInjector(faults, transport_for=transport_for, port=8123,
                        server_answers=lambda: server_answers, ready_timeout_s=0.3,
                        on_fault=lambda r, e: events.append((r.planned.spec.spec, e))
                        if events is not None else None,
                        clock=lambda: next(clock))
    return inj, transports


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not met")


def test_a_kill_records_the_killed_pids_and_ends_when_it_is_injected(
        inventory: Inventory) -> None:
    events: list[tuple[str, str]] = []
    inj, transports = injector(plan(inventory, "kill-worker:w1:2@1s"),
                               {"kill -KILL": (0, "pids: 11 12\n", "")}, events)
    inj.poll(None, elapsed_s=0.5)
    assert inj.pending
    inj.poll(None, elapsed_s=1.0)
    inj.stop()
    [entry] = inj.to_record()
    assert entry == {"spec": "kill-worker:w1:2@1s", "kind": "kill-worker", "host": "w1",
                     "count": 2, "seconds": None, "trigger": "1s", "injected_at": 100.0,
                     "ended_at": 100.0, "method": "sigkill", "targets": [11, 12], "error": None}
    assert events == [("kill-worker:w1:2@1s", "injected"), ("kill-worker:w1:2@1s", "ended")]
    assert not inj.pending
    [(_, command)] = transports["w1"].calls
    assert "cd /d/run/R1" in command and "[ $n -lt 2 ]" in command


def test_a_partial_kill_records_what_died_and_why_the_rest_did_not(
        inventory: Inventory) -> None:
    inj, _ = injector(plan(inventory, "kill-worker:w1:3@1s"),
                      {"kill -KILL": (3, "pids: 11\n", "only 1 of 3 worker processes of this "
                                                       "run were running\n")})
    inj.poll(None, elapsed_s=5.0)
    inj.stop()
    [entry] = inj.to_record()
    assert entry["targets"] == [11] and entry["injected_at"] == 100.0
    assert entry["error"] == "w1: only 1 of 3 worker processes of this run were running"


def test_a_kill_that_finds_no_worker_is_recorded_as_not_injected(inventory: Inventory) -> None:
    inj, _ = injector(plan(inventory, "kill-worker:w1:1@1s"),
                      {"kill -KILL": (3, "pids:\n", "only 0 of 1 worker processes\n")})
    inj.poll(None, elapsed_s=5.0)
    inj.stop()
    [entry] = inj.to_record()
    assert entry["injected_at"] is None and entry["targets"] == []
    assert "only 0 of 1" in entry["error"]


def test_a_partition_ends_early_with_sigcont_when_the_run_stops(inventory: Inventory) -> None:
    events: list[tuple[str, str]] = []
    inj, transports = injector(plan(inventory, "partition:w1:60@1s"),
                               {"kill -STOP": (0, "pids: 21 22\n", "")}, events)
    inj.poll(None, elapsed_s=1.0)
    wait_for(lambda: events)
    inj.stop()
    [entry] = inj.to_record()
    assert (entry["method"], entry["targets"]) == ("sigstop", [21, 22])
    assert entry["injected_at"] == 100.0 and entry["ended_at"] == 101.0
    assert "kill -CONT" in transports["w1"].calls[-1][1]
    assert "21 22" in transports["w1"].calls[-1][1]
    assert events[-1] == ("partition:w1:60@1s", "ended")


def test_a_testbed_partition_takes_the_link_down_then_up_on_the_controller(
        inventory: Inventory) -> None:
    inj, transports = injector(plan(inventory, "partition:tb2:0.05@1s"), {})
    inj.poll(None, elapsed_s=1.0)
    wait_for(lambda: inj.records[0].ended_at is not None)
    inj.stop()
    assert [c[1] for c in transports[CONTROLLER].calls] == [
        "ip link set tstb-v2 down", "ip link set tstb-v2 up"]
    assert inj.to_record()[0]["targets"] == ["tstb-v2"]
    assert "tb2" not in transports


def test_a_link_that_cannot_go_down_is_an_error_and_nothing_is_restored(
        inventory: Inventory) -> None:
    inj, transports = injector(plan(inventory, "partition:tb2:5@1s"),
                               {"down": (2, "", "RTNETLINK answers: Operation not permitted")})
    inj.poll(None, elapsed_s=1.0)
    inj.stop()
    [entry] = inj.to_record()
    assert entry["injected_at"] is None and "Operation not permitted" in entry["error"]
    assert len(transports[CONTROLLER].calls) == 1


def test_a_restart_ends_when_the_restarted_server_answers(inventory: Inventory) -> None:
    inj, transports = injector(plan(inventory, "restart-server@1s"),
                               {"server.pid": (0, "pids: 31\nnew:32\n", "")})
    inj.poll(None, elapsed_s=1.0)
    inj.stop()
    [entry] = inj.to_record()
    assert (entry["host"], entry["method"], entry["targets"]) == (None, "restart", [31])
    assert entry["ended_at"] is not None and entry["error"] is None
    command = transports["srv"].calls[0][1]
    assert "cd /srv/root/run/R1" in command and command.endswith(" 8123")


def test_a_restarted_server_that_never_answers_is_an_error(inventory: Inventory) -> None:
    inj, _ = injector(plan(inventory, "restart-server@1s"),
                      {"server.pid": (0, "pids: 31\nnew:32\n", "")}, server_answers=False)
    inj.poll(None, elapsed_s=1.0)
    wait_for(lambda: inj.records[0].error is not None)
    inj.stop()
    [entry] = inj.to_record()
    assert entry["ended_at"] is None and "did not answer within 0.3 s" in entry["error"]


def test_a_fault_never_triggered_is_recorded_with_nulls(inventory: Inventory) -> None:
    [fault] = plan(inventory, "partition:w1:5@stage3")
    assert FaultRecord(fault).to_record() == {
        "spec": "partition:w1:5@stage3", "kind": "partition", "host": "w1", "count": None,
        "seconds": 5.0, "trigger": "stage3", "injected_at": None, "ended_at": None,
        "method": "sigstop", "targets": [], "error": None}


def test_no_fault_starts_after_the_injector_was_stopped(inventory: Inventory) -> None:
    inj, transports = injector(plan(inventory, "kill-worker:w1:1@1s"), {})
    inj.stop()
    inj.poll(None, elapsed_s=9.0)
    assert transports == {} and inj.to_record()[0]["injected_at"] is None
