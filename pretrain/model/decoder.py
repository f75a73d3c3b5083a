"""The decoder half of an encoder-decoder Transformer: causal self-attention, cross-attention over the
encoder's states, feed-forward; word embeddings and output projection shared with the encoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.attention import MultiHeadAttention
from pretrain.model.config import TransformerConfig
from pretrain.model.embeddings import Embeddings
from pretrain.model.norms import make_norm
from pretrain.model.rotary import rope_angles
from pretrain.model.transformer import init_bert_weights, make_feed_forward, residual


class DecoderBlock(nn.Module):
    """Three residual sublayers (pre- or post-LN as `cfg.norm` says): causal self-attention, attention
    over the memory, feed-forward. Relative positions (rpr_k) apply to self-attention only: there is no
    meaningful offset between a target position and a source position; so do rotary positions (rope)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm_placement = cfg.norm
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout, cfg.rpr_k, cfg.rpr_values,
                                            bias=cfg.bias)
        self.self_attn_norm = make_norm(cfg)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout, bias=cfg.bias)
        self.cross_attn_norm = make_norm(cfg)
        self.ffn = make_feed_forward(cfg)
        self.ffn_norm = make_norm(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        # Right padding needs no self-attention mask: under the causal mask a real target never sees a pad.
        x = residual(x, lambda h: self.self_attn(h, causal=True, rope=rope), self.self_attn_norm, self.dropout,
                     self.norm_placement)
        x = residual(x, lambda h: self.cross_attn(h, memory_mask, memory=memory), self.cross_attn_norm,
                     self.dropout, self.norm_placement)
        return residual(x, self.ffn, self.ffn_norm, self.dropout, self.norm_placement)


class TransformerDecoder(nn.Module):
    """tokens [B, T] + memory [B, S, D] -> hidden [B, T, D]; `logits` projects through the shared word
    embeddings (the tied output projection)."""

    def __init__(self, cfg: TransformerConfig, embeddings: Embeddings) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = embeddings  # the encoder's module: one vocabulary table for both sides
        self.layers = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.layers))
        self.final_norm = make_norm(cfg) if cfg.norm != "post" else None
        # Only the decoder's own modules: the shared embeddings were initialised by their owner.
        self.layers.apply(init_bert_weights)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """memory_mask: [B, S] bool, True at real source tokens; None = no source padding."""
        x = self.embeddings(tokens)
        rope = None
        if self.cfg.rope:
            positions = torch.arange(tokens.shape[1], device=tokens.device)[None]
            rope = rope_angles(positions, self.cfg.head_dim, self.cfg.rope_theta)
        for layer in self.layers:
            x = layer(x, memory, memory_mask, rope)
        return x if self.final_norm is None else self.final_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.embeddings.word.weight)
