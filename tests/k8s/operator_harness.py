"""Runs a rendered PyTorchJob on this machine the way the Kubeflow training operator (v1, release 1.9)
runs it in a cluster, with each pod a local process.

For pod <job>-<type>-<index> the harness
- builds the environment the operator adds to the `pytorch` container: PYTHONUNBUFFERED; with a
  Master: MASTER_ADDR/PET_MASTER_ADDR (<job>-master-0), MASTER_PORT/PET_MASTER_PORT (the Master's
  pytorchjob-port), WORLD_SIZE (pods x nprocPerNode), RANK and PET_NODE_RANK (master 0, worker i ->
  i + 1), PET_NNODES (pods); with an elasticPolicy: PET_RDZV_ENDPOINT (<job>-worker-0 and the Worker's
  port unless rdzvHost/rdzvPort say otherwise), PET_RDZV_BACKEND (c10d), PET_NNODES (min:max, else the
  Worker replicas), PET_MAX_RESTARTS; always PET_NPROC_PER_NODE (nprocPerNode);
- resolves the container's own env (values and fieldRefs to the pod's name, namespace and the labels
  the operator puts on it) and expands $(VAR) in the command as the kubelet does;
- stands in for the cluster's network and volumes: every pod address is 127.0.0.1, the job's port
  is a free local port (pods share this machine's network namespace), each volumeMount's path in the
  command, env and workingDir becomes a local directory (a PVC: the directory given for its claim;
  a ConfigMap: a directory holding its keys as files; an emptyDir: a fresh directory);
- restarts a pod whose process fails, as restartPolicy OnFailure does, up to runPolicy.backoffLimit
  restarts for the whole job.
`run_batch_job` runs the single pod of a batch/v1 Job (data preparation, export) the same way.
"""
from __future__ import annotations

import contextlib
import copy
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.pretrain.processes import free_port, process_env

_FIELD_LABEL = re.compile(r"metadata\.labels\['([^']+)'\]")
_VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class JobFailed(Exception):
    """The job used up its restarts, or did not finish in time."""


