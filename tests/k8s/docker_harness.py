"""Builds the project's image with Docker's legacy builder and runs the pods of rendered jobs as Docker
containers, the way a cluster runs them: the container's command, args and resolved env, the env the
training operator adds (operator_harness.operator_env), the pod's user, read-only root filesystem,
dropped capabilities and memory limit, its volumes as bind mounts (readOnly honoured, fsGroup applied to
the claim's directory as the kubelet does), and each pod on one Docker network under its pod name, so
the Worker reaches the Master by the name the operator gives it.

Images are cached: each is tagged with a digest of what it is built from, and a build whose tag exists
is skipped, so only the first run pays for it. Nothing here installs Docker or starts a daemon.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Iterator

from tests.k8s.operator_harness import (expanded_command, mount_directories, operator_env, operator_labels,
                                       pytorch_container, resolved_env)

ROOT = Path(__file__).resolve().parents[2]
CPU_BASE_DOCKERFILE = Path(__file__).parent / "docker" / "cpu-base.Dockerfile"
DEBIAN_IMAGE = os.environ.get("PRETRAIN_E2E_DEBIAN_IMAGE", "local/debian:bookworm")
CA_BUNDLE = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
BUILD_TIMEOUT_S = 3600


class DockerFailed(Exception):
    """A docker command or a container failed; the message carries its output."""


def docker(*args: str, timeout_s: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise DockerFailed(f"docker {' '.join(args[:3])} ... exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def docker_unavailable() -> str | None:
    """Why the Docker end-to-end cannot run here, or None when a daemon answers `docker info` (at
    DOCKER_HOST or the default socket) within a few seconds."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        done = docker("info", "--format", "{{.ServerVersion}}", timeout_s=10, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 10 s"
    if done.returncode != 0:
        return f"no Docker daemon answers `docker info`: {(done.stderr.strip().splitlines() or ['no output'])[-1]}"
    return None


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def image_id(tag: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()


def legacy_build(tag: str, context: Path, dockerfile: Path, build_args: dict[str, str]) -> subprocess.CompletedProcess:
    """`docker build` with the legacy builder (DOCKER_BUILDKIT=0): what a Docker CLI without buildx runs.
    Returns the finished process, its output in stdout (check the return code)."""
    command = ["docker", "build", "--force-rm", "-t", tag, "-f", str(dockerfile), str(context)]
    for name, value in build_args.items():
        command[2:2] = ["--build-arg", f"{name}={value}"]
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=BUILD_TIMEOUT_S)


def cached_build(repository: str, digest: str, context: Path, dockerfile: Path, build_args: dict[str, str]) -> str:
    """The image `repository:<digest>`, built with the legacy builder unless it exists already."""
    tag = f"{repository}:{digest[:16]}"
    if not image_exists(tag):
        done = legacy_build(tag, context, dockerfile, build_args)
        if done.returncode != 0:
            raise DockerFailed(f"building {tag} failed:\n{done.stdout[-6000:]}")
    return tag


def digest_of(*parts: bytes) -> str:
    sha = hashlib.sha256()
    for part in parts:
        sha.update(hashlib.sha256(part).digest())
    return sha.hexdigest()


def torch_requirement() -> str:
    """The torch pin of pyproject.toml (the base image must bring exactly that torch)."""
    return re.search(r'"(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))[1]


def cpu_base_image() -> str:
    """The CPU stand-in for the PyTorch base (tests/k8s/docker/cpu-base.Dockerfile) on DEBIAN_IMAGE: its
    context is the torch wheel pip finds for Debian bookworm's Python 3.11 and the CA bundle pip needs."""
    digest = digest_of(image_id(DEBIAN_IMAGE).encode(), CPU_BASE_DOCKERFILE.read_bytes(), torch_requirement().encode(),
                     CA_BUNDLE.read_bytes())
    tag = f"pretrain-e2e-cpu-base:{digest[:16]}"
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="cpu-base-") as context:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                        "--platform", "manylinux_2_28_x86_64", "-d", context, torch_requirement()], check=True)
        shutil.copy(CA_BUNDLE, Path(context) / "ca-certificates.crt")
        return cached_build("pretrain-e2e-cpu-base", digest, Path(context), CPU_BASE_DOCKERFILE,
                            {"DEBIAN_IMAGE": DEBIAN_IMAGE})


