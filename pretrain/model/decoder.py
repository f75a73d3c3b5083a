"""The decoder half of an encoder-decoder Transformer: causal self-attention, cross-attention over the
encoder's states, feed-forward; word embeddings and output projection shared with the encoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.attention import MultiHeadAttention, cross_attention_mask, self_attention_mask
from pretrain.model.config import TransformerConfig
from pretrain.model.documents import document_positions
from pretrain.model.dropout import Dropout
from pretrain.model.embeddings import Embeddings
from pretrain.model.norms import make_norm
from pretrain.model.rotary import rope_tables
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
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, self_mask: torch.Tensor | None = None,
                cross_mask: torch.Tensor | None = None) -> torch.Tensor:
        """self_mask, cross_mask: explicit bool masks of packed rows, replacing the causal mask and
        memory_mask respectively (None: the plain causal mask, memory_mask)."""
        # Right padding needs no self-attention mask: under the causal mask a real target never sees a pad.
        x = residual(x, lambda h: self.self_attn(h, causal=True, mask=self_mask, rope=rope), self.self_attn_norm,
                     self.dropout, self.norm_placement)
        x = residual(x, lambda h: self.cross_attn(h, memory_mask, memory=memory, mask=cross_mask),
                     self.cross_attn_norm, self.dropout, self.norm_placement)
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

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
                documents: torch.Tensor | None = None, memory_documents: torch.Tensor | None = None) -> torch.Tensor:
        """memory_mask: [B, S] bool, True at real source tokens; None = no source padding.
        documents, memory_documents: packed rows (`packing.pack_aligned`): [B, T] and [B, S] pair ids, -1 at
        padding. A target then attends causally inside its own response and, across, only to its own
        source; its positions restart at each response. They replace memory_mask."""
        positions = None if documents is None else document_positions(documents)
        x = self.embeddings(tokens, positions)
        self_mask = cross_mask = None
        if documents is not None:
            self_mask = self_attention_mask(tokens.shape[1], tokens.device, causal=True, documents=documents)
            cross_mask = cross_attention_mask(documents, memory_documents)
        rope = rope_tables(self.cfg, tokens, positions).get(self.cfg.rope_theta)
        for layer in self.layers:
            x = layer(x, memory, memory_mask, rope, self_mask, cross_mask)
        return x if self.final_norm is None else self.final_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.embeddings.word.weight)
