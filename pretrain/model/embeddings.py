"""Input embeddings: word vectors plus absolute positions (or none), then an optional norm and dropout."""
from __future__ import annotations

import math

import torch
from torch import nn

from pretrain.model.config import TransformerConfig
from pretrain.model.dropout import Dropout
from pretrain.model.norms import make_norm


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """Vaswani et al.'s fixed positions, laid out as 8-mile does: sin in even channels, cos in odd ones."""
    inv_timescales = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1.0e4) / dim))
    angles = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_timescales
    table = torch.empty(max_len, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


class Embeddings(nn.Module):
    """tokens [B, T] -> [B, T, D] for every `cfg.embeddings` variant.

    `word` is also the output projection of TransformerLM (weights are always tied).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.position = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.embeddings.startswith("learned") else None
        # N(0, 0.02) like the BERT token-type row it stands for.
        self.bias = nn.Parameter(torch.randn(cfg.d_model) * 0.02) if cfg.embeddings == "learned-bias" else None
        if cfg.embeddings == "sinusoidal":
            # Not a parameter and not saved: it is a pure function of the config.
            self.register_buffer("sinusoid", sinusoid_table(cfg.max_len, cfg.d_model), persistent=False)
            self.word_scale = math.sqrt(cfg.d_model)
        else:
            self.sinusoid = None
            self.word_scale = 1.0
        self.layer_norm = make_norm(cfg) if cfg.embeddings_layer_norm else None
        self.dropout = Dropout(cfg.dropout)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """positions: [B, T] absolute positions (restarting at each document of a packed row); None = 0..T-1."""
        x = self.word(tokens)
        if self.word_scale != 1.0:
            x = x * self.word_scale
        table = self.position.weight if self.position is not None else self.sinusoid
        if table is not None:
            # Slicing the table rather than looking up arange(T) keeps the backward a plain slice-add.
            x = x + (table[:tokens.shape[1]] if positions is None else table[positions])
        if self.bias is not None:
            x = x + self.bias
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.dropout(x)
