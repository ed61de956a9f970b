"""The workflows the benchmark runs: the seed's contention shape at any size."""

from __future__ import annotations

from torc_stress.spec import WorkflowPlan, expand, parse_spec
from torc_stress.workflows import contention_workflow


def contention_plan(stages: int, jobs_per_stage: int) -> WorkflowPlan:
    """Returns the expanded plan of ``stages`` x ``jobs_per_stage`` (5 x 1000 is the seed's).

    Raises:
        ConfigError: a size is not an integer >= 1.
    """
    spec = contention_workflow(stages, jobs_per_stage)
    return expand(parse_spec(spec, source=f"contention_workflow({stages}, {jobs_per_stage})"))
