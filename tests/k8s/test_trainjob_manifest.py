"""The TrainJob and TrainingRuntime built from a JobSpec (pretrain/k8s/trainjob.py) and their rules."""
from __future__ import annotations

import pytest

from data_pipeline.errors import UserError
from pretrain.k8s.manifest import JobSpec
from pretrain.k8s.trainjob import RESERVED_ENV, train_job, train_job_errors, training_runtime
from tests.k8s.validation import resource_errors


@pytest.mark.parametrize("spec", [
    JobSpec(name="default", trainer="tlm"),
    JobSpec(name="cpu", trainer="tlm", gpus=0, cpus="2", memory="4Gi", shm_size="1Gi", nproc_per_node=2),
    JobSpec(name="eight-gpus", trainer="discrim", workers=3, gpus=8, image="registry.example.com/p:1"),
    JobSpec(name="one-node", trainer="paired", workers=0, data_pvc="corpus", checkpoints_pvc="ckpt"),
], ids=lambda spec: spec.name)
def test_rendered_trainjob_is_admitted_by_the_v2_schema_and_webhook_rules(spec: JobSpec) -> None:
    assert resource_errors(train_job(spec)) == []


def test_training_runtime_is_admitted_with_a_valid_pod() -> None:
    assert resource_errors(training_runtime()) == []


def test_trainjob_pins_nodes_and_processes_per_node() -> None:
    trainer = train_job(JobSpec(name="j", trainer="tlm", workers=3, gpus=0))["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 1)
    trainer = train_job(JobSpec(name="j", trainer="tlm", gpus=4))["spec"]["trainer"]
    assert trainer["numProcPerNode"] == 4 and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 4


def test_runtime_leaves_command_and_resources_to_the_trainjob() -> None:
    """The controller merges resources; a GPU in the runtime would stay on a CPU job."""
    runtime = training_runtime()
    node = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]
    assert node["name"] == "node" and node["template"]["metadata"]["labels"] == {
        "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    container = node["template"]["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "node" and "command" not in container and "resources" not in container
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}


def test_elastic_job_is_refused_with_the_api_that_has_it() -> None:
    with pytest.raises(UserError, match="Trainer v2 has no elastic policy; .* with --api pytorchjob"):
        train_job(JobSpec(name="j", trainer="tlm", workers=4, min_workers=2))


@pytest.mark.parametrize("name, message", [
    ("My_Job", "metadata.name 'My_Job' must be a DNS-1035 label"),
    ("x" * 56, "is too long: pod hostname"),
])
def test_bad_names_are_one_line_user_errors(name: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        train_job(JobSpec(name=name, trainer="tlm"))
    assert "\n" not in str(err.value)


def test_reserved_torch_env_and_unpinned_processes_are_rules_errors() -> None:
    job = train_job(JobSpec(name="j", trainer="tlm"))
    job["spec"]["trainer"]["env"] = [{"name": "PET_NNODES", "value": "3"}, {"name": "OMP_NUM_THREADS", "value": "1"}]
    del job["spec"]["trainer"]["numProcPerNode"]
    assert train_job_errors(job) == [
        "spec.trainer.env must not set PET_NNODES: the torch plugin sets them",
        'spec.trainer.numProcPerNode must be set (the default "auto" starts one process per CPU)']
    assert set(RESERVED_ENV) == {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR",
                                 "PET_MASTER_PORT"}
