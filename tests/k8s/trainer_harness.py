"""Runs a rendered TrainJob on its TrainingRuntime here the way Kubeflow Trainer v2 (release 2.3) and
JobSet run it in a cluster, each node pod a local container (operator_harness.local_pod: PID and mount
namespaces, read-only mounts, kubelet-style deletion).

The controller's steps, as the harness takes them (pkg/runtime/core/trainingruntime.go, the jobset
and torch plugins of kubeflow/trainer v2.3):
- the runtime's replicated Job marked `trainjob-ancestor-step: trainer` is the node Job; the
  TrainJob's runtimePatches are strategic-merged into its pod (volumes by name, replacing the
  runtime's volume of that name; container volumeMounts by mountPath); any other patched field is
  refused rather than ignored;
- the `node` container takes the TrainJob's image, command and args, its env upserted by name (a
  secretKeyRef resolved from the Secrets among the resources, as operator_harness says), and
  resourcesPerNode merged over the runtime's resources;
- numNodes (TrainJob, else mlPolicy) pods, one per completion index of an Indexed Job, hostname
  <job>-node-0-<index> in the subdomain <job>, labelled with the JobSet's and Job's names and index;
- the torch plugin upserts PET_NNODES, PET_NPROC_PER_NODE (numProcPerNode; "auto" without a GPU
  means the CPU request, rounded up), PET_NODE_RANK (fieldRef to the completion-index annotation),
  PET_MASTER_ADDR (<job>-node-0-0.<job>), PET_MASTER_PORT (29500) and the container port 29500;
- a failed node container restarts in place (restartPolicy OnFailure) until the Job's backoffLimit
  is spent; the TrainJob completes when every node exits 0.
Network stand-in: each node pod is named as its hostname and resolves every node's hostname, short
and in the job's subdomain (<job>-node-0-<i>.<job>), through its own /etc/hosts to that node's loopback
address (127.0.0.2, ...), as JobSet's headless Service does; the trainer port is a free local port
(pods share this machine's network namespace).
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

from pretrain.k8s.trainjob import ANCESTOR_LABEL, NODE, RESERVED_ENV, TRAINER_PORT, train_job_errors
from tests.k8s.operator_harness import LocalJob, Pod, local_pod
from tests.pretrain.processes import free_port

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
_ANNOTATION = re.compile(r"metadata\.annotations\['([^']+)'\]")


def node_pod_spec(runtime: dict[str, Any], job: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """The node pod the controller builds from `runtime` and `job` (torch env included), the number of
    nodes, and the node Job's backoffLimit."""
    errors = train_job_errors(job)
    if errors:
        raise ValueError(f"the Trainer v2 webhook would reject TrainJob {job['metadata']['name']}: {errors}")
    ref = job["spec"]["runtimeRef"]
    if (ref.get("kind"), ref["name"]) != (runtime["kind"], runtime["metadata"]["name"]):
        raise ValueError(f"TrainJob names runtime {ref}, not {runtime['kind']} {runtime['metadata']['name']}")
    rjobs = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    node_job = copy.deepcopy(next(r for r in rjobs if r["template"]["metadata"]["labels"].get(ANCESTOR_LABEL)
                                  == "trainer"))
    pod = node_job["template"]["spec"]["template"]["spec"]
    for patch in job["spec"].get("runtimePatches", []):
        for rjob_patch in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            if rjob_patch["name"] == node_job["name"]:
                _merge_pod_patch(pod, rjob_patch["template"]["spec"]["template"]["spec"])
    trainer = job["spec"].get("trainer") or {}
    container = next(c for c in pod["containers"] if c["name"] == NODE)
    for key in ("image", "command", "args"):
        if key in trainer:
            container[key] = trainer[key]
    _upsert(container.setdefault("env", []), trainer.get("env", []), "name")
    resources = container.setdefault("resources", {})
    for kind, quantities in trainer.get("resourcesPerNode", {}).items():
        resources[kind] = {**resources.get(kind, {}), **quantities}
    nodes = trainer.get("numNodes", runtime["spec"]["mlPolicy"].get("numNodes", 1))
    name = job["metadata"]["name"]
    _upsert(container["env"], torch_env(name, nodes, trainer.get("numProcPerNode", "auto"), resources), "name")
    _upsert(container.setdefault("ports", []), [{"containerPort": TRAINER_PORT}], "containerPort")
    return pod, nodes, node_job["template"]["spec"].get("backoffLimit", 6)


