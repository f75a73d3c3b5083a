"""The pod, PyTorchJob and ConfigMap of one training run, built from a JobSpec.

This module is the one definition of the pod (`pod_template`) and of the PyTorchJob that wraps it;
pretrain/k8s/trainjob.py wraps the same pod in a Trainer v2 TrainJob and TrainingRuntime.
`python -m pretrain.submit render|submit` emit the job, and
k8s/base/pytorchjob.yaml is its rendering for `JobSpec(name="pretrain", trainer="tlm")` (the tests in
tests/k8s keep the two identical, and every kustomize overlay equal to a `render` with its flags).

Layout inside every pod: the config at /etc/pretrain/config.yaml (ConfigMap), the data PVC read-only at
/data, which is also the working directory, so relative paths in a config name files on the data
volume, and the checkpoints PVC at /checkpoints, where the run lives in /checkpoints/<job name>.
An object-store job (`run_root` set: s3://bucket/runs) has no PVC at all: the run lives in
<run_root>/<job name>, the config reads its shards and vocab by URI, whole shards are cached on an
emptyDir at /cache, the working directory is /tmp, and the credentials come from a Secret as env vars.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from data_pipeline.errors import UserError
from data_pipeline.object_store import is_uri
from pretrain.k8s.rules import pytorch_job_errors

TRAINERS = ("tlm", "paired", "discrim")
CONFIG_DIR = "/etc/pretrain"
CONFIG_KEY = "config.yaml"
DATA_DIR = "/data"
CHECKPOINTS_DIR = "/checkpoints"
CACHE_DIR = "/cache"                  # an object-store job's shard cache (emptyDir)
DEFAULT_CACHE_SIZE = "20Gi"
CACHE_FILL = 0.9                      # data.cache_limit as a share of the cache volume: room for a download
MASTER_PORT = 23456
RUN_AS = 10001                        # the image's non-root user (Dockerfile)
JOB_NAME_LABEL = "training.kubeflow.org/job-name"   # set by the operator on every pod of a job

GRACE_PERIOD_S, TORCHRUN_SHUTDOWN_S = 90, 75   # SIGTERM -> SIGKILL: the kubelet's, and torchrun's to its ranks
AGENT_RESTARTS = 3                    # torchrun's in-place restarts of its ranks before its container fails
RESTARTS_PER_POD = 3                  # runPolicy.backoffLimit per pod of the job (see pytorch_job)
CPUS_PER_GPU, MEMORY_GIB_PER_GPU, SHM_GIB_PER_GPU = 8, 32, 8   # per-pod defaults (a CPU pod counts as 1)
# Keys the job's command sets itself, which an override would silently replace.
JOB_SETS = {"train.run_dir": f"{CHECKPOINTS_DIR}/<job name>", "train.resume": "auto"}
JOB_SETS_WHY = {"train.run_dir": "pick the run directory with --name (a new name starts from scratch)",
                "train.resume": "a new --name starts from scratch"}
# ... and in an object-store job, the shard cache on its volume.
CACHE_SETS = {"data.cache_dir": CACHE_DIR, "data.cache_limit": f"{CACHE_FILL:.0%} of --cache-size / processes"}
# The variables an S3 client reads, each from the key of the same name in the job's Secret; the
# endpoint (MinIO, Ceph) and region are optional there.
CREDENTIAL_KEYS = (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False),
                   ("AWS_ENDPOINT_URL", True), ("AWS_DEFAULT_REGION", True))

# A Kubernetes resource quantity ("8", "500m", "32Gi"), as the API server's schema spells it.
_QUANTITY = re.compile(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                       r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
_BYTES = re.compile(r"([0-9]+)([KMGTPE]i?)?")
_UNITS = {"": 1, **{f"{p}i": 1024 ** (i + 1) for i, p in enumerate("KMGTPE")},
          **{p: 1000 ** (i + 1) for i, p in enumerate("KMGTPE")}}


@dataclass(frozen=True)
class PodWiring:
    """What the job API around the pod decides: the trainer container's name, the pod label that
    carries the job's name (JOB_NAME), and the ports its controller reads from the container."""

    container: str
    job_name_label: str
    ports: tuple[dict[str, Any], ...] = ()


