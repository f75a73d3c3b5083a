"""A tiny objective and reader that follow docs/ARCHITECTURE.md, and an entry point that trains them.

`python -m tests.pretrain.tiny_training [--config F] key=value ...` is a real (if small) trainer entry
point, used by the subprocess tests; `tiny.*` keys size the problem and inject faults (SIGTERM or
SIGKILL at a given global batch) on one rank.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import IterableDataset, get_worker_info

from data_pipeline.errors import run_cli
from pretrain.checkpoint import list_checkpoints
from pretrain.config import OptimConfig, TrainConfig, load_config, to_dict
from pretrain.distributed import DistEnv, distributed_session
from pretrain.metrics import setup_logging
from pretrain.trainer import TrainResult, seed_everything, train

VOCAB = 16
PAD = 0


class TinyObjective(nn.Module):
    """Next-token prediction from the previous token only; PAD targets are ignored, so the number of
    targets differs between batches and ranks (which is what global-count normalisation is about)."""

    loss_weights = {"lm": 1.0}
    perplexity_terms = ("lm",)

    def __init__(self, dim: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, VOCAB)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
        logits = self.out(self.drop(self.norm(self.embed(inputs)))).float()
        mask = targets != PAD
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD, reduction="sum")
        correct = ((logits.argmax(-1) == targets) & mask).sum()
        count = mask.sum()
        return {"losses": {"lm": (loss, count)}, "metrics": {"acc": (correct.float(), count)},
                "tokens": torch.tensor(inputs.numel())}

    def flops_per_token(self, seq_len: int) -> float:
        return 6.0 * sum(p.numel() for p in self.parameters())


class TinyReader(IterableDataset):
    """The reader contract in miniature: sample p of an infinite stream is a fixed sequence (mostly
    t -> 3t + 1 mod VOCAB, sometimes random, so there is something to learn); global batch s is samples
    [s*G, (s+1)*G) with G = batch_size * world_size, rank r takes the r-th slice of batch_size."""

    def __init__(self, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.batch_size, self.seq_len, self.rank, self.world_size = batch_size, seq_len, rank, world_size
        self.seed, self.on_batch, self.cursor = seed, on_batch, 0

    def state_dict(self, cursor: int) -> dict[str, int]:
        return {"cursor": cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.cursor = state["cursor"]

    def sample(self, position: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + position)
        tokens = [int(torch.randint(VOCAB, (), generator=g))]
        for noise in torch.rand(self.seq_len - 1, generator=g).tolist():
            tokens.append(int(torch.randint(VOCAB, (), generator=g)) if noise < 0.2 else (3 * tokens[-1] + 1) % VOCAB)
        return torch.tensor(tokens)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        global_batch = self.batch_size * self.world_size
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index = self.cursor // global_batch
        while True:
            if index % workers == worker:
                if self.on_batch is not None:
                    self.on_batch(index)
                first = index * global_batch + self.rank * self.batch_size
                ids = torch.arange(first, first + self.batch_size)
                yield {"tokens": torch.stack([self.sample(int(i)) for i in ids]), "sample_ids": ids,
                       "epoch": torch.zeros_like(ids), "cursor": (index + 1) * global_batch}
            index += 1


@dataclass(frozen=True)
class TinySection:
    batch_size: int = 4                # per rank
    seq_len: int = 9
    dropout: float = 0.0
    sigterm_at_batch: int = -1         # fault injection, on rank fault_rank, before yielding that batch
    kill_at_batch: int = -1            # SIGKILL once a checkpoint exists
    fault_rank: int = 0
    batch_delay_s: float = 0.0         # every rank sleeps this long per batch: time to signal a running job


@dataclass(frozen=True)
class TinySchema:
    tiny: TinySection = field(default_factory=TinySection)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def _fault_injector(cfg: TinySchema, env: DistEnv) -> Callable[[int], None] | None:
    delay = cfg.tiny.batch_delay_s
    if env.rank != cfg.tiny.fault_rank:
        return (lambda index: time.sleep(delay)) if delay else None
    checkpoints = Path(cfg.train.run_dir) / "checkpoints"

    def inject(index: int) -> None:
        time.sleep(delay)
        if index == cfg.tiny.sigterm_at_batch:
            os.kill(os.getpid(), signal.SIGTERM)
        if index == cfg.tiny.kill_at_batch:
            deadline = time.monotonic() + 60
            while not list_checkpoints(checkpoints) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)

    return inject


def run(cfg: TinySchema, env: DistEnv) -> TrainResult:
    """Train the tiny objective; rank 0 saves the final parameters to run_dir/final.pt."""
    seed_everything(cfg.train.seed)
    objective = TinyObjective(dropout=cfg.tiny.dropout)
    size = (cfg.tiny.batch_size, cfg.tiny.seq_len, env.rank, env.world_size)
    train_data = TinyReader(*size, seed=0, on_batch=_fault_injector(cfg, env))
    valid_data = TinyReader(*size, seed=1)
    result = train(objective, train_data, valid_data, cfg.train, cfg.optim, env, to_dict(cfg))
    if env.is_main:
        torch.save({"step": result.step, "completed": result.completed, "objective": objective.state_dict()},
                   Path(cfg.train.run_dir) / "final.pt")
    return result


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(TinySchema, sys.argv[1:] if argv is None else argv)
    with distributed_session(cfg.train.device, cfg.train.dist_timeout_s) as env:
        setup_logging(env.rank)
        run(cfg, env)
    return 0


if __name__ == "__main__":
    status = run_cli(main)
    # A rank's exit status is not reported by torchrun once it has been signalled: say it here.
    print(f"[rank {os.environ.get('RANK', '0')}] exit status {status}", flush=True)
    sys.exit(status)
