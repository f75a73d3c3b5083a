"""The PyTorchJob built from a JobSpec (pretrain/k8s/manifest.py) and the operator's rules (rules.py)."""
from __future__ import annotations

import copy

import pytest
import yaml

from data_pipeline.errors import UserError
from pretrain.k8s.manifest import JobSpec, config_map, pytorch_job, to_yaml
from pretrain.k8s.rules import pytorch_job_errors
from tests.k8s.validation import resource_errors


def _container(job: dict, rtype: str = "Master") -> dict:
    return job["spec"]["pytorchReplicaSpecs"][rtype]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("spec", [
    JobSpec(name="default", trainer="tlm"),
    JobSpec(name="cpu", trainer="tlm", gpus=0, cpus="2", memory="4Gi", shm_size="1Gi"),
    JobSpec(name="eight-gpus", trainer="discrim", workers=3, gpus=8),
    JobSpec(name="master-only", trainer="paired", workers=0),
    JobSpec(name="elastic", trainer="tlm", workers=4, min_workers=2),
    JobSpec(name="overrides", trainer="tlm", overrides=("train.max_steps=5", "optim.lr=3e-4")),
], ids=lambda spec: spec.name)
def test_rendered_job_is_admitted_by_schema_and_operator_rules(spec: JobSpec) -> None:
    assert resource_errors(pytorch_job(spec)) == []
    assert resource_errors(config_map(spec, "train: {}\n")) == []


def test_job_has_one_master_and_the_requested_workers() -> None:
    replicas = pytorch_job(JobSpec(name="j", trainer="tlm", workers=3))["spec"]["pytorchReplicaSpecs"]
    assert {rtype: rspec["replicas"] for rtype, rspec in replicas.items()} == {"Master": 1, "Worker": 3}


def test_master_only_job_has_no_worker_spec() -> None:
    replicas = pytorch_job(JobSpec(name="j", trainer="tlm", workers=0))["spec"]["pytorchReplicaSpecs"]
    assert list(replicas) == ["Master"]


def test_elastic_job_has_only_workers_and_an_elastic_policy() -> None:
    spec = pytorch_job(JobSpec(name="j", trainer="tlm", workers=4, min_workers=2))["spec"]
    assert list(spec["pytorchReplicaSpecs"]) == ["Worker"]
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4
    assert spec["elasticPolicy"] == {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 4, "maxRestarts": 3}


def test_nproc_per_node_defaults_to_one_per_gpu_and_one_on_cpu() -> None:
    assert pytorch_job(JobSpec(name="j", trainer="tlm", gpus=8))["spec"]["nprocPerNode"] == "8"
    assert pytorch_job(JobSpec(name="j", trainer="tlm", gpus=0))["spec"]["nprocPerNode"] == "1"
    assert pytorch_job(JobSpec(name="j", trainer="tlm", gpus=0, nproc_per_node=4))["spec"]["nprocPerNode"] == "4"


def test_gpus_are_requested_and_limited_per_pod_and_absent_on_cpu() -> None:
    gpu = _container(pytorch_job(JobSpec(name="j", trainer="tlm", gpus=4)))["resources"]
    assert gpu["requests"]["nvidia.com/gpu"] == gpu["limits"]["nvidia.com/gpu"] == 4
    cpu = _container(pytorch_job(JobSpec(name="j", trainer="tlm", gpus=0)))["resources"]
    assert "nvidia.com/gpu" not in cpu["requests"] and "nvidia.com/gpu" not in cpu["limits"]


def test_command_runs_the_trainer_under_torchrun_with_run_dir_resume_and_overrides() -> None:
    job = pytorch_job(JobSpec(name="j", trainer="paired", overrides=("train.max_steps=5",)))
    assert _container(job)["command"] == [
        "torchrun", "--rdzv-backend=c10d", "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)",
        "--rdzv-id=$(JOB_NAME)", "--max-restarts=3", "-m", "pretrain.paired", "--config", "/etc/pretrain/config.yaml",
        "train.run_dir=/checkpoints/$(JOB_NAME)", "train.resume=auto", "train.max_steps=5"]
    elastic = pytorch_job(JobSpec(name="j", trainer="paired", workers=2, min_workers=1))
    assert elastic["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"][:4] == [
        "torchrun", "-m", "pretrain.paired", "--config"]   # the elasticPolicy's PET_RDZV_* set the rendezvous


