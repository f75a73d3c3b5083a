"""The encoder stack and the language model around it (MLM or causal LM; the objective decides)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from data_pipeline.errors import UserError
from pretrain.model.config import TransformerConfig
from pretrain.model.embeddings import Embeddings
from pretrain.model.transformer import TransformerBlock, init_bert_weights


class TransformerEncoder(nn.Module):
    """tokens [B, T] -> hidden [B, T, D]: embeddings, `cfg.layers` blocks, and a final LN for pre-LN."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        cfg.validate()
        if cfg.vocab_size <= 0:
            raise UserError("model.vocab_size is 0: set it, or build the model after the trainer fills it in "
                            "from the tokenizer")
        self.max_len = cfg.max_len if cfg.embeddings != "none" else None
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.layers))
        # Pre-LN (either) leaves the residual stream un-normalised; post-LN already ends on a LayerNorm.
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.norm != "post" else None
        self.apply(init_bert_weights)

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        """padding_mask: [B, T] bool, True at real tokens; pass None when there is no padding (it keeps the
        fused attention kernels). causal: position t attends to positions <= t only."""
        if self.max_len is not None and tokens.shape[1] > self.max_len:
            raise UserError(f"sequence length {tokens.shape[1]} exceeds model.max_len={self.max_len}: raise "
                            "model.max_len or shorten the sequences")
        x = self.embeddings(tokens)
        for layer in self.layers:
            x = layer(x, padding_mask, causal)
        return x if self.final_norm is None else self.final_norm(x)


class MaskedLMHead(nn.Module):
    """BERT's MLM transform before the tied projection: LN(GELU(dense(h)))."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.layer_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(F.gelu(self.dense(hidden)))


class TransformerLM(nn.Module):
    """A TransformerEncoder with an output projection tied to its word embeddings.

    `forward` stops at the hidden states and `logits` projects them, so an objective can project only the
    positions it scores (MLM: ~15% of them) instead of paying the V x D matmul everywhere.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = TransformerEncoder(cfg)
        self.head = MaskedLMHead(cfg) if cfg.head_transform else None
        if self.head is not None:
            self.head.apply(init_bert_weights)
        self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.output_bias else None

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        return self.encoder(tokens, padding_mask, causal)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> [..., V] through the head transform (if any) and the tied projection."""
        if self.head is not None:
            hidden = self.head(hidden)
        return F.linear(hidden, self.encoder.embeddings.word.weight, self.output_bias)
