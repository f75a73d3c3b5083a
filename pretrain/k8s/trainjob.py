"""The Kubeflow Trainer v2 wrapper of the one pod (manifest.pod_template): our TrainingRuntime and a TrainJob.

Trainer v2 (trainer.kubeflow.org/v1alpha1, release 2.3) builds a JobSet from a runtime and a TrainJob:
- the TrainingRuntime `pretrain-service` (`pretrain-service-object-store` for an object-store job,
  whose pod has no PVC: manifest.py) holds what every job shares: the pod's security context, the
  trainer container `node` (our image, working directory, env, mounts) and default volumes, the
  `torch` ML policy, and a replicated Job `node` marked as the trainer step;
- each TrainJob names that runtime and sets its own image, command, node count, processes per node
  and resources, and patches in its own volumes (its ConfigMap, PVCs, /dev/shm size); its env holds
  the object store's credentials from its Secret, if any.
The controller's torch plugin then adds PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (the Job
completion index), PET_MASTER_ADDR (<job>-node-0-0.<job>) and PET_MASTER_PORT (29500) to the node
container, which `torchrun` reads exactly as it reads the PyTorchJob operator's. With no GPU the
plugin's default of "auto" processes means one per CPU, so numProcPerNode is always explicit.
"""
from __future__ import annotations

import re
from typing import Any

from data_pipeline.errors import UserError
from pretrain.k8s.manifest import JobSpec, PodWiring, credentials_env, pod_template

API_VERSION = "trainer.kubeflow.org/v1alpha1"
RUNTIME_NAME = "pretrain-service"
OBJECT_STORE_RUNTIME_NAME = "pretrain-service-object-store"
NODE = "node"                         # the trainer's replicated Job and container, as the torch plugin needs
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
TRAINER_PORT = 29500                  # the torch plugin's PET_MASTER_PORT
PATCH_MANAGER = "pretrain-service.local/submit"   # owner of our runtimePatches entry (a domain-prefixed path)
TRAINJOB_WIRING = PodWiring(NODE, "jobset.sigs.k8s.io/jobset-name")   # JobSet name == TrainJob name
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
BACKOFF_LIMIT = 3                     # container restarts per node Job before the TrainJob fails

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_MAX_LABEL = 63


def runtime_name(spec: JobSpec) -> str:
    return OBJECT_STORE_RUNTIME_NAME if spec.object_store else RUNTIME_NAME


def training_runtime(object_store: bool = False) -> dict[str, Any]:
    """Our TrainingRuntime: the pod of a default job (on PVCs, or in an object store) without its per-job
    command and resources."""
    default = JobSpec(name="pretrain", trainer="tlm", run_root="s3://pretrain/runs" if object_store else None)
    pod = pod_template(default, TRAINJOB_WIRING)["spec"]
    container = {key: value for key, value in pod["containers"][0].items() if key not in ("command", "resources")}
    # A Job's pods may not use restartPolicy Always; OnFailure restarts a crashed node in place, and
    # the trainer resumes from the newest checkpoint (train.resume=auto).
    pod_spec = {**pod, "restartPolicy": "OnFailure", "containers": [container]}
    node_job = {"name": NODE,
                "template": {"metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
                             "spec": {"completionMode": "Indexed", "backoffLimit": BACKOFF_LIMIT,
                                      "template": {"spec": pod_spec}}}}
    return {"apiVersion": API_VERSION, "kind": "TrainingRuntime",
            "metadata": {"name": runtime_name(default), "labels": {"trainer.kubeflow.org/framework": "torch"}},
            "spec": {"mlPolicy": {"numNodes": 1, "torch": {}},
                     "template": {"spec": {"replicatedJobs": [node_job]}}}}


def train_job(spec: JobSpec) -> dict[str, Any]:
    """The TrainJob of `spec` on our runtime; UserError if Trainer v2 cannot run it or would reject it."""
    if spec.elastic:
        raise UserError(f"job {spec.name!r}: Trainer v2 has no elastic policy; run an elastic job (--min-workers) "
                        "with --api pytorchjob")
    pod = pod_template(spec, TRAINJOB_WIRING)["spec"]
    container = pod["containers"][0]
    volumes_patch = {"name": NODE, "template": {"spec": {"template": {"spec": {"volumes": pod["volumes"]}}}}}
    credentials = credentials_env(spec.object_store_secret)
    job = {"apiVersion": API_VERSION, "kind": "TrainJob", "metadata": {"name": spec.name}, "spec": {
        "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": runtime_name(spec)},
        "trainer": {"image": container["image"], "command": container["command"], "numNodes": spec.workers + 1,
                    "numProcPerNode": spec.procs_per_pod, "resourcesPerNode": container["resources"],
                    **({"env": credentials} if credentials else {})},
        "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {
            "template": {"spec": {"replicatedJobs": [volumes_patch]}}}}],
    }}
    errors = train_job_errors(job)
    if errors:
        raise UserError(f"Trainer v2 would reject job {spec.name!r}: {'; '.join(errors)}")
    return job


def train_job_errors(job: dict[str, Any]) -> list[str]:
    """What the Trainer v2 webhook and JobSet demand of a TrainJob on our runtime beyond its schema."""
    name = job.get("metadata", {}).get("name", "")
    trainer = job.get("spec", {}).get("trainer") or {}
    errors = []
    if not _DNS1035.fullmatch(name) or len(name) > _MAX_LABEL:
        errors.append(f"metadata.name {name!r} must be a DNS-1035 label: lowercase letters, digits and '-', "
                      f"starting with a letter, ending with a letter or digit, at most {_MAX_LABEL} characters")
    else:
        # JobSet gives every pod the hostname <job>-node-0-<index>, itself a DNS label.
        longest = f"{name}-{NODE}-0-{trainer.get('numNodes', 1) - 1}"
        if len(longest) > _MAX_LABEL:
            errors.append(f"metadata.name {name!r} is too long: pod hostname {longest!r} exceeds {_MAX_LABEL} "
                          "characters")
    reserved = sorted({variable.get("name") for variable in trainer.get("env", [])} & set(RESERVED_ENV))
    if reserved:
        errors.append(f"spec.trainer.env must not set {', '.join(reserved)}: the torch plugin sets them")
    if "numProcPerNode" not in trainer:
        errors.append("spec.trainer.numProcPerNode must be set (the default \"auto\" starts one process per CPU)")
    return errors