def build_context_files(root: Path = ROOT) -> list[Path]:
    """The files .dockerignore lets into the build context: its `!` entries, minus its `**/` patterns."""
    lines = [line.strip() for line in (root / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    included = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    excluded = [line.removeprefix("**/") for line in lines if line.startswith("**/")]
    files = []
    for name in included:
        path = root / name
        for candidate in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            if not any(fnmatch(part, pattern) for part in candidate.relative_to(root).parts for pattern in excluded):
                files.append(candidate)
    return files


def project_image(base: str) -> str:
    """This checkout's image on `base`, as README step 1 builds it (with the legacy builder), cached
    under a digest of the base, the Dockerfile and every file of the build context."""
    files = [ROOT / "Dockerfile", ROOT / ".dockerignore", *build_context_files()]
    digest = digest_of(image_id(base).encode(), *(str(f.relative_to(ROOT)).encode() + f.read_bytes() for f in files))
    return cached_build("pretrain-service", digest, ROOT, ROOT / "Dockerfile", {"BASE_IMAGE": base})


@dataclass
class Container:
    """A pod's container started with `docker run -d`; `name` is the pod's name."""

    name: str

    def wait(self, timeout_s: float) -> int:
        """The container's exit code, once it has exited (DockerFailed if not within `timeout_s`)."""
        try:
            return int(docker("wait", self.name, timeout_s=timeout_s).stdout.strip())
        except subprocess.TimeoutExpired:
            raise DockerFailed(f"{self.name} did not exit within {timeout_s:.0f}s:\n{self.logs()}") from None

    def logs(self) -> str:
        done = docker("logs", self.name, check=False)
        return f"--- {self.name}\n{done.stdout}{done.stderr}"

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)


def _quantity(text: str) -> str:
    """A Kubernetes memory quantity (512Mi, 3Gi) in Docker's units (512m, 3g)."""
    return re.sub(r"([KMG])i$", lambda m: m[1].lower(), text)


def _apply_fs_group(directory: Path, group: int) -> None:
    """What the kubelet does to a volume for fsGroup with fsGroupChangePolicy OnRootMismatch: unless
    the volume's root already has the group, every file gets it, group read-write, setgid directories."""
    if directory.stat().st_gid == group:
        return
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, -1, group, follow_symlinks=False)
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o060 | (0o2010 if path.is_dir() else 0))