def torch_env(name: str, nodes: int, nproc: int | str, resources: dict[str, Any]) -> list[dict[str, Any]]:
    """The torch plugin's variables for the node container of TrainJob `name`."""
    if nproc == "auto" and not any(key.endswith("/gpu") for key in resources.get("limits", {})):
        cpus = resources.get("requests", {}).get("cpu") or resources.get("limits", {}).get("cpu") or "0"
        nproc = max(1, math.ceil(float(cpus[:-1]) / 1000 if cpus.endswith("m") else float(cpus)))
    return [{"name": "PET_NNODES", "value": str(nodes)},
            {"name": "PET_NPROC_PER_NODE", "value": str(nproc)},
            {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
                "fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}},
            {"name": "PET_MASTER_ADDR", "value": f"{name}-{NODE}-0-0.{name}"},
            {"name": "PET_MASTER_PORT", "value": str(TRAINER_PORT)}]


class LocalTrainJob(LocalJob):
    """The node pods of one TrainJob, run as local containers; `claims` maps PVC claim names to directories.
    `overrides` are appended to the node container's command (as a kustomize patch would), to shrink a
    GPU recipe to what a CPU finishes in seconds."""

    def __init__(self, resources: list[dict[str, Any]], claims: dict[str, Path], workdir: Path,
                 overrides: tuple[str, ...] = ()) -> None:
        job = next(r for r in resources if r["kind"] == "TrainJob")
        runtimes = [r for r in resources if r["kind"] == "TrainingRuntime"]
        # The one the TrainJob names (node_pod_spec refuses any other).
        runtime = next((r for r in runtimes if r["metadata"]["name"] == job["spec"]["runtimeRef"]["name"]), runtimes[0])
        self.config_maps = {r["metadata"]["name"]: r for r in resources if r["kind"] == "ConfigMap"}
        self.secrets = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Secret"}
        self.claims, self.workdir = claims, workdir
        self.name = job["metadata"]["name"]
        pod, nodes, self.backoff_limit = node_pod_spec(runtime, job)
        next(c for c in pod["containers"] if c["name"] == NODE)["command"] += overrides
        port = str(free_port())
        self.hosts = workdir / f"{self.name}-hosts"
        self.hosts.write_text("127.0.0.1 localhost\n" + "".join(
            f"127.0.0.{2 + index} {self.name}-{NODE}-0-{index}.{self.name} {self.name}-{NODE}-0-{index}\n"
            for index in range(nodes)))
        self.pods = [self._node(pod, index, port) for index in range(nodes)]

    def _node(self, pod: dict[str, Any], index: int, port: str) -> Pod:
        labels = {"jobset.sigs.k8s.io/jobset-name": self.name, "jobset.sigs.k8s.io/replicatedjob-name": NODE,
                  "jobset.sigs.k8s.io/job-index": "0", COMPLETION_INDEX: str(index)}
        annotations = {COMPLETION_INDEX: str(index)}
        container = copy.deepcopy(next(c for c in pod["containers"] if c["name"] == NODE))
        # The plugin's variables come last in the container's env; their fieldRefs are to annotations,
        # which local_pod does not resolve, so they are resolved here and added on top.
        added: dict[str, str] = {}
        for variable in container["env"]:
            if variable["name"] in RESERVED_ENV:
                field = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
                added[variable["name"]] = annotations[_ANNOTATION.fullmatch(field)[1]] if field else variable["value"]
        container["env"] = [v for v in container["env"] if v["name"] not in RESERVED_ENV]
        added["PET_MASTER_PORT"] = port                # 29500 on every pod's own address; here one free port
        node = local_pod(f"{self.name}-{NODE}-0-{index}", pod, container, labels, added, self.claims,
                         self.config_maps, self.workdir, self.secrets)
        node.hosts = self.hosts
        return node


def _merge_pod_patch(pod: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if key == "volumes":
            # Pod volumes merge by name with retainKeys: the patch's volume replaces the runtime's.
            _upsert(pod.setdefault("volumes", []), value, "name")
        elif key == "containers":
            for container_patch in value:
                container = next(c for c in pod["containers"] if c["name"] == container_patch["name"])
                for field, items in container_patch.items():
                    if field == "volumeMounts":
                        _upsert(container.setdefault("volumeMounts", []), items, "mountPath")
                    elif field != "name":
                        raise ValueError(f"runtimePatches container field {field!r} is not modelled by this harness")
        else:
            raise ValueError(f"runtimePatches pod field {key!r} is not modelled by this harness")


def _upsert(items: list[dict[str, Any]], updates: list[dict[str, Any]], key: str) -> None:
    """Replace the item with each update's key, in place, or append the update."""
    for update in updates:
        index = next((i for i, item in enumerate(items) if item.get(key) == update[key]), None)
        if index is None:
            items.append(copy.deepcopy(update))
        else:
            items[index] = copy.deepcopy(update)
