"""The encoder stack and the language model around it (MLM or causal LM; the objective decides)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from data_pipeline.errors import UserError
from pretrain.model.attention import self_attention_mask
from pretrain.model.config import TransformerConfig
from pretrain.model.documents import document_positions
from pretrain.model.embeddings import Embeddings
from pretrain.model.rotary import rope_tables
from pretrain.model.norms import make_norm
from pretrain.model.transformer import TransformerBlock, init_bert_weights


class TransformerEncoder(nn.Module):
    """tokens [B, T] -> hidden [B, T, D]: embeddings, `cfg.layers` blocks, and a final norm for pre-LN."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        cfg.validate()
        if cfg.vocab_size <= 0:
            raise UserError("model.vocab_size is 0: set it, or build the model after the trainer fills it in "
                            "from the tokenizer")
        self.cfg = cfg
        self.max_len = cfg.max_len if cfg.embeddings != "none" else None
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(TransformerBlock(cfg, index) for index in range(cfg.layers))
        # Pre-LN (either) leaves the residual stream un-normalised; post-LN already ends on a LayerNorm.
        self.final_norm = make_norm(cfg) if cfg.norm != "post" else None
        self.apply(init_bert_weights)

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None,
                causal: bool = False, documents: torch.Tensor | None = None,
                outputs_at: torch.Tensor | None = None) -> torch.Tensor:
        """padding_mask: [B, T] bool, True at real tokens; pass None when there is no padding (it keeps the
        fused attention kernels). causal: position t attends to positions <= t only. documents: [B, T]
        document ids (`documents.document_ids`) of packed blocks: a token then attends only inside its own
        document, and positions (absolute or rotary) restart at each document. outputs_at: [B, Q] positions
        whose states alone are wanted (MLM targets): the last layer then computes only those ([B, Q, D]
        returned), its keys and values still over every position; not for causal or relative-position
        models."""
        if self.max_len is not None and tokens.shape[1] > self.max_len:
            raise UserError(f"sequence length {tokens.shape[1]} exceeds model.max_len={self.max_len}: raise "
                            "model.max_len or shorten the sequences")
        positions = None if documents is None else document_positions(documents)
        x = self.embeddings(tokens, positions)
        masks = self._masks(tokens, padding_mask, causal, documents)
        ropes = rope_tables(self.cfg, tokens, positions)
        if outputs_at is not None and (causal or self.cfg.rpr_k):
            raise ValueError("outputs_at needs non-causal attention without relative positions")
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            mask, rope = masks[self.cfg.is_global(index)], ropes.get(self.cfg.layer_rope_theta(index))
            if index == last and outputs_at is not None:
                x = layer.at_positions(x, outputs_at, padding_mask, mask=mask, rope=rope)
            else:
                x = layer(x, padding_mask, causal, mask=mask, rope=rope)
        return x if self.final_norm is None else self.final_norm(x)

    def _masks(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None, causal: bool,
               documents: torch.Tensor | None) -> dict[bool, torch.Tensor | None]:
        """{is_global: explicit mask or None}, built once per forward and shared by the layers. None keeps
        the attention's own padding/causal path (and its fused kernels) where nothing else is masked."""
        def build(half_window: int | None) -> torch.Tensor:
            return self_attention_mask(tokens.shape[1], tokens.device, padding_mask=padding_mask, causal=causal,
                                       documents=documents, half_window=half_window)
        masks: dict[bool, torch.Tensor | None] = {True: None if documents is None else build(None)}
        if self.cfg.global_every > 1:
            masks[False] = build(self.cfg.local_window // 2)
        return masks


class MaskedLMHead(nn.Module):
    """BERT's MLM transform before the tied projection: LN(GELU(dense(h))) (norm and bias as configured)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.layer_norm = make_norm(cfg)

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
                causal: bool = False, documents: torch.Tensor | None = None,
                outputs_at: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(tokens, padding_mask, causal, documents, outputs_at)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> [..., V] through the head transform (if any) and the tied projection."""
        if self.head is not None:
            hidden = self.head(hidden)
        return F.linear(hidden, self.encoder.embeddings.word.weight, self.output_bias)
