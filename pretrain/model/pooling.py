"""Reductions of hidden states [B, T, D] to one vector per sequence [B, D]: what a dual encoder compares.

Every reduction takes `padding_mask` ([B, T] bool, True at real tokens; None = no padding) so that padding
never leaks into the vector, and rows are assumed to start with a real token.
"""
from __future__ import annotations

import torch
from torch import nn

from data_pipeline.errors import UserError
from pretrain.model.attention import MultiHeadAttention
from pretrain.model.dropout import Dropout

POOLINGS = ("mean", "first", "2ha", "mead-2ha")


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


class MeadTwoHeadPooling(nn.Module):
    """mead-layers' TwoHeadConcat (its "2ha" reduction): two single-head self-attentions whose queries and keys
    are d_k-wide projections and whose values are the states themselves, with unscaled dot products; each
    head's outputs at the real tokens are summed and multiplied by sqrt(length), and the two heads'
    results concatenated: 2 * d_model wide. `query` and `key` hold both heads' projections (head 1's rows
    first)."""

    def __init__(self, d_model: int, d_k: int, dropout: float) -> None:
        super().__init__()
        self.d_k = d_k
        self.query = nn.Linear(d_model, 2 * d_k)
        self.key = nn.Linear(d_model, 2 * d_k)
        self.dropout = Dropout(dropout)

    def _heads(self, projected: torch.Tensor) -> torch.Tensor:
        """[B, T, 2 d_k] -> [B, 2, T, d_k]."""
        return projected.unflatten(-1, (2, self.d_k)).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = self._heads(self.query(hidden)) @ self._heads(self.key(hidden)).transpose(-1, -2)
        weights = real_token_mask(hidden, padding_mask)  # [B, T, 1]
        scores = scores.masked_fill(weights.transpose(1, 2).unsqueeze(1) == 0, torch.finfo(scores.dtype).min)
        attended = self.dropout(scores.softmax(-1)) @ hidden.unsqueeze(1)  # [B, 2, T, D]
        pooled = (attended * weights.unsqueeze(1)).sum(2) * weights.sum(1).sqrt().unsqueeze(1)
        return pooled.flatten(1)


def pooled_width(kind: str, d_model: int) -> int:
    """The width of the vector the reduction named `kind` gives for states of width d_model."""
    return 2 * d_model if kind == "mead-2ha" else d_model


def build_pooling(kind: str, d_model: int, dropout: float, d_k: int = 64) -> nn.Module:
    """The reduction named `kind` (one of POOLINGS) for states of width d_model (see `pooled_width`);
    d_k: the query/key width of mead-2ha."""
    if kind == "mean":
        return MeanPooling()
    if kind == "first":
        return FirstTokenPooling()
    if kind == "2ha":
        return TwoHeadAttentionPooling(d_model, dropout)
    if kind == "mead-2ha":
        return MeadTwoHeadPooling(d_model, d_k, dropout)
    raise UserError(f"objective.dual_encoder.pooling={kind!r} must be one of {', '.join(POOLINGS)}")
