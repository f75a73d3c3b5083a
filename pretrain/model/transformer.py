"""Transformer building blocks: the feed-forward sublayer, the residual wiring (pre- or post-LN), the
encoder block and BERT's initialisation. A decoder block is the same pieces plus a cross-attention."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.attention import MultiHeadAttention
from pretrain.model.config import TransformerConfig


class FeedForward(nn.Module):
    """squeeze(GELU(expansion(x))): D -> d_ff -> D, with the erf GELU of BERT."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.expansion = nn.Linear(d_model, d_ff)
        self.squeeze = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.squeeze(F.gelu(self.expansion(x)))


def residual(x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor], norm: nn.LayerNorm,
             dropout: nn.Dropout, placement: str) -> torch.Tensor:
    """One residual sublayer, by `placement` (model.norm): "pre" x + drop(f(LN(x))) (GPT-2), "post"
    LN(x + drop(f(x))) (BERT), or "mead-pre" LN(x) + drop(f(LN(x))): mead-layers' pre-LN block, whose
    residual stream is the normalised input."""
    if placement == "pre":
        return x + dropout(sublayer(norm(x)))
    if placement == "mead-pre":
        x = norm(x)
        return x + dropout(sublayer(x))
    return norm(x + dropout(sublayer(x)))


class TransformerBlock(nn.Module):
    """Self-attention then feed-forward, each wrapped by `residual` with its own LayerNorm.

    `attn_norm` belongs to the attention sublayer and `ffn_norm` to the feed-forward one: BERT's
    attention.output.LayerNorm / output.LayerNorm and GPT-2's ln_1 / ln_2. (8-mile calls the norm between
    the two sublayers ln2 and the other ln1, so for post-LN its ln2 is our attn_norm.)
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm_placement = cfg.norm
        self.attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout, cfg.rpr_k, cfg.rpr_values)
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        x = residual(x, lambda h: self.attn(h, padding_mask, causal), self.attn_norm, self.dropout,
                     self.norm_placement)
        return residual(x, self.ffn, self.ffn_norm, self.dropout, self.norm_placement)


def init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation, for `module.apply`: N(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
