"""Starting real training processes from tests: a clean launcher environment, free ports, timeouts."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180

# Variables a launcher sets; the tests set their own, so none may leak in from the outer environment.
_LAUNCHER_PREFIXES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_", "PET_", "TORCHELASTIC_",
                      "GROUP_RANK", "ROLE_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **(extra or {}))
    return env


def start(args: Sequence[str], extra_env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """`python ARGS` from the repository root, output captured."""
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=process_env(extra_env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(procs: Sequence[subprocess.Popen]) -> list[tuple[int, str]]:
    """(exit code, output) of each process, killing all of them if one hangs."""
    results = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=TIMEOUT_S)
            results.append((proc.returncode, out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def pod_env(rank: int, pods: int, port: int, nproc_per_node: int) -> dict[str, str]:
    """What the Kubeflow training operator sets on pod `rank` (master 0, worker i -> i + 1) of a
    PyTorchJob with `pods` pods and nprocPerNode processes each (rendezvous on localhost here)."""
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(pods * nproc_per_node),
            "RANK": str(rank), "PET_NNODES": str(pods), "PET_NODE_RANK": str(rank),
            "PET_NPROC_PER_NODE": str(nproc_per_node), "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port)}
