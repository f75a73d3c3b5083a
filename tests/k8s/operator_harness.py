"""Runs a rendered PyTorchJob on this machine the way the Kubeflow training operator (v1, release 1.9)
runs it in a cluster, with each pod a local process.

For pod <job>-<type>-<index> the harness
- builds the environment the operator adds to the `pytorch` container: PYTHONUNBUFFERED; with a
  Master: MASTER_ADDR/PET_MASTER_ADDR (<job>-master-0), MASTER_PORT/PET_MASTER_PORT (the Master's
  pytorchjob-port), WORLD_SIZE (pods x nprocPerNode), RANK and PET_NODE_RANK (master 0, worker i ->
  i + 1), PET_NNODES (pods); with an elasticPolicy: PET_RDZV_ENDPOINT (<job>-worker-0 and the Worker's
  port unless rdzvHost/rdzvPort say otherwise), PET_RDZV_BACKEND (c10d), PET_NNODES (min:max, else the
  Worker replicas), PET_MAX_RESTARTS; always PET_NPROC_PER_NODE (nprocPerNode);
- resolves the container's own env (values, fieldRefs to the pod's name, namespace and the labels
  the operator puts on it, and secretKeyRefs to the Secrets among the job's resources) and expands
  $(VAR) in the command as the kubelet does; a missing Secret or key that is not optional keeps the
  container from starting (the kubelet's CreateContainerConfigError); nothing else of this machine's
  environment reaches a pod that names no such variable: no AWS_* or GOOGLE_* credentials;
- stands in for the cluster's network and volumes: each pod is named as its pod (hostname) and
  resolves every pod name of the job, through its own /etc/hosts, to that pod's loopback address
  (127.0.0.2, ...); the job's port is a free local port (pods share this machine's network namespace); each volumeMount's path in the
  command, env and workingDir becomes a local directory (a PVC: the directory given for its claim;
  a ConfigMap: a directory holding its keys as files; an emptyDir: a fresh directory);
- runs each pod as a container would: in its own PID and mount namespaces (`unshare`, as root), so
  the command is PID 1, a kill of PID 1 takes every process of the pod with it (torchrun starts its
  workers in sessions of their own, out of reach of a process-group kill), and mounts marked readOnly
  (and every ConfigMap) are read-only bind mounts, entered only after the remount;
- deletes a pod as the kubelet does: SIGTERM to PID 1, SIGKILL after terminationGracePeriodSeconds;
  the operator then creates it again;
- restarts a pod whose process fails, as restartPolicy OnFailure does, with the kubelet's back-off
  (the first restart at once, then 10 s, doubling up to 5 min: CrashLoopBackOff; its reset after 10
  minutes of running is not modelled), up to runPolicy.backoffLimit restarts for the whole job, and
  calls the job Succeeded as the operator does: when the Master succeeded (without a Master, every
  Worker), whatever the other pods are doing;
- can stall a pod (`Pod.frozen`: every process stopped, then continued), as a node does that is
  CPU-throttled or otherwise too slow to notice that a peer died.
`run_batch_job` runs the single pod of a batch/v1 Job (data preparation, export) the same way.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tests.pretrain.processes import free_port, process_env

_FIELD_LABEL = re.compile(r"metadata\.labels\['([^']+)'\]")
_VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class JobFailed(Exception):
    """The job used up its restarts, or did not finish in time."""


class CreateContainerConfigError(Exception):
    """The kubelet cannot build the container's env: a Secret or key it names is missing."""


_CLOUD_CREDENTIALS = ("AWS_", "GOOGLE_")   # a pod gets these only from its own spec


