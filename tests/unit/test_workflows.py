"""Tests of torc_stress.workflows: the contention workflow generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from torc_stress.errors import ConfigError
from torc_stress.spec import expand, load_spec, parse_spec
from torc_stress.workflows import contention_workflow, write_workflow

SEED = Path(__file__).resolve().parents[2] / "workflows" / "database_contention.yaml"


def test_the_default_contention_workflow_is_the_seed_job_for_job() -> None:
    generated = expand(parse_spec(contention_workflow(5, 1000)))
    seed = expand(load_spec(SEED))
    assert generated.jobs == seed.jobs
    assert generated.levels == seed.levels
    assert generated.resource_requirements == seed.resource_requirements
    assert generated.name == seed.name


@pytest.mark.parametrize("stages,jobs_per_stage", [(1, 1), (2, 3), (3, 12000)])
def test_a_contention_workflow_has_stages_of_jobs_separated_by_barriers(
    stages: int, jobs_per_stage: int
) -> None:
    plan = expand(parse_spec(contention_workflow(stages, jobs_per_stage)))
    assert len(plan.jobs) == stages * (jobs_per_stage + 1)
    assert plan.edges == stages * jobs_per_stage + (stages - 1) * jobs_per_stage
    assert [len(level) for level in plan.levels] == [jobs_per_stage, 1] * stages
    assert plan.levels[-1] == ["workflow_complete"]
    assert plan.levels[0] == sorted(plan.levels[0])


@pytest.mark.parametrize("stages,jobs_per_stage", [(0, 10), (5, 0), (-1, 5), (True, 5), (2.5, 5)])
def test_sizes_below_one_or_not_integers_are_config_errors(
    stages: object, jobs_per_stage: object
) -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        contention_workflow(stages, jobs_per_stage)  # type: ignore[arg-type]


def test_a_written_workflow_loads_back_to_the_same_plan(tmp_path: Path) -> None:
    spec = contention_workflow(3, 7, name="custom")
    path = write_workflow(spec, tmp_path / "sub" / "wf.yaml")
    assert expand(load_spec(path)) == expand(parse_spec(spec))
    assert expand(load_spec(path)).name == "custom"
