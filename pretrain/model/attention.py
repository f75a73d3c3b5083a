"""Multi-head attention: self- or cross-attention, padding, causal, document and sliding-window masks, Shaw
et al. relative positions and rotary positions.

Every variant runs through F.scaled_dot_product_attention, which picks fused flash / memory-efficient
kernels where the inputs allow, but two: relative *values* need the attention weights themselves, and so
does attention dropout on CPU, where SDPA has no fused kernel with dropout and its math path draws torch's
slow masks (`pretrain.model.dropout`). Those take the explicit path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.dropout import dropout
from pretrain.model.rotary import apply_rope


def relative_positions(q_len: int, k_len: int, window: int, device: torch.device) -> torch.Tensor:
    """[q_len, k_len] indices into a (2 * window + 1)-row table: clamp(j - i, -window, window) + window."""
    offsets = torch.arange(k_len, device=device)[None, :] - torch.arange(q_len, device=device)[:, None]
    return offsets.clamp(-window, window) + window


def allowed_keys(key_padding_mask: torch.Tensor | None, causal: bool, q_len: int, k_len: int,
                 device: torch.device) -> torch.Tensor | None:
    """Bool mask broadcastable to [B, H, q_len, k_len], True where a query may attend; None = everywhere.

    Only padding gives [B, 1, 1, k_len] (a view, no T x T tensor); only the causal+padding case builds
    [B, 1, T, T].
    """
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    if causal:
        lower = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()
        mask = lower if mask is None else mask & lower
    return mask


def self_attention_mask(length: int, device: torch.device, *, padding_mask: torch.Tensor | None = None,
                        causal: bool = False, documents: torch.Tensor | None = None,
                        half_window: int | None = None) -> torch.Tensor:
    """Bool [B or 1, 1, T, T], True where query i may attend to key j: j is a real token, j <= i (causal),
    j is in i's document (documents [B, T] ids) and |i - j| <= half_window (sliding window).

    Every query may also attend to itself, so no row is empty (an all-False row makes SDPA return NaNs):
    that changes only the outputs at padding positions, which nothing reads.
    """
    index = torch.arange(length, device=device)
    offsets = index[None, :] - index[:, None]
    mask = torch.ones(1, 1, length, length, dtype=torch.bool, device=device)
    if padding_mask is not None:
        mask = mask & padding_mask[:, None, None, :]
    if causal:
        mask = mask & (offsets <= 0)
    if documents is not None:
        mask = mask & (documents[:, None, :, None] == documents[:, None, None, :])
    if half_window is not None:
        mask = mask & (offsets.abs() <= half_window)
    return mask | (offsets == 0)


def cross_attention_mask(query_documents: torch.Tensor, key_documents: torch.Tensor) -> torch.Tensor:
    """Bool [B, 1, Tq, Tk], True where query i and key j carry the same pair id (packed pairs: a target
    attends to its own source only). A padding query (-1) may attend everywhere, so no row is empty (an
    all-False row makes SDPA return NaNs, and NaN values poison the next layer even under a zero weight)."""
    same = query_documents[:, :, None] == key_documents[:, None, :]
    return (same | (query_documents < 0)[:, :, None]).unsqueeze(1)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over `num_heads` heads, with optional relative positions.

    Q, K and V come from one fused [3D, D] projection `w_QKV` (rows: Q, then K, then V; split with
    `.chunk(3)` to get 8-mile's w_Q, w_K, w_V). For cross-attention (`memory` given) the same weight's Q
    rows project the queries and its K, V rows project the memory, so encoder and decoder blocks share one
    module and one parameter layout.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float, rpr_k: int = 0,
                 rpr_values: bool = False, bias: bool = True) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if rpr_values and not rpr_k:
            raise ValueError("relative values need rpr_k > 0")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout_p = dropout
        self.rpr_k = rpr_k
        self.w_QKV = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.w_O = nn.Linear(d_model, d_model, bias=bias)
        # One table per layer shared by the heads, as in Shaw et al. and 8-mile.
        self.rpr_key = nn.Embedding(2 * rpr_k + 1, self.head_dim) if rpr_k else None
        self.rpr_value = nn.Embedding(2 * rpr_k + 1, self.head_dim) if rpr_values else None

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None, causal: bool = False,
                memory: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                query_rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x [B, Tq, D] -> [B, Tq, D].

        key_padding_mask: [B, Tk] bool, True at real keys (keys are x, or memory when given); None = no
        padding. causal: query i sees keys j <= i (self-attention only). mask: a precomputed bool mask
        (`self_attention_mask`) that replaces both. rope: (cos, sin) of `rotary.rope_angles`, applied to
        keys, and to queries unless query_rope (the angles at the queries' own positions) is given.
        """
        if causal and memory is not None:
            raise ValueError("causal masking applies to self-attention, not to attention over a memory")
        if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask must be bool (True = real token), got {key_padding_mask.dtype}")
        q, k, v = self._project(x, memory)
        if rope is not None:
            q, k = apply_rope(q, *(query_rope or rope)), apply_rope(k, *rope)
        if mask is None and (key_padding_mask is not None or (causal and self.rpr_key is not None)):
            mask = allowed_keys(key_padding_mask, causal, q.shape[2], k.shape[2], q.device)
        if self.rpr_value is not None or (self.training and self.dropout_p and q.device.type == "cpu"):
            out = self._explicit_attention(q, k, v, mask, causal)
        else:
            out = self._sdpa(q, k, v, mask, causal and mask is None)
        batch, _, q_len, _ = out.shape
        return self.w_O(out.transpose(1, 2).reshape(batch, q_len, -1))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, H, T, d_head] (a view)."""
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _project(self, x: torch.Tensor, memory: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if memory is None:
            return tuple(self._heads(t) for t in self.w_QKV(x).chunk(3, dim=-1))
        weight_q, weight_kv = self.w_QKV.weight.split([x.shape[-1], 2 * x.shape[-1]])
        bias = self.w_QKV.bias
        bias_q, bias_kv = (None, None) if bias is None else bias.split([x.shape[-1], 2 * x.shape[-1]])
        k, v = F.linear(memory, weight_kv, bias_kv).chunk(2, dim=-1)
        return self._heads(F.linear(x, weight_q, bias_q)), self._heads(k), self._heads(v)

    def _relative_key_scores(self, q: torch.Tensor, k_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled q_i . a_(j-i) as [B, H, Tq, Tk], and the relative index matrix used to build it.

        Scores against the 2k+1 table rows first ([B, H, Tq, 2k+1]), then gathered per (i, j): the
        [Tq, Tk, d_head] tensor of per-pair key vectors is never built.
        """
        q_len = q.shape[2]
        index = relative_positions(q_len, k_len, self.rpr_k, q.device)
        table_scores = q @ self.rpr_key.weight.t()
        return table_scores.gather(-1, index.expand(*q.shape[:2], q_len, k_len)), index

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              is_causal: bool) -> torch.Tensor:
        """mask: bool, True where a query may attend (None: everywhere, or causally when is_causal)."""
        dropout_p = self.dropout_p if self.training else 0.0
        if self.rpr_key is None and mask is None:
            # No mask tensor at all: the fused kernels apply the causal mask themselves.
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal)
        if self.rpr_key is not None:
            # SDPA adds a float mask after scaling q.k, so the relative-key bias carries the same scale.
            bias = self._relative_key_scores(q, k.shape[2])[0] * self.head_dim ** -0.5
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)

    def _explicit_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                            causal: bool) -> torch.Tensor:
        """out_i = sum_j p_ij (v_j [+ b_(j-i)]), p = dropout(softmax((q.k [+ q.a]) / sqrt(d))): relative keys
        and values where the layer has them. mask: as for `_sdpa`; causal applies when mask is None."""
        scores = q @ k.transpose(-1, -2)
        if self.rpr_key is not None:
            relative_scores, index = self._relative_key_scores(q, k.shape[2])
            scores = scores + relative_scores
        scores = scores * self.head_dim ** -0.5
        if mask is None and causal:
            mask = allowed_keys(None, True, q.shape[2], k.shape[2], q.device)
        if mask is not None:
            # The dtype's minimum rather than -inf: a query with no visible key (an all-padding row) then
            # gets uniform weights instead of NaNs that would poison the backward pass.
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = dropout(scores.softmax(dim=-1), self.dropout_p, self.training)
        if self.rpr_value is None:
            return probs @ v
        # Sum each query's weights per relative offset, then mix the 2k+1 value vectors once.
        offset_probs = probs.new_zeros(*probs.shape[:3], self.rpr_value.num_embeddings)
        offset_probs.scatter_add_(-1, index.expand_as(probs), probs)
        return probs @ v + offset_probs @ self.rpr_value.weight