@dataclass
class Pod:
    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    read_only: list[Path] = field(default_factory=list)   # local directories mounted read-only
    grace_s: float = 30.0                                  # terminationGracePeriodSeconds
    hosts: Path | None = None                              # the job's /etc/hosts: pod name -> address
    restarts: int = 0
    failed_at: float | None = None                         # when the kubelet saw its container fail
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the container: a new PID namespace whose PID 1 is the command, in a mount namespace
        where the read-only mounts are remounted read-only before entering the working directory."""
        self.failed_at = None
        log = self.log_path.open("a")
        log.write(f"--- {self.name} start {self.restarts}\n")
        log.flush()
        self.process = subprocess.Popen(in_container(self.command, self.cwd, self.read_only, self.name, self.hosts),
                                        env=self.env,
                                        cwd=self.log_path.parent, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()

    def pid1(self) -> int | None:
        """The host PID of the container's first process (the command), None once it is gone."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        deadline = time.monotonic() + 5
        while self.process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                pids = children.read_text().split()
                if pids:
                    return int(pids[0])
            time.sleep(0.01)
        return None

    def kill(self) -> None:
        """SIGKILL the container's PID 1: the kernel then kills every other process of its namespace."""
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGKILL)
            self.process.wait()

    def delete(self) -> int:
        """Delete the pod as the kubelet does: SIGTERM to PID 1, SIGKILL after the grace period.
        Returns the container's exit code (negative: the signal that ended it)."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def _signal(self, signum: int) -> None:
        pid = self.pid1()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid if pid is not None else self.process.pid, signum)

    def back_off_s(self) -> float:
        """The kubelet's wait before restarting this failed container: none the first time, then 10 s,
        doubling with each restart, at most 5 minutes (pkg/kubelet: CrashLoopBackOff)."""
        return 0.0 if self.restarts == 0 else min(10.0 * 2 ** (self.restarts - 1), 300.0)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Every process of the pod stopped (SIGSTOP) for the body, then continued: a node that stalls
        for a while, as the cgroup freezer or a CPU-starved box would leave it."""
        pids = self.processes()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def processes(self) -> list[int]:
        """Host PIDs of the container's processes: every descendant of the `unshare` that holds it."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        pids, todo = [], list(children.get(self.process.pid, []))
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo += children.get(pid, [])
        return pids

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def in_container(command: list[str], cwd: Path, read_only: list[Path], hostname: str = "container",
                 hosts: Path | None = None) -> list[str]:
    """`command` as a container's first process: PID 1 of new PID, mount and UTS namespaces (needs
    root), named `hostname` as a pod is, with `hosts` as /etc/hosts (the cluster's DNS for the job's
    pods), where each of `read_only` is a read-only bind mount (writes fail with EROFS), and `cwd` is
    entered only after the remount (a directory entered before it would still be the writable mount)."""
    setup = [f"hostname {shlex.quote(hostname)}"]
    if hosts is not None:
        setup.append(f"mount --bind {shlex.quote(str(hosts))} /etc/hosts")
    for d in map(shlex.quote, map(str, read_only)):
        setup += [f"mount --bind {d} {d}", f"mount -o remount,bind,ro {d} {d}"]
    script = " && ".join([*setup, f'cd {shlex.quote(str(cwd))}', 'exec "$@"'])
    return ["unshare", "--pid", "--fork", "--mount-proc", "--uts", "--kill-child", "sh", "-c", script,
            "container", *command]


class LocalJob:
    """The pods of one PyTorchJob, run as processes; `claims` maps PVC claim names to directories.
    `overrides` are appended to the pytorch container's command (as a kustomize patch would), to
    shrink a GPU recipe to what a CPU finishes in seconds."""

    def __init__(self, resources: list[dict[str, Any]], claims: dict[str, Path], workdir: Path,
                 overrides: tuple[str, ...] = ()) -> None:
        job = copy.deepcopy(next(r for r in resources if r["kind"] == "PyTorchJob"))
        self.config_maps = {r["metadata"]["name"]: r for r in resources if r["kind"] == "ConfigMap"}
        self.secrets = {r["metadata"]["name"]: r for r in resources if r["kind"] == "Secret"}
        self.claims, self.workdir = claims, workdir
        self.name = job["metadata"]["name"]
        self.backoff_limit = job["spec"].get("runPolicy", {}).get("backoffLimit", 6)
        port = free_port()
        for rspec in job["spec"]["pytorchReplicaSpecs"].values():
            pytorch_container(rspec)["command"] += overrides
            for p in pytorch_container(rspec)["ports"]:
                if p["name"] == "pytorchjob-port":
                    p["containerPort"] = port
        slots = [(rtype, index) for rtype, rspec in job["spec"]["pytorchReplicaSpecs"].items()
                 for index in range(rspec["replicas"])]
        # Every pod its own loopback address under its own name, as the cluster's DNS gives each pod one:
        # torchrun's c10d rendezvous hosts its store only in the pod whose address the endpoint names.
        self.hosts = workdir / f"{self.name}-hosts"
        self.hosts.write_text("127.0.0.1 localhost\n" + "".join(
            f"127.0.0.{2 + i} {self.name}-{rtype.lower()}-{index}\n" for i, (rtype, index) in enumerate(slots)))
        self.pods = [self._pod(job, rtype, index) for rtype, index in slots]

    def pod(self, name: str) -> Pod:
        return next(p for p in self.pods if p.name == name)

    def start(self) -> None:
        for pod in self.pods:
            pod.start()

    def kill(self) -> None:
        for pod in self.pods:
            pod.kill()

    def succeeded(self) -> bool:
        """The operator's verdict: the Master pod exited 0 (without a Master: every Worker did)."""
        deciding = [pod for pod in self.pods if "-master-" in pod.name] or self.pods
        return all(pod.process.poll() == 0 for pod in deciding)

    def delete_pod(self, name: str) -> int:
        """`kubectl delete pod NAME`: the kubelet stops it gracefully and the operator creates it again.
        Returns the deleted container's exit code."""
        pod = self.pod(name)
        code = pod.delete()
        pod.start()
        return code

    def run_until(self, done, timeout_s: float, poll_s: float = 0.2) -> None:
        """Supervise the pods (restarting failed ones after the kubelet's back-off) until `done(self)`
        holds or the job succeeded."""
        deadline = time.monotonic() + timeout_s
        while not done(self):
            codes = [pod.process.poll() for pod in self.pods]
            if self.succeeded():
                return
            for pod, code in zip(self.pods, codes, strict=True):
                if code not in (None, 0):
                    if sum(p.restarts for p in self.pods) >= self.backoff_limit:
                        raise JobFailed(f"{pod.name} exited {code} with no restarts left:\n{self.logs()}")
                    pod.failed_at = pod.failed_at or time.monotonic()
                    if time.monotonic() - pod.failed_at >= pod.back_off_s():
                        pod.restarts += 1
                        pod.start()
            if time.monotonic() > deadline:
                raise JobFailed(f"job {self.name} did not finish in {timeout_s:.0f}s:\n{self.logs()}")
            time.sleep(poll_s)

    def run_to_completion(self, timeout_s: float) -> str:
        """Start the pods, supervise them until the job succeeds (JobFailed otherwise), stop whatever
        is left, and return the pods' logs."""
        self.start()
        try:
            self.run_until(lambda _: False, timeout_s=timeout_s)
        finally:
            self.kill()
        return self.logs()

    def logs(self) -> str:
        return "\n".join(pod.log() for pod in self.pods)

    def _pod(self, job: dict[str, Any], rtype: str, index: int) -> Pod:
        rspec = job["spec"]["pytorchReplicaSpecs"][rtype]
        pod = local_pod(f"{self.name}-{rtype.lower()}-{index}", rspec["template"]["spec"], pytorch_container(rspec),
                        operator_labels(self.name, rtype, index), operator_env(job, rtype, index), self.claims,
                        self.config_maps, self.workdir, self.secrets)
        pod.hosts = self.hosts
        return pod


