"""Rotary position embeddings (Su et al. 2021, RoFormer): queries and keys are rotated by an angle that
grows with their position, so q_i . k_j depends on the offset i - j only.

Channels are paired as HF's Llama and ModernBERT pair them (channel c with c + d/2, "rotate half"), so an
exported model computes the same function in transformers without permuting any weight.
"""
from __future__ import annotations

import torch

from pretrain.model.config import TransformerConfig


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [B, 1, T, head_dim] for positions [B, T]: angle p * theta^(-2c / head_dim) for the
    channel pair c, repeated over both halves. Computed in fp32 whatever the autocast dtype."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1).unsqueeze(1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, d] rotated: x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1), for the (cos, sin)
    of `rope_angles`; computed in fp32, returned in x's dtype."""
    if torch.compiler.is_compiling():
        # The compiler fuses the element-wise form into one kernel (and cannot trace `out=` into views).
        first, second = x.chunk(2, dim=-1)
        return (x.float() * cos + torch.cat((-second, first), dim=-1).float() * sin).to(x.dtype)
    half = x.shape[-1] // 2
    return _Rotation.apply(x, cos[..., :half], sin[..., :half])


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, direction: int = 1) -> torch.Tensor:
    """Each channel pair (x1, x2) turned by the angle whose half-width cos, sin are given (direction -1: the
    opposite angle), written into one fresh fp32 tensor: every temporary of the element-wise form is a
    fresh allocation, which costs more than the arithmetic on a CPU."""
    first, second = x.float().chunk(2, dim=-1)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    out_first, out_second = out.chunk(2, dim=-1)
    torch.mul(first, cos, out=out_first).addcmul_(second, sin, value=-direction)
    torch.mul(second, cos, out=out_second).addcmul_(first, sin, value=direction)
    return out.to(x.dtype)


class _Rotation(torch.autograd.Function):
    """A rotation's gradient is the inverse rotation of the incoming gradient: backward needs only the
    angles, not the activations autograd would keep for the element-wise form."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, direction=-1), None, None


def rope_tables(cfg: TransformerConfig, tokens: torch.Tensor,
                positions: torch.Tensor | None) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """{theta: (cos, sin)} for every theta the layers of `cfg` use ({} without rotary positions), at
    `positions` [B, T] (None: 0..T-1 for every row)."""
    if not cfg.rope:
        return {}
    if positions is None:
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None]
    return {theta: rope_angles(positions, cfg.head_dim, theta)
            for theta in {cfg.layer_rope_theta(index) for index in range(cfg.layers)}}
