"""Reductions of hidden states [B, T, D] to one vector per sequence [B, D]: what a dual encoder compares.

Every reduction takes `padding_mask` ([B, T] bool, True at real tokens; None = no padding) so that padding
never leaks into the vector, and rows are assumed to start with a real token.
"""
from __future__ import annotations

import torch
from torch import nn

from data_pipeline.errors import UserError
from pretrain.model.attention import MultiHeadAttention

POOLINGS = ("mean", "first", "2ha")


def real_token_mask(hidden: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T, 1] float weights: 1 at real tokens, 0 at padding."""
    if padding_mask is None:
        return hidden.new_ones(hidden.shape[:2]).unsqueeze(-1)
    return padding_mask.unsqueeze(-1).to(hidden.dtype)


class MeanPooling(nn.Module):
    """Average of the real tokens' states."""

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        weights = real_token_mask(hidden, padding_mask)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class FirstTokenPooling(nn.Module):
    """The first position's state (BERT's [CLS] convention)."""

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return hidden[:, 0]


class TwoHeadAttentionPooling(nn.Module):
    """ConveRT's reduction (Henderson et al. 2019): one more 2-head self-attention over the sequence, then
    the square-root-of-N reduction sum_t h_t / sqrt(n), which keeps the norm from growing with length as a
    sum would while letting longer inputs weigh more than a mean does."""

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        if d_model % 2:
            raise UserError(f"objective.dual_encoder.pooling='2ha' splits model.d_model={d_model} over 2 heads: "
                            "use an even d_model or another pooling")
        self.attn = MultiHeadAttention(d_model, num_heads=2, dropout=dropout)

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        attended = self.attn(hidden, padding_mask)
        weights = real_token_mask(hidden, padding_mask)
        return (attended * weights).sum(1) / weights.sum(1).clamp(min=1.0).sqrt()


def build_pooling(kind: str, d_model: int, dropout: float) -> nn.Module:
    """The reduction named `kind` (one of POOLINGS) for states of width d_model; its output is d_model wide."""
    if kind == "mean":
        return MeanPooling()
    if kind == "first":
        return FirstTokenPooling()
    if kind == "2ha":
        return TwoHeadAttentionPooling(d_model, dropout)
    raise UserError(f"objective.dual_encoder.pooling={kind!r} must be one of {', '.join(POOLINGS)}")
