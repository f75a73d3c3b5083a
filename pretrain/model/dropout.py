"""Dropout whose CPU masks cost about half of torch's.

On CPU, `F.dropout` draws one float per element with `bernoulli_`, a serial loop that was 13% of our MLM
training step (bench/RESULTS.md). Here one 64-bit draw makes four 16-bit ones, each compared with a
threshold: the same Bernoulli masks up to p's rounding to 1/65,536 (0.1 -> 0.1000061, and the kept values
are scaled by that rate's inverse, so the expectation is exact in fp32; in bf16 the scale rounds as in
torch's own dropout). The draws come from torch's default generator, so seeding, checkpointed RNG state and
bit-exact resume work as before. Accelerators keep torch's fused kernels (`F.dropout`, and SDPA's own
dropout in attention), which are already fast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Masks are drawn as int16 values, uniform over [-2**15, 2**15): p becomes a count of those values.
_DRAW_LEVELS = 1 << 16


def dropout_rate(p: float) -> float:
    """The rate the CPU masks drop at: p rounded to a multiple of 1/65,536."""
    return round(p * _DRAW_LEVELS) / _DRAW_LEVELS


def keep_scale(shape: torch.Size, p: float) -> torch.Tensor:
    """Float [shape]: 0 where dropped (rate `dropout_rate(p)`), else 1 / (1 - that rate)."""
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-2 ** 63, None)  # 64 random bits each
    draws = words.view(torch.int16)[:count].view(shape)
    rate = dropout_rate(p)
    return torch.where(draws >= round(rate * _DRAW_LEVELS) - _DRAW_LEVELS // 2, 1.0 / (1.0 - rate), 0.0)


class _CpuDropout(torch.autograd.Function):
    """x * mask with the scaled mask saved for the backward (the same memory as torch's own dropout)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        scale = keep_scale(x.shape, p).to(x.dtype)
        ctx.save_for_backward(scale)
        return x * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        scale, = ctx.saved_tensors
        return grad * scale, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`F.dropout(x, p, training)`, with cheaper masks on CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    return _CpuDropout.apply(x, p)


class Dropout(nn.Module):
    """`nn.Dropout` through `dropout` above."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
