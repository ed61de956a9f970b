"""The full lifecycle through the real client users have: PyPI torc-client==0.35.0."""

from __future__ import annotations

import pytest

openapi_client = pytest.importorskip("torc.openapi_client")

from torc.openapi_client import (  # noqa: E402
    ApiClient,
    ComputeNodeModel,
    ComputeNodesApi,
    ComputeNodesResources,
    Configuration,
    JobModel,
    JobsApi,
    JobsModel,
    JobStatus,
    ResourceRequirementsApi,
    ResourceRequirementsModel,
    ResultModel,
    WorkflowModel,
    WorkflowsApi,
)

pytestmark = pytest.mark.integration


def _result(job_id: int, wid: int, node: int, rc: int, status: str) -> ResultModel:
    return ResultModel(
        job_id=job_id,
        workflow_id=wid,
        run_id=0,
        compute_node_id=node,
        return_code=rc,
        exec_time_minutes=0.01,
        completion_time="2026-01-01T00:00:00.000Z",
        status=JobStatus(status),
    )


def test_the_torc_client_drives_a_workflow_from_creation_to_completion(server) -> None:
    with ApiClient(Configuration(host=server.url)) as client:
        workflows, jobs_api = WorkflowsApi(client), JobsApi(client)
        wf = workflows.create_workflow(WorkflowModel(name="lifecycle", user="tester"))
        wid = wf.id
        rr = ResourceRequirementsApi(client).create_resource_requirements(
            ResourceRequirementsModel(
                workflow_id=wid, name="small", num_cpus=1, memory="1g", runtime="PT5M"
            )
        )
        assert ResourceRequirementsApi(client).get_resource_requirements(rr.id).memory == "1g"
        first = jobs_api.create_jobs(
            JobsModel(
                jobs=[
                    JobModel(
                        workflow_id=wid,
                        name=f"a{i}",
                        command="true",
                        resource_requirements_id=rr.id,
                    )
                    for i in range(4)
                ]
            )
        ).jobs
        a_ids = [j.id for j in first]
        second = jobs_api.create_jobs(
            JobsModel(
                jobs=[
                    JobModel(
                        workflow_id=wid,
                        name="ok_child",
                        command="true",
                        depends_on_job_ids=a_ids[:2],
                    ),
                    JobModel(
                        workflow_id=wid,
                        name="doomed",
                        command="true",
                        depends_on_job_ids=[a_ids[3]],
                    ),
                ]
            )
        ).jobs
        grandchild = jobs_api.create_job(
            JobModel(
                workflow_id=wid,
                name="doomed_child",
                command="true",
                depends_on_job_ids=[second[1].id],
            )
        )
        assert workflows.is_workflow_uninitialized(wid).is_uninitialized
        workflows.initialize_jobs(wid)
        assert not workflows.is_workflow_uninitialized(wid).is_uninitialized

        node = ComputeNodesApi(client).create_compute_node(
            ComputeNodeModel(
                workflow_id=wid,
                hostname="h1",
                pid=1,
                start_time="2026-01-01T00:00:00Z",
                num_cpus=4,
                memory_gb=8.0,
                num_gpus=0,
                num_nodes=1,
                compute_node_type="local",
            )
        )
        claimed = workflows.claim_next_jobs(wid, limit=2).jobs
        assert [j.id for j in claimed] == a_ids[:2]
        by_res = workflows.claim_jobs_based_on_resources(
            wid, 10, ComputeNodesResources(num_cpus=4, memory_gb=8.0, num_gpus=0, num_nodes=1)
        ).jobs
        assert [j.id for j in by_res] == a_ids[2:]
        for job in claimed + by_res:
            started = jobs_api.start_job(job.id, 0, node.id)
            assert started.status == JobStatus.RUNNING
        for job_id in a_ids[:3]:
            done = jobs_api.complete_job(
                job_id, "completed", 0, _result(job_id, wid, node.id, 0, "completed")
            )
            assert done.status == JobStatus.COMPLETED
        jobs_api.complete_job(a_ids[3], "failed", 0, _result(a_ids[3], wid, node.id, 1, "failed"))

        assert jobs_api.get_job(second[0].id).status == JobStatus.READY
        assert jobs_api.get_job(second[1].id).status == JobStatus.CANCELED
        assert jobs_api.get_job(grandchild.id).status == JobStatus.CANCELED
        assert not workflows.is_workflow_complete(wid).is_complete

        (last,) = workflows.claim_next_jobs(wid).jobs
        jobs_api.start_job(last.id, 0, node.id)
        jobs_api.complete_job(
            last.id, "completed", 0, _result(last.id, wid, node.id, 0, "completed")
        )
        assert workflows.is_workflow_complete(wid).is_complete
        listed = jobs_api.list_jobs(workflow_id=wid, status=JobStatus.CANCELED)
        assert listed.total_count == 2
        assert workflows.get_workflow_status(wid).jobs_by_status.completed == 4
        deps = workflows.list_job_dependencies(wid)
        assert deps.total_count == 4
        results = client_results(client, wid)
        assert sorted(r.return_code for r in results) == [0, 0, 0, 0, 1]


def client_results(client, wid: int) -> list:
    from torc.openapi_client import ResultsApi

    return ResultsApi(client).list_results(workflow_id=wid).items