PYTORCHJOB_WIRING = PodWiring("pytorch", JOB_NAME_LABEL, ({"name": "pytorchjob-port", "containerPort": MASTER_PORT},))


@dataclass(frozen=True)
class JobSpec:
    """How to run one training job; the defaults are one 1-GPU master plus one 1-GPU worker."""

    name: str
    trainer: str                      # tlm | paired | discrim: runs `python -m pretrain.<trainer>`
    image: str = "pretrain-service:latest"
    workers: int = 1                  # Worker pods (besides the Master; all pods when elastic)
    min_workers: int | None = None    # set: elastic job, no Master, between min_workers and workers pods
    gpus: int = 1                     # per pod; 0 runs on CPU
    nproc_per_node: int | None = None  # processes per pod; default: one per GPU, 1 on CPU
    cpus: str | None = None           # per pod (request); default 8 per GPU (8 on CPU)
    memory: str | None = None         # per pod (request = limit; /dev/shm counts against it); 32Gi per GPU
    shm_size: str | None = None       # /dev/shm for DataLoader workers; 8Gi per GPU
    data_pvc: str = "pretrain-data"
    checkpoints_pvc: str = "pretrain-checkpoints"
    run_root: str | None = None       # set (s3://bucket/runs): an object-store job, no PVCs (module doc)
    object_store_secret: str | None = None  # Secret with the CREDENTIAL_KEYS, as the container's env
    cache_size: str = DEFAULT_CACHE_SIZE    # an object-store job's shard cache volume
    overrides: tuple[str, ...] = ()   # dotted config overrides appended to the command

    def __post_init__(self) -> None:
        per_gpu = max(self.gpus, 1)
        for flag, value in (("cpus", f"{CPUS_PER_GPU * per_gpu}"), ("memory", f"{MEMORY_GIB_PER_GPU * per_gpu}Gi"),
                            ("shm_size", f"{SHM_GIB_PER_GPU * per_gpu}Gi")):
            if getattr(self, flag) is None:
                object.__setattr__(self, flag, value)
        if self.trainer not in TRAINERS:
            raise UserError(f"unknown trainer {self.trainer!r}; use one of {', '.join(TRAINERS)}")
        if self.workers < 0 or self.gpus < 0:
            raise UserError(f"workers and gpus must be >= 0, got workers={self.workers} gpus={self.gpus}")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.workers:
            raise UserError(f"an elastic job needs 1 <= min_workers <= workers, got min_workers="
                            f"{self.min_workers} workers={self.workers}")
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            raise UserError(f"nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if self.gpus and self.nproc_per_node not in (None, self.gpus):
            raise UserError(f"--nproc-per-node {self.nproc_per_node} with --gpus {self.gpus}: each process drives "
                            f"one GPU, so a pod runs as many processes as it has GPUs; drop --nproc-per-node "
                            f"or set --gpus {self.nproc_per_node}")
        for flag, value in (("cpus", self.cpus), ("memory", self.memory), ("shm_size", self.shm_size)):
            if not _QUANTITY.match(value):
                raise UserError(f"{flag} {value!r} is not a Kubernetes quantity; write e.g. 8, 500m, 32Gi")
        if self.run_root is not None and not is_uri(self.run_root):
            raise UserError(f"--run-root {self.run_root!r} is not an object-store URI; write e.g. s3://bucket/runs "
                            "(without --run-root the run lives on the checkpoints PVC)")
        if not _BYTES.fullmatch(self.cache_size):
            raise UserError(f"cache_size {self.cache_size!r} is not a whole number of bytes; write e.g. 20Gi, 500Mi")
        for item in self.overrides:
            if "=" not in item or item.startswith("-"):
                raise UserError(f"override {item!r} is not section.key=value (e.g. train.max_steps=1000)")
            key = item.split("=", 1)[0].strip()
            if key in JOB_SETS:
                raise UserError(f"override {item!r}: the job sets {key}={JOB_SETS[key]} so that restarted and "
                                f"re-submitted pods resume from its checkpoints; {JOB_SETS_WHY[key]}")
            if self.object_store and key in CACHE_SETS:
                raise UserError(f"override {item!r}: an object-store job sets {key}={CACHE_SETS[key]}, the "
                                "shard cache volume; size it with --cache-size")

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None

    @property
    def object_store(self) -> bool:
        return self.run_root is not None

    @property
    def run_dir(self) -> str:
        """Where this job's run lives (a run re-created under the same name resumes there)."""
        return run_dir(self.name, self.run_root)

    @property
    def cache_limit(self) -> int:
        """data.cache_limit in bytes: each process's share of the cache volume (every rank keeps its own
        cache), less room for a download in flight."""
        number, unit = _BYTES.fullmatch(self.cache_size).groups()
        return int(int(number) * _UNITS[unit or ""] * CACHE_FILL) // self.procs_per_pod

    @property
    def procs_per_pod(self) -> int:
        return self.nproc_per_node or max(self.gpus, 1)

    @property
    def config_map_name(self) -> str:
        return config_map_name(self.name)


def config_map_name(job_name: str) -> str:
    return f"{job_name}-config"


def run_dir(job_name: str, run_root: str | None = None) -> str:
    """Where a job's checkpoints live; stable per job name, so a re-created job resumes there."""
    return f"{(run_root or CHECKPOINTS_DIR).rstrip('/')}/{job_name}"


def pod_security() -> dict[str, Any]:
    """Every pod runs as the image's non-root user, with the runtime's default seccomp profile."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def container_security() -> dict[str, Any]:
    """Every container: a read-only root filesystem, no privileges (HOME is therefore /tmp, an emptyDir)."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


HOME_ON_TMP = {"name": "HOME", "value": "/tmp"}


def config_map(spec: JobSpec, config_text: str) -> dict[str, Any]:
    """The ConfigMap holding the training config the pods read from /etc/pretrain/config.yaml."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": spec.config_map_name},
            "data": {CONFIG_KEY: config_text}}


def pytorch_job(spec: JobSpec) -> dict[str, Any]:
    """The PyTorchJob; raises UserError if the operator's admission webhook would reject it."""
    replica_specs: dict[str, Any] = {}
    if not spec.elastic:
        replica_specs["Master"] = _replica_spec(spec, 1)
    if spec.workers:
        replica_specs["Worker"] = _replica_spec(spec, spec.workers)
    job_spec: dict[str, Any] = {
        # Always explicit: the operator's default "auto" makes torchrun start one process per CPU.
        "nprocPerNode": str(spec.procs_per_pod),
        # The operator fails the job once the container restarts of all its pods add up to backoffLimit,
        # and a crash of the pod whose torchrun hosts the rendezvous (the Master, else the first Worker)
        # restarts every pod's container: so many restarts per pod, or one such crash ends a large job.
        # cleanPodPolicy None keeps finished pods, so `submit logs` still reads the master's log.
        "runPolicy": {"backoffLimit": RESTARTS_PER_POD * sum(r["replicas"] for r in replica_specs.values()),
                      "cleanPodPolicy": "None"},
    }
    if spec.elastic:
        job_spec["elasticPolicy"] = {"rdzvBackend": "c10d", "minReplicas": spec.min_workers,
                                     "maxReplicas": spec.workers, "maxRestarts": 3}
    job_spec["pytorchReplicaSpecs"] = replica_specs
    job = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
           "metadata": {"name": spec.name}, "spec": job_spec}
    errors = pytorch_job_errors(job)
    if errors:
        raise UserError(f"the training operator would reject job {spec.name!r}: {'; '.join(errors)}")
    return job


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML for `kubectl apply -f -`, multi-line strings (the config) as blocks."""
    return yaml.dump_all(objects, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)


def container_command(spec: JobSpec) -> list[str]:
    """torchrun reads nodes, rank, rendezvous and processes per node from the operator's PET_* env.

    run_dir comes from the pod's job-name label (JOB_NAME below), so a job renamed by kustomize still
    checkpoints under its own name; resume=auto makes a restarted or re-created job continue from
    the newest checkpoint there.
    """
    cache = [f"data.cache_dir={CACHE_DIR}", f"data.cache_limit={spec.cache_limit}"] if spec.object_store else []
    return ["torchrun", *rendezvous_flags(spec), "-m", f"pretrain.{spec.trainer}", "--config",
            f"{CONFIG_DIR}/{CONFIG_KEY}", f"train.run_dir={run_dir('$(JOB_NAME)', spec.run_root)}",
            "train.resume=auto", *cache, *spec.overrides]


def rendezvous_flags(spec: JobSpec) -> list[str]:
    """A Master + Workers job rendezvous through torchrun's c10d backend, hosted by the Master's torchrun,
    and torchrun restarts its own ranks in place (AGENT_RESTARTS) instead of failing its container.

    The operator's PET_* env alone selects torchrun's static rendezvous, whose store lives as long as
    the Master's torchrun and keeps every round's keys: a Worker whose container restarts while the
    Master's torchrun is still failing reads the old round's ranks and peer addresses from it, its
    ranks connect to dead peers and fail, and each failure is one more container restart against
    runPolicy.backoffLimit. The c10d rendezvous counts rounds: the restarted Worker waits for the next
    one, which the Master's torchrun opens as soon as its ranks fail (or, healthy, sees a node waiting).
    Ranks are ordered by pod hostname, so the Master's ranks come first (<job>-master-0 sorts before
    <job>-worker-N) and rank 0 writes its log. An elastic job gets all of this from its elasticPolicy.
    """
    if spec.elastic:
        return []
    return ["--rdzv-backend=c10d", "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)", "--rdzv-id=$(JOB_NAME)",
            f"--max-restarts={AGENT_RESTARTS}"]


def credentials_env(secret: str | None) -> list[dict[str, Any]]:
    """The object store's credentials, from the keys of Secret `secret` (none without one: then the
    pod's service account or node role must grant access, e.g. IRSA or GKE workload identity)."""
    if secret is None:
        return []
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key,
                                                         **({"optional": True} if optional else {})}}}
            for key, optional in CREDENTIAL_KEYS]