def test_backoff_limit_allows_three_container_restarts_per_pod() -> None:
    # A crashed Master restarts every pod's container: a fixed limit would end a large job at once.
    assert pytorch_job(JobSpec(name="j", trainer="tlm", workers=7))["spec"]["runPolicy"]["backoffLimit"] == 24
    assert pytorch_job(JobSpec(name="j", trainer="tlm", workers=4, min_workers=2))["spec"]["runPolicy"][
        "backoffLimit"] == 12


def test_job_name_variable_comes_from_the_operators_pod_label() -> None:
    env = {e["name"]: e for e in _container(pytorch_job(JobSpec(name="j", trainer="tlm")))["env"]}
    assert env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['training.kubeflow.org/job-name']"


def test_pods_mount_config_data_read_only_and_checkpoints_writable() -> None:
    job = pytorch_job(JobSpec(name="j", trainer="tlm", data_pvc="corpus", checkpoints_pvc="ckpt"))
    mounts = {m["mountPath"]: m for m in _container(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"]}
    assert mounts["/data"]["readOnly"] and volumes["data"]["persistentVolumeClaim"] == {
        "claimName": "corpus", "readOnly": True}
    assert not mounts["/checkpoints"].get("readOnly") and volumes["checkpoints"]["persistentVolumeClaim"] == {
        "claimName": "ckpt"}
    assert volumes["config"]["configMap"]["name"] == "j-config"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def test_pods_run_as_non_root_without_privileges() -> None:
    pod = pytorch_job(JobSpec(name="j", trainer="tlm"))["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    context = pod["containers"][0]["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"] == {"drop": ["ALL"]}


def test_config_map_carries_the_config_text_and_renders_it_as_a_block() -> None:
    spec = JobSpec(name="j", trainer="tlm")
    text = "train:\n  max_steps: 10\n"
    rendered = to_yaml([config_map(spec, text), pytorch_job(spec)])
    assert "config.yaml: |\n    train:\n      max_steps: 10\n" in rendered
    assert list(yaml.safe_load_all(rendered))[0]["data"]["config.yaml"] == text


@pytest.mark.parametrize("kwargs, message", [
    ({"trainer": "bert"}, "unknown trainer 'bert'"),
    ({"workers": -1}, "workers and gpus must be >= 0"),
    ({"workers": 2, "min_workers": 3}, "1 <= min_workers <= workers"),
    ({"nproc_per_node": 0}, "nproc_per_node must be >= 1"),
    ({"memory": "32GB"}, "memory '32GB' is not a Kubernetes quantity"),
    ({"overrides": ("max_steps",)}, "override 'max_steps' is not section.key=value"),
    ({"name": "My_Job"}, "metadata.name 'My_Job' must be a DNS-1035 label"),
    ({"name": "x" * 56}, "is too long: pod service"),
])
def test_bad_job_settings_are_one_line_user_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        pytorch_job(JobSpec(**{"name": "j", "trainer": "tlm", **kwargs}))
    assert "\n" not in str(err.value)


def _broken(edit) -> dict:
    job = copy.deepcopy(pytorch_job(JobSpec(name="job", trainer="tlm")))
    edit(job)
    return job


@pytest.mark.parametrize("job, message", [
    (_broken(lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2)),
     "Master.replicas must be 1"),
    (_broken(lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas=0)),
     "Worker.replicas must be at least 1"),
    (_broken(lambda j: _container(j).update(name="trainer")), "must have a container named pytorch"),
    (_broken(lambda j: _container(j, "Worker").update(image="")), "containers[0].image is required"),
    (_broken(lambda j: _container(j).update(ports=[{"name": "http", "containerPort": 80}])),
     "needs a port named pytorchjob-port"),
    (_broken(lambda j: j["spec"].pop("nprocPerNode")), "spec.nprocPerNode must be set"),
    (_broken(lambda j: j["spec"].update(elasticPolicy={"minReplicas": 1, "maxReplicas": 2})),
     "must not have a Master"),
    (_broken(lambda j: j["spec"]["pytorchReplicaSpecs"].update(Chief=j["spec"]["pytorchReplicaSpecs"]["Worker"])),
     "Chief: unsupported replica type"),
    (_broken(lambda j: j["metadata"].update(name="9lives")), "must be a DNS-1035 label"),
], ids=["master-replicas", "worker-replicas", "container-name", "image", "port", "nproc", "elastic-master",
        "replica-type", "name"])
def test_operator_rules_catch_each_broken_job(job: dict, message: str) -> None:
    errors = pytorch_job_errors(job)
    assert len(errors) == 1 and message in errors[0]
