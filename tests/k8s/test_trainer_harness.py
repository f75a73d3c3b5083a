"""The local stand-in for Trainer v2: the node pod it builds from our runtime and a TrainJob, and the
torch plugin's env contract."""
from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.k8s.manifest import JobSpec, config_map, pod_template
from pretrain.k8s.trainjob import TRAINJOB_WIRING, train_job, training_runtime
from tests.k8s.trainer_harness import LocalTrainJob, node_pod_spec, torch_env
from tests.k8s.validation import resource_errors


@pytest.mark.parametrize("storage", [{"data_pvc": "corpus", "checkpoints_pvc": "ckpt"},
                                     {"run_root": "s3://bucket/runs", "object_store_secret": "s3", "cache_size": "2Gi"}],
                         ids=["pvcs", "object-store"])
def test_controller_builds_exactly_the_one_pod_plus_the_torch_contract(storage) -> None:
    """One definition of the pod: runtime + TrainJob give manifest.pod_template's pod for the job."""
    spec = JobSpec(name="demo", trainer="paired", workers=2, gpus=0, cpus="3", memory="6Gi", shm_size="1Gi",
                   image="registry.example.com/p:2", overrides=("train.max_steps=4",), **storage)
    pod, nodes, backoff_limit = node_pod_spec(training_runtime(spec.object_store), train_job(spec))
    assert (nodes, backoff_limit) == (3, 3)
    container = pod["containers"][0]
    assert container.pop("ports") == [{"containerPort": 29500}]
    assert container["env"][-5:] == [
        {"name": "PET_NNODES", "value": "3"}, {"name": "PET_NPROC_PER_NODE", "value": "1"},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "PET_MASTER_ADDR", "value": "demo-node-0-0.demo"}, {"name": "PET_MASTER_PORT", "value": "29500"}]
    del container["env"][-5:]
    assert pod == {**pod_template(spec, TRAINJOB_WIRING)["spec"], "restartPolicy": "OnFailure"}
    assert resource_errors({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "demo-node-0-0"},
                            "spec": pod}) == []


def test_auto_processes_per_node_is_the_cpu_request_without_a_gpu() -> None:
    def nproc(nproc, resources) -> str:
        return next(v["value"] for v in torch_env("j", 1, nproc, resources) if v["name"] == "PET_NPROC_PER_NODE")
    assert nproc("auto", {"requests": {"cpu": "8"}}) == "8"
    assert nproc("auto", {"requests": {"cpu": "1500m"}}) == "2"
    assert nproc("auto", {"requests": {"cpu": "8"}, "limits": {"nvidia.com/gpu": 2}}) == "auto"
    assert nproc(2, {"requests": {"cpu": "8"}}) == "2"


def test_local_nodes_get_their_completion_index_as_rank_and_one_local_master(tmp_path: Path) -> None:
    spec = JobSpec(name="demo", trainer="tlm", gpus=0, overrides=("train.max_steps=4",))
    claims = {"pretrain-data": tmp_path / "data", "pretrain-checkpoints": tmp_path / "checkpoints"}
    job = LocalTrainJob([config_map(spec, "train: {}\n"), training_runtime(), train_job(spec)], claims, tmp_path)
    node0, node1 = job.pods
    assert (node0.name, node1.name) == ("demo-node-0-0", "demo-node-0-1")
    assert (node0.env["PET_NODE_RANK"], node1.env["PET_NODE_RANK"]) == ("0", "1")
    assert node0.env["PET_MASTER_ADDR"] == node1.env["PET_MASTER_ADDR"] == "demo-node-0-0.demo"
    assert node0.hosts == node1.hosts and node0.hosts.read_text().splitlines()[1:] == [
        "127.0.0.2 demo-node-0-0.demo demo-node-0-0", "127.0.0.3 demo-node-0-1.demo demo-node-0-1"]
    assert node0.env["PET_MASTER_PORT"] == node1.env["PET_MASTER_PORT"] != "29500"
    assert (node0.env["PET_NNODES"], node0.env["PET_NPROC_PER_NODE"]) == ("2", "1")
    assert node0.env["JOB_NAME"] == "demo" and job.backoff_limit == 3
    port = node0.env["PET_MASTER_PORT"]
    assert node0.command[:7] == ["torchrun", "--rdzv-backend=c10d", f"--rdzv-endpoint=demo-node-0-0.demo:{port}",
                                 "--rdzv-id=demo", "--max-restarts=3", "-m", "pretrain.tlm"]
    assert node0.command[9] == f"train.run_dir={claims['pretrain-checkpoints']}/demo"
    assert node0.cwd == claims["pretrain-data"] and claims["pretrain-data"] in node0.read_only
