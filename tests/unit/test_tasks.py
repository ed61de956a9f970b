"""tasks.py wiring: the task list, documented flags, config precedence, errors as invoke.Exit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from invoke import Config, Context, Exit

import tasks
from torc_stress.cluster import run as run_module
from torc_stress.cluster.run import RunOutcome

EXPECTED = {"cluster-run", "deploy", "start-server", "start-workers", "gather", "stop",
            "testbed-up", "testbed-down"}


def context(env: dict[str, str] | None = None, monkeypatch: pytest.MonkeyPatch | None = None,
            project: dict[str, Any] | None = None) -> Context:
    """A Context whose config is loaded the way `invoke` loads it (defaults, project, env)."""
    config = Config(lazy=True)
    config.load_collection(tasks.ns.configuration())
    if project is not None:
        config._set(_project=project)
        config.merge()
    if env and monkeypatch is not None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
    config.load_shell_env()
    return Context(config)


def test_invoke_lists_every_harness_task() -> None:
    assert set(tasks.ns.task_names) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_task_has_a_docstring_and_every_flag_has_help(name: str) -> None:
    task = tasks.ns[name]
    assert (task.__doc__ or "").strip()
    undocumented = [arg.name for arg in task.get_arguments() if not arg.help]
    assert not undocumented


def test_an_invoke_stress_env_var_overrides_the_declared_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c = context({"INVOKE_STRESS_DEADLINE": "42", "INVOKE_STRESS_JOBS_PER_STAGE": "7",
                 "INVOKE_STRESS_STAGES": "3"}, monkeypatch)
    settings = tasks._settings(c)
    assert settings.deadline_s == 42.0
    assert (settings.stages, settings.jobs_per_stage) == (3, 7)


def test_a_flag_beats_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    c = context({"INVOKE_STRESS_DEADLINE": "42"}, monkeypatch)
    assert tasks._settings(c, deadline="9").deadline_s == 9.0


def fake_outcome(tmp_path: Path, exit_code: int, outcome: str) -> RunOutcome:
    return RunOutcome(run_id="20260101T000000Z-abcd", run_dir=tmp_path, outcome=outcome,
                      exit_code=exit_code, message="" if not exit_code else "not finished",
                      workflow_id=1, total_jobs=3, counts={"completed": 3},
                      completed_per_host={"localhost": 3}, total_s=1.5,
                      phases={"run": {"start": 0.0, "end": 1.0, "seconds": 1.0}},
                      gathered=True)


def test_cluster_run_prints_the_summary_and_exits_zero_when_completed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    seen: dict[str, Any] = {}

    def fake(settings: Any, **callbacks: Any) -> RunOutcome:
        seen["settings"], seen["callbacks"] = settings, callbacks
        return fake_outcome(tmp_path, 0, "completed")

    monkeypatch.setattr(run_module, "cluster_run", fake)
    tasks.cluster_run(context(), stages="2", jobs_per_stage="5", report=False)
    out = capsys.readouterr().out
    assert "completed (exit 0)" in out and "localhost" in out
    assert (seen["settings"].stages, seen["settings"].jobs_per_stage) == (2, 5)
    assert set(seen["callbacks"]) == {"on_progress", "on_event", "on_playbook", "on_fault"}


@pytest.mark.parametrize(("code", "outcome"),
                         [(1, "deadline"), (4, "failed"), (130, "interrupted"),
                          (143, "interrupted"), (129, "interrupted")])
def test_cluster_run_exits_with_the_outcome_code_when_the_workflow_did_not_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, outcome: str) -> None:
    monkeypatch.setattr(run_module, "cluster_run",
                        lambda settings, **_: fake_outcome(tmp_path, code, outcome))
    with pytest.raises(Exit) as info:
        tasks.cluster_run(context(), report=False)
    assert info.value.code == code
    assert outcome in str(info.value.message)


def test_a_bad_flag_becomes_an_exit_with_a_message_not_a_traceback() -> None:
    with pytest.raises(Exit) as info:
        tasks.cluster_run(context(), stages="3")
    assert info.value.code == 2
    assert "--stages and --jobs-per-stage" in str(info.value.message)


def test_a_missing_inventory_is_reported_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(Exit) as info:
        tasks.deploy(context(), inventory=str(tmp_path / "absent.yml"))
    assert "absent.yml" in str(info.value.message)


def test_fault_flags_reach_the_settings_in_the_order_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake(settings: Any, **_: Any) -> RunOutcome:
        seen["settings"] = settings
        return fake_outcome(tmp_path, 0, "completed")

    monkeypatch.setattr(run_module, "cluster_run", fake)
    tasks.cluster_run(context(), report=False,
                      fault=["restart-server@stage3", "kill-worker:localhost:1@stage2"])
    assert [f.spec for f in seen["settings"].faults] == ["restart-server@stage3",
                                                         "kill-worker:localhost:1@stage2"]


def test_a_bad_fault_flag_is_an_exit_2_naming_the_spec() -> None:
    with pytest.raises(Exit) as info:
        tasks.cluster_run(context(), fault=["kill-worker:localhost@stage2"])
    assert info.value.code == 2
    assert "kill-worker:localhost@stage2" in str(info.value.message)


def test_the_report_is_skipped_when_a_second_signal_skipped_the_gather(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    outcome = fake_outcome(tmp_path, 143, "interrupted")
    outcome.gathered = False
    monkeypatch.setattr(run_module, "cluster_run", lambda settings, **_: outcome)
    monkeypatch.setattr(tasks, "_run_report", lambda run_dir: pytest.fail("report ran"))
    with pytest.raises(Exit) as info:
        tasks.cluster_run(context())
    assert info.value.code == 143
    assert "skipped the gather: no report" in capsys.readouterr().out


@pytest.mark.parametrize(("event", "expected"), [
    ("injected", "fault partition:w2:5@stage2: injected: SIGSTOP 11 12"),
    ("ended", "fault partition:w2:5@stage2: ended (SIGCONT 11 12)"),
    ("failed", "fault partition:w2:5@stage2: FAILED: w2: no worker"),
])
def test_a_fault_prints_one_line_when_injected_ended_or_failed(event: str, expected: str) -> None:
    from torc_stress.cluster.faults import FaultRecord, PlannedFault, parse_fault

    record = FaultRecord(PlannedFault(parse_fault("partition:w2:5@stage2"), "sigstop", "w2"),
                         targets=[11, 12], error="w2: no worker")
    assert tasks.format_fault(record, event) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("kill-worker:ghost:1@stage1", "host 'ghost' is not in the inventory"),
    ("restart-server@stage3", "the workflow has 2 stage(s) (stage1..stage2), no stage3"),
])
def test_a_fault_that_does_not_fit_the_run_exits_2_before_any_host_is_touched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, message: str) -> None:
    from torc_stress.cluster import harness

    monkeypatch.setattr(harness.Harness, "connections",
                        lambda self: pytest.fail("a host was touched"))
    with pytest.raises(Exit) as info:
        tasks.cluster_run(context(), stages="2", jobs_per_stage="3", runs_root=str(tmp_path),
                          fault=[spec])
    assert info.value.code == 2
    assert message in str(info.value.message) and spec in str(info.value.message)
