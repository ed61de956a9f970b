"""RunSettings: defaults, validation with messages naming the setting, config precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from torc_stress.cluster.settings import DEFAULTS, RunSettings, settings_from_config
from torc_stress.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def build(config: dict | None = None, **overrides: object) -> RunSettings:
    return settings_from_config(config, overrides, project_root=ROOT)


def test_the_defaults_run_the_seed_workflow_on_the_local_inventory() -> None:
    settings = build()
    assert settings.inventory == ROOT / "inventory" / "local.yml"
    assert settings.workflow_path == ROOT / "workflows" / "database_contention.yaml"
    assert not settings.generates_workflow
    assert settings.on_unreachable == "abort"


def test_relative_paths_are_resolved_against_the_project_root() -> None:
    settings = build(runs_root="some/runs")
    assert settings.runs_root == ROOT / "some" / "runs"


def test_flags_override_the_config_and_none_means_not_given() -> None:
    settings = build({"deadline": 30, "max_parallel_jobs": 2}, deadline=None, max_parallel_jobs=8)
    assert settings.deadline_s == 30.0
    assert settings.max_parallel_jobs == 8


def test_string_values_from_the_command_line_are_cast() -> None:
    settings = build(stages="3", jobs_per_stage="20", deadline="12.5", report="false")
    assert (settings.stages, settings.jobs_per_stage, settings.deadline_s) == (3, 20, 12.5)
    assert settings.report is False
    assert settings.generates_workflow


@pytest.mark.parametrize(("overrides", "names"), [
    ({"stages": 3}, "--stages and --jobs-per-stage"),
    ({"jobs_per_stage": 3}, "--stages and --jobs-per-stage"),
    ({"stages": -1, "jobs_per_stage": 2}, "stages"),
    ({"stages": "two", "jobs_per_stage": 2}, "stages"),
    ({"stages": 1.5, "jobs_per_stage": 2}, "stages"),
    ({"max_parallel_jobs": 0}, "max_parallel_jobs"),
    ({"deadline": 0}, "deadline_s"),
    ({"deadline": "soon"}, "deadline"),
    ({"on_unreachable": "ignore"}, "on_unreachable"),
    ({"log_level": "loud"}, "log_level"),
    ({"report": "maybe"}, "report"),
    ({"inventory": "inventory/nope.yml"}, "inventory/nope.yml"),
    ({"workflow": "workflows/nope.yaml"}, "workflows/nope.yaml"),
])
def test_an_invalid_setting_is_refused_with_a_message_naming_it(overrides: dict,
                                                                 names: str) -> None:
    with pytest.raises(ConfigError, match=names.replace("-", r"\-")) as info:
        build(**overrides)
    assert info.value.exit_code == 2


def test_a_workflow_and_a_generated_size_cannot_both_be_given() -> None:
    with pytest.raises(ConfigError, match="either --workflow"):
        build(workflow="workflows/database_contention.yaml", stages=2, jobs_per_stage=2)


def test_an_unknown_config_key_is_refused_with_the_known_keys() -> None:
    with pytest.raises(ConfigError, match="stress.stagez.*stages"):
        build({"stagez": 2})


def test_a_non_empty_run_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        build(run_dir=str(tmp_path))


def test_the_record_for_run_json_holds_plain_values_only() -> None:
    record = build(stages=2, jobs_per_stage=5, faults=["restart-server@stage2"]).to_record()
    assert record["stages"] == 2
    assert record["faults"] == ["restart-server@stage2"]
    assert all(isinstance(v, (str, int, float, bool, dict, list, type(None)))
               for v in record.values())


def test_every_default_is_a_plain_type_invoke_can_cast_env_vars_to() -> None:
    # NOTE: faults is a list: invoke.yaml and --fault set it; env vars cannot hold lists
    assert all(isinstance(v, (str, int, float, bool)) for k, v in DEFAULTS.items()
               if k != "faults")
    assert DEFAULTS["faults"] == []


@pytest.mark.parametrize(("config", "overrides", "specs"), [
    ({}, {}, []),
    ({"faults": ["restart-server@stage2"]}, {}, ["restart-server@stage2"]),
    ({"faults": ["restart-server@stage2"]}, {"faults": ["kill-worker:a:1@3s"]},
     ["kill-worker:a:1@3s"]),
], ids=["none", "from-invoke-yaml", "flags-replace-the-config-list"])
def test_faults_come_from_the_config_list_or_the_flags(config: dict, overrides: dict,
                                                       specs: list[str]) -> None:
    assert [f.spec for f in build(config, **overrides).faults] == specs


def test_a_bad_fault_spec_in_the_settings_is_a_config_error_with_exit_code_2() -> None:
    with pytest.raises(ConfigError, match="unknown kind 'boom'") as info:
        build(faults=["boom@stage1"])
    assert info.value.exit_code == 2


def test_a_lease_is_passed_only_when_set_and_must_not_be_negative() -> None:
    assert build().lease_s is None
    assert build({"lease": 2}).lease_s == 2.0
    assert build(lease="0").lease_s == 0.0
    with pytest.raises(ConfigError, match="setting lease"):
        build(lease=-1)
