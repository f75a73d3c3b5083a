"""MultiHeadAttention against a naive reference written from the formulas (Vaswani et al.; Shaw et al.)."""
from __future__ import annotations

import math

import pytest
import torch

from pretrain.model.attention import MultiHeadAttention

D_MODEL, HEADS, WINDOW = 16, 2, 2
VARIANTS = {"plain": {}, "relative_keys": {"rpr_k": WINDOW},
            "relative_values": {"rpr_k": WINDOW, "rpr_values": True}}


def make_attention(variant: str) -> MultiHeadAttention:
    torch.manual_seed(0)
    attn = MultiHeadAttention(D_MODEL, HEADS, dropout=0.0, **VARIANTS[variant])
    for parameter in attn.parameters():  # default init leaves the biases and tables too uniform to test
        torch.nn.init.normal_(parameter, std=0.5)
    return attn.eval()


def relative_index(q_len: int, k_len: int, window: int) -> torch.Tensor:
    return torch.tensor([[min(max(j - i, -window), window) + window for j in range(k_len)] for i in range(q_len)])


def reference(attn: MultiHeadAttention, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
              causal: bool = False, memory: torch.Tensor | None = None) -> torch.Tensor:
    """softmax((q k^T + q a_ij^T) / sqrt(d)) (v + b_ij), head by head, with per-pair relative vectors."""
    source = x if memory is None else memory
    w_q, w_k, w_v = attn.w_QKV.weight.chunk(3)
    b_q, b_k, b_v = attn.w_QKV.bias.chunk(3)
    batch, q_len, k_len, d_head = x.shape[0], x.shape[1], source.shape[1], D_MODEL // HEADS

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, t.shape[1], HEADS, d_head).permute(0, 2, 1, 3)

    q, k, v = heads(x @ w_q.T + b_q), heads(source @ w_k.T + b_k), heads(source @ w_v.T + b_v)
    scores = q @ k.transpose(-1, -2)
    if attn.rpr_key is not None:
        pair_keys = attn.rpr_key.weight[relative_index(q_len, k_len, attn.rpr_k)]  # [Tq, Tk, d]
        scores = scores + torch.einsum("bhid,ijd->bhij", q, pair_keys)
    allowed = torch.ones(q_len, k_len, dtype=torch.bool)
    if causal:
        allowed = allowed.tril()
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    probs = (scores / math.sqrt(d_head)).masked_fill(~allowed, float("-inf")).softmax(-1)
    out = probs @ v
    if attn.rpr_value is not None:
        pair_values = attn.rpr_value.weight[relative_index(q_len, k_len, attn.rpr_k)]
        out = out + torch.einsum("bhij,ijd->bhid", probs, pair_values)
    return out.permute(0, 2, 1, 3).reshape(batch, q_len, D_MODEL) @ attn.w_O.weight.T + attn.w_O.bias


def inputs(batch: int = 3, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    padding_mask = torch.ones(batch, length, dtype=torch.bool)
    padding_mask[1, 4:] = False
    padding_mask[2, 1:] = False
    return torch.randn(batch, length, D_MODEL), padding_mask


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("padded,causal", [(False, False), (True, False), (False, True), (True, True)])
def test_self_attention_matches_reference(variant, padded, causal):
    attn = make_attention(variant)
    x, padding_mask = inputs()
    mask = padding_mask if padded else None
    torch.testing.assert_close(attn(x, mask, causal), reference(attn, x, mask, causal), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded,causal,mask_shape", [(False, False, None), (False, True, None),
                                                       (True, False, (3, 1, 1, 7)), (True, True, (3, 1, 7, 7))])
def test_sdpa_gets_a_square_mask_only_for_causal_padded_input(monkeypatch, padded, causal, mask_shape):
    """No mask tensor without padding keeps SDPA's fused kernels available."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(*args, attn_mask=None, is_causal=False, **kwargs):
        calls.append((None if attn_mask is None else tuple(attn_mask.shape), is_causal))
        return sdpa(*args, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    x, padding_mask = inputs()
    make_attention("plain")(x, padding_mask if padded else None, causal)
    assert calls == [(mask_shape, causal and not padded)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_cross_attention_matches_reference(variant):
    attn = make_attention(variant)
    x, _ = inputs(length=4)
    memory, memory_mask = inputs(length=7)
    torch.testing.assert_close(attn(x, memory_mask, memory=memory), reference(attn, x, memory_mask, memory=memory),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_gradients_match_reference(variant):
    attn = make_attention(variant).double()  # float64: the sums of large gradients are exact enough to compare
    x, padding_mask = inputs()
    x = x.double()
    params = list(attn.parameters())
    got = torch.autograd.grad(attn(x, padding_mask, causal=True).square().sum(), params)
    expected = torch.autograd.grad(reference(attn, x, padding_mask, causal=True).square().sum(), params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_padding_sequence_keeps_gradients_finite(variant):
    attn = make_attention(variant)
    x, padding_mask = inputs()
    padding_mask[0] = False
    attn(x.requires_grad_(), padding_mask).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_integer_padding_mask_is_rejected():
    attn = make_attention("plain")
    x, padding_mask = inputs()
    with pytest.raises(TypeError, match="bool"):
        attn(x, padding_mask.long())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("padded,causal", [(False, False), (True, False), (False, True), (True, True)])
def test_training_with_attention_dropout_on_cpu_takes_the_explicit_path_with_the_same_attention(
        monkeypatch, variant, padded, causal):
    """SDPA's CPU path would draw torch's slow dropout masks: training with attention dropout computes the
    weights itself, and with every weight kept (a mask of ones) it is the reference attention."""
    monkeypatch.setattr("pretrain.model.dropout.keep_scale", lambda shape, p: torch.ones(shape))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", None)  # any call fails
    attn = make_attention(variant).train()
    attn.dropout_p = 0.1
    x, padding_mask = inputs()
    mask = padding_mask if padded else None
    torch.testing.assert_close(attn(x, mask, causal), reference(attn, x, mask, causal), atol=1e-5, rtol=1e-5)