def operator_labels(job_name: str, rtype: str, index: int) -> dict[str, str]:
    """The labels the operator puts on pod <job>-<rtype>-<index> (fieldRefs read them)."""
    labels = {"training.kubeflow.org/job-name": job_name, "training.kubeflow.org/operator-name":
              "pytorchjob-controller", "training.kubeflow.org/replica-type": rtype.lower(),
              "training.kubeflow.org/replica-index": str(index)}
    if rtype == "Master":
        labels["training.kubeflow.org/job-role"] = "master"
    return labels


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
              workdir: Path, secrets: dict[str, dict[str, Any]] | None = None) -> Pod:
    """Pod `name` running `container` of pod `spec` here: volumes as local directories, the container's
    env resolved, then `added_env` (what a controller adds), and $(VAR)s expanded in its command."""
    mounts, read_only = mount_directories(name, spec, container, claims, config_maps, workdir)
    env = resolved_env(container, name, labels, added_env, lambda text: _localize(text, mounts),
                       secrets)
    command = [_localize(arg, mounts) for arg in expanded_command(container, env)]
    cwd = Path(_localize(container.get("workingDir", str(workdir)), mounts))
    return Pod(name, command, container_env(env), cwd, workdir / f"{name}.log", read_only,
               float(spec.get("terminationGracePeriodSeconds", 30)))