def _replica_spec(spec: JobSpec, replicas: int) -> dict[str, Any]:
    # OnFailure restarts a crashed container in place (same pod name and address); torchrun then
    # rejoins and the trainer resumes from the newest checkpoint.
    return {"replicas": replicas, "restartPolicy": "OnFailure", "template": pod_template(spec, PYTORCHJOB_WIRING)}


def pod_template(spec: JobSpec, wiring: PodWiring) -> dict[str, Any]:
    """The one pod of every job API: image, command, resources, non-root security, volumes."""
    requests: dict[str, Any] = {"cpu": spec.cpus, "memory": spec.memory}
    limits: dict[str, Any] = {"memory": spec.memory}
    if spec.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = spec.gpus
    container = {
        "name": wiring.container,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "workingDir": "/tmp" if spec.object_store else DATA_DIR,
        "command": container_command(spec),
        "env": [
            {"name": "JOB_NAME",
             "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{wiring.job_name_label}']"}}},
            dict(HOME_ON_TMP),
            # torchrun waits this long for its ranks after forwarding SIGTERM, then kills them: shorter
            # than the pod's grace period, so it is torchrun, not the kubelet, that decides.
            {"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": str(TORCHRUN_SHUTDOWN_S)},
            # Each rendezvous round gets a fresh store for the ranks' process group: torchrun's shared one
            # keeps the previous round's peer addresses, which the ranks of an in-place restart then read.
            {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"},
            *credentials_env(spec.object_store_secret),    # last: a TrainJob carries them (trainjob.py)
        ],
        **({"ports": [dict(port) for port in wiring.ports]} if wiring.ports else {}),
        "resources": {"requests": requests, "limits": limits},
        "securityContext": container_security(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            *([{"name": "shard-cache", "mountPath": CACHE_DIR}] if spec.object_store else
              [{"name": "data", "mountPath": DATA_DIR, "readOnly": True},
               {"name": "checkpoints", "mountPath": CHECKPOINTS_DIR}]),
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {"spec": {
        # After SIGTERM, time for every rank to finish its step and write the stop checkpoint.
        "terminationGracePeriodSeconds": GRACE_PERIOD_S,
        "securityContext": pod_security(),
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": spec.config_map_name}},
            *([{"name": "shard-cache", "emptyDir": {"sizeLimit": spec.cache_size}}] if spec.object_store else
              [{"name": "data", "persistentVolumeClaim": {"claimName": spec.data_pvc, "readOnly": True}},
               {"name": "checkpoints", "persistentVolumeClaim": {"claimName": spec.checkpoints_pvc}}]),
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }}


class _BlockDumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings as `|` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)
