"""Starting real training processes from tests: a clean launcher environment, free ports, timeouts, kills;
and comparing what they train with in-process references."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Sequence

import torch

from pretrain.checkpoint import list_checkpoints

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


def start(args: Sequence[str], extra_env: Mapping[str, str] | None = None,
          new_session: bool = False) -> subprocess.Popen:
    """`python ARGS` from the repository root, output captured; `new_session` makes it the leader of its
    own process group, as a launcher that signals the whole group (systemd, Slurm) starts it."""
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=process_env(extra_env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=new_session)


def torchrun_args(nproc: int, args: Sequence[str]) -> list[str]:
    """The arguments of `python -m torch.distributed.run` (torchrun) starting `nproc` ranks of `python ARGS`
    on this machine."""
    return ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *args]


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


def run_two_pods(args: Sequence[str]) -> list[str]:
    """Outputs of `python ARGS` run as two single-process PyTorchJob pods (rendezvous on localhost), each of
    which must exit 0."""
    port = free_port()
    results = finish([start(args, pod_env(rank, 2, port, 1)) for rank in range(2)])
    for code, out in results:
        assert code == 0, out
    return [out for _, out in results]


def kill_after_first_checkpoint(args: Sequence[str], run_dir: Path) -> tuple[int, str]:
    """(exit code, output) of `python ARGS`, sent SIGKILL once a checkpoint appears in RUN_DIR/checkpoints
    (or after 120 s)."""
    proc = start(args)
    deadline = time.monotonic() + 120
    while not list_checkpoints(run_dir / "checkpoints") and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    [(code, out)] = finish([proc])
    return code, out


@contextmanager
def one_thread() -> Iterator[None]:
    """Run in-process references with the subprocesses' single intra-op thread (OMP_NUM_THREADS=1),
    so that both sum in the same order and can be compared bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    """The objective's parameters in the run's newest checkpoint."""
    _, path = list_checkpoints(run_dir / "checkpoints")[-1]
    return torch.load(path, weights_only=True)["objective"]


def assert_same_params(got: dict, expected: dict, atol: float = 0.0) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=atol, msg=key)
