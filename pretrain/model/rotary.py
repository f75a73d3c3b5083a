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
    """x [B, H, T, d] rotated: x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1)."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


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
