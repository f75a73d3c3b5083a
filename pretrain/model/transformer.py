"""Transformer building blocks: the feed-forward sublayer (plain or gated), the norms, the residual wiring
(pre- or post-LN), the encoder block and BERT's initialisation. A decoder block is the same pieces plus a
cross-attention."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.attention import MultiHeadAttention
from pretrain.model.config import TransformerConfig
from pretrain.model.dropout import Dropout
from pretrain.model.norms import make_norm


GATE_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"geglu": F.gelu, "swiglu": F.silu}


class FeedForward(nn.Module):
    """squeeze(GELU(expansion(x))): D -> d_ff -> D, with the erf GELU of BERT; or, gated (`kind` geglu or
    swiglu), one expansion to 2 x d_ff whose halves a, b give squeeze(act(a) * b) (Shazeer 2020): the
    layout of ModernBERT's Wi (input, gate) and of Llama's gate_proj and up_proj stacked."""

    def __init__(self, d_model: int, d_ff: int, kind: str = "gelu", bias: bool = True) -> None:
        super().__init__()
        self.gate_activation = GATE_ACTIVATIONS.get(kind)
        self.expansion = nn.Linear(d_model, d_ff * (1 if self.gate_activation is None else 2), bias=bias)
        self.squeeze = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_activation is None:
            return self.squeeze(F.gelu(self.expansion(x)))
        activated, gate = self.expansion(x).chunk(2, dim=-1)
        return self.squeeze(self.gate_activation(activated) * gate)


def make_feed_forward(cfg: TransformerConfig) -> FeedForward:
    return FeedForward(cfg.d_model, cfg.d_ff, cfg.ffn, cfg.bias)


def residual(x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor], norm: nn.Module,
             dropout: Dropout, placement: str,
             skip: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """One residual sublayer, by `placement` (model.norm): "pre" x + drop(f(LN(x))) (GPT-2), "post"
    LN(x + drop(f(x))) (BERT), or "mead-pre" LN(x) + drop(f(LN(x))): mead-layers' pre-LN block, whose
    residual stream is the normalised input. `skip` selects the residual stream's rows that f's outputs
    correspond to (all of them, unless f computes only some positions)."""
    if placement == "pre":
        return skip(x) + dropout(sublayer(norm(x)))
    if placement == "mead-pre":
        x = norm(x)
        return skip(x) + dropout(sublayer(x))
    return norm(skip(x) + dropout(sublayer(x)))


def gather_rows(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [B or 1, T, ...] at positions [B, Q] -> [B, Q, ...]."""
    x = x.expand(positions.shape[0], *x.shape[1:])
    return x.gather(1, positions.view(*positions.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))


class TransformerBlock(nn.Module):
    """Self-attention then feed-forward, each wrapped by `residual` with its own LayerNorm.

    `attn_norm` belongs to the attention sublayer and `ffn_norm` to the feed-forward one: BERT's
    attention.output.LayerNorm / output.LayerNorm and GPT-2's ln_1 / ln_2. (8-mile calls the norm between
    the two sublayers ln2 and the other ln1, so for post-LN its ln2 is our attn_norm.)
    Layer `index` 0 of a `first_attn_norm=false` model has no attention norm (`attn_norm` is the identity).
    """

    def __init__(self, cfg: TransformerConfig, index: int = 0) -> None:
        super().__init__()
        self.norm_placement = cfg.norm
        self.attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout, cfg.rpr_k, cfg.rpr_values,
                                       bias=cfg.bias)
        self.attn_norm = make_norm(cfg) if index or cfg.first_attn_norm else nn.Identity()
        self.ffn = make_feed_forward(cfg)
        self.ffn_norm = make_norm(cfg)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, causal: bool = False,
                mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """mask and rope: see MultiHeadAttention.forward (a given mask replaces padding_mask and causal)."""
        x = residual(x, lambda h: self.attn(h, padding_mask, causal, mask=mask, rope=rope),
                     self.attn_norm, self.dropout, self.norm_placement)
        return residual(x, self.ffn, self.ffn_norm, self.dropout, self.norm_placement)

    def at_positions(self, x: torch.Tensor, positions: torch.Tensor, padding_mask: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None, rope: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> torch.Tensor:
        """The block's outputs [B, Q, D] at positions [B, Q] only (non-causal): queries, attention output
        and feed-forward at those positions, keys and values over the whole of x. mask and rope are the
        whole sequence's, as `forward` takes them."""
        query_rope = None if rope is None else tuple(gather_rows(t.transpose(1, 2), positions).transpose(1, 2)
                                                     for t in rope)
        query_mask = None if mask is None else gather_rows(mask.transpose(1, 2), positions).transpose(1, 2)

        def attend(h: torch.Tensor) -> torch.Tensor:
            return self.attn(gather_rows(h, positions), padding_mask, memory=h, mask=query_mask, rope=rope,
                             query_rope=query_rope)

        x = residual(x, attend, self.attn_norm, self.dropout, self.norm_placement,
                     skip=lambda h: gather_rows(h, positions))
        return residual(x, self.ffn, self.ffn_norm, self.dropout, self.norm_placement)


def init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation, for `module.apply`: N(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        nn.init.ones_(module.weight)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
