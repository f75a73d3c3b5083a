"""The in-process A/B timing harness of the training-step benchmarks: same-shape contenders, each with its own
AdamW, stepped round-robin on one fixed batch so that load from other processes hits all of them alike.

Imported by the scripts beside it as `from harness import ...` (running `python bench/X.py` puts bench/ on
sys.path).
"""
from __future__ import annotations

import argparse
import collections
import collections.abc
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pretrain.model import TransformerConfig


@dataclass
class Contender:
    name: str
    model: nn.Module
    loss: Callable[[], torch.Tensor]       # forward on the benchmark batch -> scalar loss
    tokens: int                            # input tokens per step
    flops_per_token: float | None = None   # training FLOPs per token, for MFU; None where not reported

    def __post_init__(self) -> None:
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)

    def step(self) -> None:
        self.loss().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def shape_parser(description: str, seq_help: str | None = None) -> argparse.ArgumentParser:
    """The flags every benchmark shares: model and batch shape, warm-up and timed steps, seed, device."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-ff", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq", type=int, default=128, help=seq_help)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def model_config(args: argparse.Namespace, **variant) -> TransformerConfig:
    """Our model at the shape of `shape_parser`'s flags."""
    return TransformerConfig(vocab_size=args.vocab, d_model=args.d_model, num_heads=args.heads,
                             layers=args.layers, d_ff=args.d_ff, dropout=0.1, max_len=512, **variant)


def restore_collections_aliases() -> None:
    """mead-baseline 2.4.2 still imports collections.Sequence & co., which Python 3.10 moved to collections.abc:
    call before importing it."""
    for name in collections.abc.__all__:
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def time_round_robin(contenders: list[Contender], device: str, warmup: int, steps: int,
                     bf16: bool | None = None) -> dict[str, float]:
    """Median seconds per training step of each contender, all under bf16 autocast when `bf16` (default: on
    CUDA only) and fp32 otherwise."""
    cuda = device.startswith("cuda")
    bf16 = cuda if bf16 is None else bf16
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for step in range(warmup + steps):
        for contender in contenders:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=bf16):
                contender.step()
            if cuda:
                torch.cuda.synchronize()
            if step >= warmup:
                times[contender.name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_peak_flops(device: str, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """This machine's measured matmul FLOP/s in `dtype`: the best of `repeats` size x size products (the
    MFU denominator on a CPU, where no vendor table applies; best-of, since load only ever slows it)."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def run_header(device: str, bf16: bool | None = None) -> str:
    """The first line of a report: date, torch version, device and precision."""
    bf16 = device.startswith("cuda") if bf16 is None else bf16
    precision = "bf16 autocast" if bf16 else "fp32"
    if device.startswith("cuda"):
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU {platform.machine()} x {torch.get_num_threads()} threads"
    return f"{time.strftime('%Y-%m-%d')} | torch {torch.__version__} | {where}, {precision}"