def resolved_env(container: dict[str, Any], pod: str, labels: dict[str, str], added_env: dict[str, str],
                 localize: Callable[[str], str] = str,
                 secrets: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
    """The container's env as the kubelet resolves it (values with $(VAR) expanded, fieldRefs to pod
    `pod` with `labels`, secretKeyRefs to `secrets`; an absent optional key is left out), each value
    passed through `localize`, then `added_env` (a controller's)."""
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        value = _env_value(variable, pod, labels, env, secrets or {})
        if value is not None:
            env[variable["name"]] = localize(value)
    return {**env, **added_env}


def expanded_command(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The container's command and args, $(VAR)s expanded from `env` as the kubelet does."""
    return [_expand(arg, env) for arg in container["command"] + container.get("args", [])]


def mount_directories(pod: str, spec: dict[str, Any], container: dict[str, Any], claims: dict[str, Path],
            config_maps: dict[str, dict[str, Any]], workdir: Path) -> tuple[dict[str, Path], list[Path]]:
    """mountPath -> local directory, for every volumeMount of the container; and the directories that
    are mounted read-only (readOnly on the mount or the claim, and every ConfigMap)."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts, read_only = {}, []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            path = claims[claim["claimName"]]
            if mount.get("readOnly") or claim.get("readOnly"):
                read_only.append(path)
        elif "configMap" in volume:
            path = Path(tempfile.mkdtemp(prefix=f"{pod}-{mount['name']}-", dir=workdir))
            for key, text in config_maps[volume["configMap"]["name"]]["data"].items():
                (path / key).write_text(text)
            read_only.append(path)
        elif "emptyDir" in volume:
            path = Path(tempfile.mkdtemp(prefix=f"{pod}-{mount['name']}-", dir=workdir))
        else:
            raise ValueError(f"volume {mount['name']}: only PVC, ConfigMap and emptyDir volumes are supported")
        mounts[mount["mountPath"]] = path
    return mounts, read_only


def container_env(env: dict[str, str]) -> dict[str, str]:
    """`env` on top of this process's environment minus launcher variables, with this Python's
    scripts (python, torchrun) first on PATH, as they are in the image."""
    bin_dir = str(Path(sys.executable).parent)
    inherited = process_env({**env, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"})
    return {key: value for key, value in inherited.items() if key in env or not key.startswith(_CLOUD_CREDENTIALS)}


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


def pytorch_container(rspec: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in rspec["template"]["spec"]["containers"] if c["name"] == "pytorch")


def _port(rspec: dict[str, Any]) -> int:
    return next(p["containerPort"] for p in pytorch_container(rspec)["ports"] if p["name"] == "pytorchjob-port")


def _env_value(variable: dict[str, Any], pod: str, labels: dict[str, str], env: dict[str, str],
               secrets: dict[str, dict[str, Any]]) -> str | None:
    """The variable's value as the kubelet resolves it; None for an optional secret key that is absent."""
    if "value" in variable:
        return _expand(variable["value"], env)
    if "secretKeyRef" in variable["valueFrom"]:
        return _secret_value(variable["valueFrom"]["secretKeyRef"], variable["name"], secrets)
    path = variable["valueFrom"]["fieldRef"]["fieldPath"]
    label = _FIELD_LABEL.fullmatch(path)
    if label:
        return labels.get(label[1], "")
    return {"metadata.name": pod, "metadata.namespace": "default"}[path]


def _secret_value(ref: dict[str, Any], variable: str, secrets: dict[str, dict[str, Any]]) -> str | None:
    """A Secret's key: `stringData` as given, `data` base64-decoded (as the API server stores both)."""
    secret = secrets.get(ref["name"])
    values = {} if secret is None else {**{k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()},
                                        **secret.get("stringData", {})}
    if ref["key"] in values:
        return values[ref["key"]]
    if ref.get("optional"):
        return None
    missing = f'secret "{ref["name"]}" not found' if secret is None else \
        f'couldn\'t find key {ref["key"]} in Secret {ref["name"]}'
    raise CreateContainerConfigError(f"env {variable}: {missing}")


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, `$$` is a literal `$`."""
    return _VARIABLE.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def _localize(text: str, mounts: dict[str, Path]) -> str:
    """Replace each mount path that starts a path in `text` (at the start, or after `=`, a quote, a
    space, `[` or `,`: a shell script, a config list such as data.train=[/data/a,/data/b]) with its local directory, in one pass so a result is never re-matched."""
    if not mounts:
        return text
    paths = "|".join(re.escape(path) for path in sorted(mounts, key=len, reverse=True))
    pattern = re.compile(rf"(^|[=\s\"'\[,])({paths})(?=/|$|[\s\"'\],])")
    return pattern.sub(lambda m: m[1] + str(mounts[m[2]]), text)
