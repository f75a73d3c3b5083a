"""Process-group set-up from the launcher's environment, and the few collectives the loop needs.

Supported launches:
- a single process (no RANK/WORLD_SIZE): no process group at all;
- `torchrun`, single or multi node: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_* set by torchrun for each
  worker; under a Kubeflow PyTorchJob torchrun reads PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE,
  PET_MASTER_ADDR, PET_MASTER_PORT (and the elastic PET_RDZV_*) itself, so `torchrun -m pretrain.tlm`
  needs no flags in a pod (our jobs add a c10d rendezvous on the Master: k8s/manifest.rendezvous_flags);
- a plain `python -m pretrain.tlm` per PyTorchJob pod: the operator's RANK (pod index) and WORLD_SIZE
  (pods x nprocPerNode) are used as they are, which is only right with one process per pod.
gloo on CPU, NCCL on GPU (one GPU per process, cuda:LOCAL_RANK).
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist

from data_pipeline.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and TensorBoard files."""
        return self.rank == 0


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Read the launch environment, pick the device and, for world_size > 1, join the process group."""
    rank, world_size, local_rank = launch_ranks(os.environ)
    dev = select_device(device, local_rank)
    if world_size > 1:
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown_distributed(wait_for_peers: bool = False) -> None:
    """Leave the process group, if one was joined. After a normal end, `wait_for_peers` first meets every
    rank at a barrier: a rank tearing gloo down while a peer still talks to it can abort that peer."""
    if dist.is_available() and dist.is_initialized():
        # DDP's reducer and the loader's workers sit in reference cycles: free them while the group is
        # whole, or their teardown at interpreter exit can abort the process after a good run.
        gc.collect()
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def distributed_session(device: str = "auto", timeout_s: float = 1800.0) -> Iterator[DistEnv]:
    """`init_distributed` for the body of a `with`, then `shutdown_distributed` (waiting for the peers
    unless the body raised, when a peer may never arrive)."""
    env = init_distributed(device, timeout_s)
    try:
        yield env
    except BaseException:
        shutdown_distributed()
        raise
    shutdown_distributed(wait_for_peers=True)


def launch_ranks(env: Mapping[str, str]) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from a launcher's environment; UserError for launches that cannot work."""
    if "TORCHELASTIC_RUN_ID" not in env:  # not a torchrun worker
        nproc = env.get("PET_NPROC_PER_NODE", "1")
        if nproc.isdigit() and int(nproc) > 1:
            raise UserError(f"PET_NPROC_PER_NODE={nproc} asks for {nproc} processes per pod but this one was "
                            "started directly; start it with `torchrun -m MODULE ...` (torchrun reads PET_*)")
        if "RANK" not in env and any(name.startswith("PET_RDZV_") for name in env):
            raise UserError("an elastic PyTorchJob (PET_RDZV_* set, no RANK) must start the trainer with "
                            "`torchrun -m MODULE ...`")
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return 0, 1, 0
    rank, world_size = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
    local_rank = _int_var(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"RANK={rank} must lie in [0, WORLD_SIZE={world_size}); check the launcher's environment")
    if world_size > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
        if missing:
            raise UserError(f"WORLD_SIZE={world_size} but {' and '.join(missing)} not set; launch with torchrun "
                            "or set MASTER_ADDR and MASTER_PORT to rank 0's address")
    return rank, world_size, local_rank


def _int_var(env: Mapping[str, str], name: str) -> int:
    value = env.get(name)
    if value is None:
        raise UserError(f"{name} is not set but {'WORLD_SIZE' if name == 'RANK' else 'RANK'} is; "
                        "set both (or neither, for a single process)")
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not an integer; check the launcher's environment") from None


def select_device(device: str, local_rank: int) -> torch.device:
    """"auto" -> cuda:LOCAL_RANK when CUDA is visible, else cpu; makes that GPU the current one."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device != "cuda":
        raise UserError(f"train.device={device!r} is not one of auto, cpu, cuda")
    if not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(f"LOCAL_RANK={local_rank} but only {count} CUDA devices are visible; start at most "
                        f"{count} processes per node (torchrun --nproc-per-node / nprocPerNode)")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum `tensor` in place over all ranks (a no-op for one process); returns it."""
    if env.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every rank (small, picklable values only)."""
    if env.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's `obj`, indexed by rank (small, picklable values only)."""
    if env.world_size == 1:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out