def security_options(spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """`docker run` options for the pod's and the container's securityContext and memory limit."""
    pod_security, security = spec.get("securityContext", {}), container.get("securityContext", {})
    args = []
    user = security.get("runAsUser", pod_security.get("runAsUser"))
    group = security.get("runAsGroup", pod_security.get("runAsGroup"))
    if user is not None:
        args += ["--user", f"{user}:{group}" if group is not None else str(user)]
    if "fsGroup" in pod_security:
        args += ["--group-add", str(pod_security["fsGroup"])]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    args += [f"--cap-drop={cap}" for cap in security.get("capabilities", {}).get("drop", [])]
    if "memory" in container.get("resources", {}).get("limits", {}):
        args += ["--memory", _quantity(container["resources"]["limits"]["memory"])]
    return args


def volume_options(pod: str, spec: dict[str, Any], container: dict[str, Any], claims: dict[str, Path],
                 config_maps: dict[str, dict[str, Any]], workdir: Path) -> list[str]:
    """`docker run` options mounting the container's volumes as the kubelet would: host directories
    (operator_harness.mount_directories) bound read-only where they must be, a Memory emptyDir as tmpfs."""
    mounts, read_only = mount_directories(pod, spec, container, claims, config_maps, workdir)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    fs_group = spec.get("securityContext", {}).get("fsGroup")
    args = []
    for mount in container.get("volumeMounts", []):
        volume, path = volumes[mount["name"]], mounts[mount["mountPath"]]
        if volume.get("emptyDir", {}).get("medium") == "Memory":
            size = volume["emptyDir"].get("sizeLimit")
            args += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777" + (f",size={_quantity(size)}" if size else "")]
            continue
        if "emptyDir" in volume:
            path.chmod(0o1777)
        elif "configMap" in volume:   # the kubelet writes ConfigMap keys world-readable
            path.chmod(0o755)
            for key in path.iterdir():
                key.chmod(0o644)
        elif fs_group is not None and path not in read_only:
            _apply_fs_group(path, fs_group)
        args += ["-v", f"{path}:{mount['mountPath']}" + (":ro" if path in read_only else "")]
    return args


def run_pod(pod: str, spec: dict[str, Any], container: dict[str, Any], image: str, network: str,
            labels: dict[str, str], added_env: dict[str, str], claims: dict[str, Path],
            config_maps: dict[str, dict[str, Any]], workdir: Path) -> Container:
    """Start `container` of pod spec `spec` as Docker container `pod` on `network`, as the kubelet
    would start it; `claims` maps PVC claim names to host directories, and `image` stands for the
    container's image (as `kustomize edit set image` would set it)."""
    args = ["run", "-d", "--name", pod, "--hostname", pod, "--network", network,
            *security_options(spec, container), *volume_options(pod, spec, container, claims, config_maps, workdir)]
    env = resolved_env(container, pod, labels, added_env)
    for name, value in env.items():
        args += ["-e", f"{name}={value}"]
    if "workingDir" in container:
        args += ["-w", container["workingDir"]]
    command = expanded_command(container, env)
    docker(*args, "--entrypoint", command[0], image, *command[1:])
    return Container(pod)


@contextlib.contextmanager
def job_network() -> Iterator[tuple[str, list[Container]]]:
    """A Docker network of its own for one job, and the list to put its containers in: on exit every
    container in it is removed, then the network."""
    name, containers = f"pretrain-e2e-{uuid.uuid4().hex[:8]}", []
    docker("network", "create", name)
    try:
        yield name, containers
    finally:
        for container in containers:
            container.remove()
        docker("network", "rm", name, check=False)


def run_pytorchjob(resources: list[dict[str, Any]], image: str, claims: dict[str, Path], workdir: Path,
                   timeout_s: float) -> dict[str, tuple[int, str]]:
    """Run every pod of the rendered PyTorchJob in `resources` as a container until each has exited:
    pod name -> (exit code, log)."""
    job = next(r for r in resources if r["kind"] == "PyTorchJob")
    config_maps = {r["metadata"]["name"]: r for r in resources if r["kind"] == "ConfigMap"}
    name = job["metadata"]["name"]
    with job_network() as (network, containers):
        for rtype, rspec in job["spec"]["pytorchReplicaSpecs"].items():
            for index in range(rspec["replicas"]):
                pod = f"{name}-{rtype.lower()}-{index}"
                containers.append(run_pod(pod, rspec["template"]["spec"], pytorch_container(rspec), image, network,
                                          operator_labels(name, rtype, index), operator_env(job, rtype, index),
                                          claims, config_maps, workdir))
        return {c.name: (c.wait(timeout_s), c.logs()) for c in containers}


def run_batch_job(job: dict[str, Any], image: str, claims: dict[str, Path], workdir: Path,
                  timeout_s: float) -> tuple[int, str]:
    """Run the single pod of a batch/v1 Job as a container until it exits: (exit code, log)."""
    name, spec = job["metadata"]["name"], job["spec"]["template"]["spec"]
    with job_network() as (network, containers):
        containers.append(run_pod(f"{name}-0", spec, spec["containers"][0], image, network,
                                  {"batch.kubernetes.io/job-name": name}, {}, claims, {}, workdir))
        return containers[0].wait(timeout_s), containers[0].logs()
