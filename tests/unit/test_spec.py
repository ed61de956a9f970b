"""Tests of torc_stress.spec: loading, validation, parameter expansion, dependencies, levels."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import json5
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from torc_stress.errors import SpecError
from torc_stress.spec import (
    display_value,
    expand,
    load_spec,
    parse_parameter_value,
    parse_spec,
    substitute,
)

CASES = Path(__file__).parent / "spec_cases"
SEED = Path(__file__).resolve().parents[2] / "workflows" / "database_contention.yaml"
# sha256 of the user's own seed workflow.yaml, of which the repository ships a byte-for-byte copy
SEED_SHA256 = "26e37d97e472d378bd5d4cb8ab2a858436d17707680ea8714fff8c405abf4991"
BAD_SPECS = yaml.safe_load((CASES / "bad_specs.yaml").read_text())
EXPANSION = yaml.safe_load((CASES / "expansion.yaml").read_text())

SMALL_SPEC: dict[str, Any] = {
    "name": "small",
    "user": "tester",
    "jobs": [
        {"name": "prep", "command": "echo prep", "resource_requirements": "tiny"},
        {"name": "work_{i:02d}", "command": "echo {i}", "depends_on": ["prep"],
         "parameters": {"i": "1:3"}, "cancel_on_blocking_job_failure": False},
        {"name": "done", "command": "echo done", "depends_on_regexes": ["^work_"]},
    ],
    "resource_requirements": [{"name": "tiny", "num_cpus": 1, "memory": "1m"}],
}


def _job_names(spec: dict[str, Any]) -> list[str]:
    return [job.name for job in expand(parse_spec(spec)).jobs]


def _one_job(job: dict[str, Any], **workflow: Any) -> dict[str, Any]:
    return {"name": "w", "jobs": [job], **workflow}


@pytest.mark.parametrize("case", EXPANSION["values"], ids=lambda case: case["id"])
def test_a_parameter_value_expands_by_torcs_rules(case: dict[str, Any]) -> None:
    values = parse_parameter_value(case["raw"])
    assert values == case["values"]
    assert [type(v) for v in values] == [type(v) for v in case["values"]]


@pytest.mark.parametrize("case", EXPANSION["substitutions"], ids=lambda case: case["id"])
def test_substitution_formats_and_displays_values_like_torc(case: dict[str, Any]) -> None:
    params = [(name, value) for name, value in case["params"]]
    assert substitute(case["template"], params) == case["text"]


@given(st.integers(-50, 50), st.integers(-50, 50), st.integers(-7, 7).filter(bool))
def test_an_int_range_is_python_range_with_an_inclusive_end(
    start: int, end: int, step: int
) -> None:
    stop = end + 1 if step > 0 else end - 1
    assert parse_parameter_value(f"{start}:{end}:{step}") == list(range(start, stop, step))


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_display_round_trips_and_never_ends_in_dot_zero(value: float) -> None:
    text = display_value(value)
    assert float(text) == value
    assert not text.endswith(".0")
    assert "e" not in text


def test_jobs_expand_in_product_order_with_the_last_parameter_fastest() -> None:
    spec = _one_job({"name": "j_{a}_{b}", "command": "true",
                     "parameters": {"a": "1:2", "b": "[x,y]"}})
    assert _job_names(spec) == ["j_1_x", "j_1_y", "j_2_x", "j_2_y"]


def test_zip_mode_pairs_values_position_by_position() -> None:
    spec = _one_job({"name": "j_{a}_{b}", "command": "true", "parameter_mode": "zip",
                     "parameters": {"a": "1:3", "b": "[x,y,z]"}})
    assert _job_names(spec) == ["j_1_x", "j_2_y", "j_3_z"]


def test_use_parameters_picks_workflow_parameters_by_name() -> None:
    spec = _one_job({"name": "j_{lr:.1f}", "command": "train {lr}",
                     "use_parameters": ["lr", "nope"]},
                    parameters={"lr": "0.5:1.0:0.5", "other": "1:9"})
    plan = expand(parse_spec(spec))
    assert [(job.name, job.command) for job in plan.jobs] == [
        ("j_0.5", "train 0.5"), ("j_1.0", "train 1")]


def test_a_jobs_own_parameters_win_over_use_parameters() -> None:
    spec = _one_job({"name": "j{i}", "command": "true", "parameters": {"i": "1:2"},
                     "use_parameters": ["i"]}, parameters={"i": "7:9"})
    assert _job_names(spec) == ["j1", "j2"]


def test_parameters_substitute_into_every_templated_field() -> None:
    spec = {
        "name": "w",
        "jobs": [
            {"name": "prep_{i}", "command": "true", "parameters": {"i": "1:2"}},
            {"name": "run_{i}", "command": "run {i}", "invocation_script": "wrap {i}",
             "resource_requirements": "rr_{i}", "depends_on": ["prep_{i}"],
             "depends_on_regexes": ["^prep_{i}$"], "parameters": {"i": "1:2"}},
        ],
        "resource_requirements": [{"name": f"rr_{i}", "num_cpus": 1, "memory": "1m"}
                                  for i in (1, 2)],
    }
    run2 = expand(parse_spec(spec)).jobs[-1]
    assert (run2.name, run2.command, run2.invocation_script, run2.resource_requirements,
            run2.depends_on) == ("run_2", "run 2", "wrap 2", "rr_2", ("prep_2",))


def test_the_seed_expands_to_5005_jobs_9000_edges_and_10_levels() -> None:
    plan = expand(load_spec(SEED))
    assert (len(plan.jobs), plan.edges, len(plan.levels)) == (5005, 9000, 10)
    assert [len(level) for level in plan.levels] == [1000, 1] * 5
    assert plan.levels[0][0] == "stage1_0000" and plan.levels[0][-1] == "stage1_0999"
    assert plan.levels[1] == ["barrier_stage1_complete"]
    assert plan.levels[-1] == ["workflow_complete"]
    assert plan.jobs[7].command == "echo 'stage1 job 7'"
    assert plan.jobs[7].resource_requirements == "minimal"
    assert plan.jobs[1001].depends_on == ("barrier_stage1_complete",)
    assert len(plan.jobs[1000].depends_on) == 1000


def test_the_repository_copy_of_the_seed_is_the_users_file_unchanged() -> None:
    assert hashlib.sha256(SEED.read_bytes()).hexdigest() == SEED_SHA256


@pytest.mark.parametrize("suffix,dump", [
    (".yaml", lambda data: yaml.safe_dump(data)),
    (".json", json.dumps),
    (".json5", lambda data: "// a comment\n" + json5.dumps(data, trailing_commas=True)),
    (".spec", json.dumps),
], ids=["yaml", "json", "json5", "unknown-extension"])
def test_a_small_spec_loads_the_same_from_every_format(
    tmp_path: Path, suffix: str, dump: Any
) -> None:
    path = tmp_path / f"small{suffix}"
    path.write_text(dump(SMALL_SPEC))
    plan = expand(load_spec(path))
    assert plan == expand(parse_spec(SMALL_SPEC))
    assert plan.levels == [["prep"], ["work_01", "work_02", "work_03"], ["done"]]
    assert plan.user == "tester" and plan.edges == 6
    assert plan.jobs[1].cancel_on_blocking_job_failure is False


def test_a_file_that_is_no_format_names_every_parser_tried(tmp_path: Path) -> None:
    path = tmp_path / "broken.txt"
    path.write_text("{name: [unclosed\n")
    with pytest.raises(SpecError, match="yaml: .*json: .*json5: "):
        load_spec(path)


def test_a_missing_file_is_a_spec_error_with_exit_code_2(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read") as caught:
        load_spec(tmp_path / "absent.yaml")
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("case", BAD_SPECS, ids=lambda case: case["id"])
def test_a_bad_spec_fails_naming_the_job_and_the_field(case: dict[str, Any]) -> None:
    with pytest.raises(SpecError) as caught:
        expand(parse_spec(case["spec"]))
    error = caught.value
    assert (error.job, error.field) == (case["job"], case["field"])
    assert case["message"] in str(error)
    assert f"field {case['field']!r}" in str(error)
    if case["job"]:
        assert f"job {case['job']!r}" in str(error)
    assert error.exit_code == 2


def test_resource_requirements_convert_memory_and_runtime() -> None:
    spec = parse_spec(_one_job({"name": "a", "command": "true"}, resource_requirements=[
        {"name": "r", "num_cpus": 2, "memory": "100m", "runtime": "P0DT1M"}]))
    rr = spec.resource_requirements[0]
    assert (rr.memory_bytes, rr.runtime_seconds, rr.num_gpus, rr.num_nodes) == (
        100 * 1024**2, 60.0, 0, 1)


def test_an_empty_unsupported_field_is_accepted() -> None:
    assert _job_names(_one_job({"name": "a", "command": "true"}, files=[])) == ["a"]