@dataclass
class Pod:
    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    restarts: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> None:
        log = self.log_path.open("a")
        log.write(f"--- {self.name} start {self.restarts}\n")
        log.flush()
        self.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def kill(self) -> None:
        """SIGKILL every process of the pod, as stopping its container does."""
        if self.process is not None and self.process.poll() is None:
            for pid in _process_tree(self.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class LocalJob:
    """The pods of one PyTorchJob, run as processes; `claims` maps PVC claim names to directories."""

    def __init__(self, resources: list[dict[str, Any]], claims: dict[str, Path], workdir: Path) -> None:
        job = copy.deepcopy(next(r for r in resources if r["kind"] == "PyTorchJob"))
        self.config_maps = {r["metadata"]["name"]: r for r in resources if r["kind"] == "ConfigMap"}
        self.claims, self.workdir = claims, workdir
        self.name = job["metadata"]["name"]
        self.backoff_limit = job["spec"].get("runPolicy", {}).get("backoffLimit", 6)
        port = free_port()
        for rspec in job["spec"]["pytorchReplicaSpecs"].values():
            for p in _pytorch_container(rspec)["ports"]:
                if p["name"] == "pytorchjob-port":
                    p["containerPort"] = port
        self.pods = [self._pod(job, rtype, index)
                     for rtype, rspec in job["spec"]["pytorchReplicaSpecs"].items()
                     for index in range(rspec["replicas"])]

    def pod(self, name: str) -> Pod:
        return next(p for p in self.pods if p.name == name)

    def start(self) -> None:
        for pod in self.pods:
            pod.start()

    def kill(self) -> None:
        for pod in self.pods:
            pod.kill()

    def run_until(self, done, timeout_s: float, poll_s: float = 0.2) -> None:
        """Supervise the pods (restarting failed ones) until `done(self)` holds or every pod succeeded."""
        deadline = time.monotonic() + timeout_s
        while not done(self):
            codes = [pod.process.poll() for pod in self.pods]
            if all(code == 0 for code in codes):
                return
            for pod, code in zip(self.pods, codes, strict=True):
                if code not in (None, 0):
                    if sum(p.restarts for p in self.pods) >= self.backoff_limit:
                        raise JobFailed(f"{pod.name} exited {code} with no restarts left:\n{self.logs()}")
                    pod.restarts += 1
                    pod.start()
            if time.monotonic() > deadline:
                raise JobFailed(f"job {self.name} did not finish in {timeout_s:.0f}s:\n{self.logs()}")
            time.sleep(poll_s)

    def logs(self) -> str:
        return "\n".join(pod.log() for pod in self.pods)

    def _pod(self, job: dict[str, Any], rtype: str, index: int) -> Pod:
        labels = {"training.kubeflow.org/job-name": self.name, "training.kubeflow.org/operator-name":
                  "pytorchjob-controller", "training.kubeflow.org/replica-type": rtype.lower(),
                  "training.kubeflow.org/replica-index": str(index)}
        if rtype == "Master":
            labels["training.kubeflow.org/job-role"] = "master"
        hosts = {f"{self.name}-master-0": "127.0.0.1", f"{self.name}-worker-0": "127.0.0.1"}
        added = {key: _replace_all(value, hosts) for key, value in operator_env(job, rtype, index).items()}
        rspec = job["spec"]["pytorchReplicaSpecs"][rtype]
        return local_pod(f"{self.name}-{rtype.lower()}-{index}", rspec["template"]["spec"], _pytorch_container(rspec),
                         labels, added, self.claims, self.config_maps, self.workdir)


def run_batch_job(job: dict[str, Any], claims: dict[str, Path], workdir: Path, timeout_s: float) -> Pod:
    """Run a batch/v1 Job's (single) container to completion, as its one pod; JobFailed if it fails."""
    name = job["metadata"]["name"]
    spec = job["spec"]["template"]["spec"]
    pod = local_pod(f"{name}-0", spec, spec["containers"][0], {"batch.kubernetes.io/job-name": name}, {},
                    claims, {}, workdir)
    pod.start()
    try:
        code = pod.process.wait(timeout=timeout_s)
    finally:
        pod.kill()
    if code != 0:
        raise JobFailed(f"job {name} exited {code}:\n{pod.log()}")
    return pod


def local_pod(name: str, spec: dict[str, Any], container: dict[str, Any], labels: dict[str, str],
              added_env: dict[str, str], claims: dict[str, Path], config_maps: dict[str, dict[str, Any]],
              workdir: Path) -> Pod:
    """Pod `name` running `container` of pod `spec` here: volumes as local directories, the container's
    env resolved, then `added_env` (what a controller adds), and $(VAR)s expanded in its command."""
    mounts = _mounts(name, spec, container, claims, config_maps, workdir)
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        env[variable["name"]] = _localize(_env_value(variable, name, labels, env), mounts)
    env.update(added_env)
    command = [_localize(_expand(arg, env), mounts) for arg in container["command"] + container.get("args", [])]
    cwd = Path(_localize(container.get("workingDir", str(workdir)), mounts))
    return Pod(name, command, container_env(env), cwd, workdir / f"{name}.log")


def _mounts(pod: str, spec: dict[str, Any], container: dict[str, Any], claims: dict[str, Path],
            config_maps: dict[str, dict[str, Any]], workdir: Path) -> dict[str, Path]:
    """mountPath -> local directory, for every volumeMount of the container."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "persistentVolumeClaim" in volume:
            path = claims[volume["persistentVolumeClaim"]["claimName"]]
        elif "configMap" in volume:
            path = Path(tempfile.mkdtemp(prefix=f"{pod}-{mount['name']}-", dir=workdir))
            for key, text in config_maps[volume["configMap"]["name"]]["data"].items():
                (path / key).write_text(text)
        elif "emptyDir" in volume:
            path = Path(tempfile.mkdtemp(prefix=f"{pod}-{mount['name']}-", dir=workdir))
        else:
            raise ValueError(f"volume {mount['name']}: only PVC, ConfigMap and emptyDir volumes are supported")
        mounts[mount["mountPath"]] = path
    return mounts


def _process_tree(root: int) -> list[int]:
    """`root` and all its descendants. torchrun starts its workers in sessions of their own, so a
    process-group kill would leave them running, where a container's would not."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def container_env(env: dict[str, str]) -> dict[str, str]:
    """`env` on top of this process's environment minus launcher variables, with this Python's
    scripts (python, torchrun) first on PATH, as they are in the image."""
    bin_dir = str(Path(sys.executable).parent)
    return process_env({**env, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})


def operator_env(job: dict[str, Any], rtype: str, index: int) -> dict[str, str]:
    """The variables the operator appends to the pytorch container of pod <job>-<rtype>-<index>."""
    name, spec = job["metadata"]["name"], job["spec"]
    replica_specs = spec["pytorchReplicaSpecs"]
    nproc = spec.get("nprocPerNode", "auto")
    pods = sum(rspec["replicas"] for rspec in replica_specs.values())
    env = {"PYTHONUNBUFFERED": "1"}
    if "Master" in replica_specs:
        port = str(_port(replica_specs["Master"]))
        rank = str(index + 1 if rtype == "Worker" else index)
        env.update(MASTER_ADDR=f"{name}-master-0", PET_MASTER_ADDR=f"{name}-master-0", MASTER_PORT=port,
                   PET_MASTER_PORT=port, WORLD_SIZE=str(pods * (int(nproc) if nproc.isdigit() else 1)),
                   RANK=rank, PET_NODE_RANK=rank)
    elastic = spec.get("elasticPolicy")
    if elastic is None:
        env["PET_NNODES"] = str(pods)
    else:
        host = elastic.get("rdzvHost", f"{name}-worker-0")
        port = elastic.get("rdzvPort", _port(replica_specs["Worker"]))
        env.update(PET_RDZV_ENDPOINT=f"{host}:{port}", PET_RDZV_BACKEND=elastic.get("rdzvBackend", "c10d"))
        if "minReplicas" in elastic or "maxReplicas" in elastic:
            env["PET_NNODES"] = f"{elastic['minReplicas']}:{elastic['maxReplicas']}"
        else:
            env["PET_NNODES"] = str(replica_specs["Worker"]["replicas"])
        if "maxRestarts" in elastic:
            env["PET_MAX_RESTARTS"] = str(elastic["maxRestarts"])
    env["PET_NPROC_PER_NODE"] = nproc
    return env


def _pytorch_container(rspec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in rspec["template"]["spec"]["containers"] if c["name"] == "pytorch")


def _port(rspec: dict[str, Any]) -> int:
    return next(p["containerPort"] for p in _pytorch_container(rspec)["ports"] if p["name"] == "pytorchjob-port")


def _env_value(variable: dict[str, Any], pod: str, labels: dict[str, str], env: dict[str, str]) -> str:
    if "value" in variable:
        return _expand(variable["value"], env)
    path = variable["valueFrom"]["fieldRef"]["fieldPath"]
    label = _FIELD_LABEL.fullmatch(path)
    if label:
        return labels.get(label[1], "")
    return {"metadata.name": pod, "metadata.namespace": "default"}[path]


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, `$$` is a literal `$`."""
    return _VARIABLE.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def _localize(text: str, mounts: dict[str, Path]) -> str:
    """Replace each mount path that starts a path in `text` (at the start, or after `=`, a quote or a
    space, as in a shell script) with its local directory, in one pass so a result is never re-matched."""
    if not mounts:
        return text
    paths = "|".join(re.escape(path) for path in sorted(mounts, key=len, reverse=True))
    pattern = re.compile(rf"(^|[=\s\"'])({paths})(?=/|$|[\s\"'])")
    return pattern.sub(lambda m: m[1] + str(mounts[m[2]]), text)


def _replace_all(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text
