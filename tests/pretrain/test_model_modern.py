"""The modern components of the Transformer family: rotary positions, gated FFNs, RMSNorm, bias-free layers,
alternating local/global attention and document masks for packed blocks."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from data_pipeline.errors import UserError
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.model.attention import self_attention_mask
from pretrain.model.documents import document_ids, document_positions
from pretrain.model.rotary import apply_rope, rope_angles
from pretrain.model.transformer import FeedForward
from pretrain.objectives.language_modeling import MaskedLM, target_slots, token_cross_entropy

VOCAB, SEP = 50, 3
MODERN = {"rope": True, "embeddings": "none", "ffn": "geglu", "bias": False, "norm": "pre",
          "first_attn_norm": False, "global_every": 3, "local_window": 4, "rope_local_theta": 100.0,
          "head_transform": True, "output_bias": True}
LLAMA = {"rope": True, "embeddings": "none", "embeddings_layer_norm": False, "ffn": "swiglu", "bias": False,
         "norm": "pre", "norm_layer": "rmsnorm"}


def modern_lm(**overrides) -> TransformerLM:
    torch.manual_seed(0)
    settings = {"vocab_size": VOCAB, "d_model": 16, "num_heads": 2, "layers": 3, "d_ff": 24, "max_len": 64,
                **MODERN, **overrides}
    return TransformerLM(TransformerConfig(**settings)).eval()


def random_document(length: int, seed: int) -> torch.Tensor:
    """Tokens of one document (no separator inside), ending with the separator."""
    tokens = torch.randint(SEP + 1, VOCAB, (length,), generator=torch.Generator().manual_seed(seed))
    tokens[-1] = SEP
    return tokens


# -- rotary positions --------------------------------------------------------------------------------------

def test_rope_rotates_each_channel_pair_by_position_times_its_frequency():
    # Reference: channel c and c + d/2 form the complex number x_c + i x_(c+d/2), multiplied by
    # exp(i p theta^(-2c/d)).
    head_dim, theta = 8, 500.0
    x = torch.randn(1, 1, 5, head_dim, dtype=torch.float64).float()
    positions = torch.tensor([[0, 1, 2, 7, 30]])
    rotated = apply_rope(x, *rope_angles(positions, head_dim, theta))
    half = head_dim // 2
    frequencies = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / head_dim)
    complex_x = torch.complex(x[..., :half].double(), x[..., half:].double())
    expected = complex_x * torch.exp(1j * positions[0, :, None].double() * frequencies)
    torch.testing.assert_close(rotated[..., :half].double(), expected.real, atol=1e-5, rtol=0)
    torch.testing.assert_close(rotated[..., half:].double(), expected.imag, atol=1e-5, rtol=0)


def test_rope_gradient_is_the_element_wise_formulas():
    x = torch.randn(2, 3, 5, 8, requires_grad=True)
    cos, sin = rope_angles(torch.tensor([[0, 1, 2, 7, 30], [4, 0, 1, 2, 3]]), 8, 500.0)
    upstream = torch.randn(2, 3, 5, 8)
    (apply_rope(x, cos, sin) * upstream).sum().backward()
    ours, x.grad = x.grad, None
    first, second = x.chunk(2, dim=-1)
    ((x * cos + torch.cat((-second, first), dim=-1) * sin) * upstream).sum().backward()
    torch.testing.assert_close(ours, x.grad, atol=1e-6, rtol=1e-5)


def test_rope_scores_depend_only_on_the_offset():
    q, k = torch.randn(2, 1, 1, 1, 8).unbind(0)
    def score(i: int, j: int) -> torch.Tensor:
        qi = apply_rope(q, *rope_angles(torch.tensor([[i]]), 8, 10000.0))
        kj = apply_rope(k, *rope_angles(torch.tensor([[j]]), 8, 10000.0))
        return (qi * kj).sum()
    torch.testing.assert_close(score(3, 1), score(12, 10), atol=1e-5, rtol=0)
    assert not torch.allclose(score(3, 1), score(3, 2))


# -- documents and masks -----------------------------------------------------------------------------------

def test_documents_end_at_each_separator_and_positions_restart_after_it():
    tokens = torch.tensor([[7, 8, SEP, 9, SEP, 5, 6, 4], [SEP, 5, 5, 5, 5, SEP, SEP, 6]])
    documents, positions = document_ids(tokens, SEP), document_positions(document_ids(tokens, SEP))
    for row in range(tokens.shape[0]):  # brute force: walk the row
        document, position = 0, 0
        for t, token in enumerate(tokens[row].tolist()):
            assert (documents[row, t], positions[row, t]) == (document, position)
            document, position = (document + 1, 0) if token == SEP else (document, position + 1)


@pytest.mark.parametrize("causal,window,padded,with_documents",
                         list(itertools.product((False, True), (None, 2), (False, True), (False, True))))
def test_attention_mask_equals_brute_force(causal, window, padded, with_documents):
    length = 9
    documents = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, 1, 2, 2]])
    padding = torch.arange(length)[None] < torch.tensor([[9], [6]])
    mask = self_attention_mask(length, torch.device("cpu"), padding_mask=padding if padded else None,
                               causal=causal, documents=documents if with_documents else None,
                               half_window=window)
    for b, i, j in itertools.product(range(2), range(length), range(length)):
        allowed = (not padded or bool(padding[b, j])) and (not causal or j <= i) and \
            (not with_documents or documents[b, i] == documents[b, j]) and (window is None or abs(i - j) <= window)
        assert bool(mask[min(b, mask.shape[0] - 1), 0, i, j]) == (allowed or i == j), (b, i, j)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("variant", [MODERN, LLAMA], ids=["modernbert", "llama"])
def test_packed_documents_give_the_outputs_of_each_document_alone(variant, causal):
    lm = modern_lm(**variant)
    first, second = random_document(7, seed=1), random_document(11, seed=2)
    packed = torch.cat([first, second])[None]
    hidden = lm(packed, causal=causal, documents=document_ids(packed, SEP))
    alone = torch.cat([lm(first[None], causal=causal)[0], lm(second[None], causal=causal)[0]])
    torch.testing.assert_close(hidden[0], alone, atol=1e-5, rtol=1e-5)
    crossing = lm(packed, causal=causal)
    assert not torch.allclose(crossing[0, 7:], alone[7:], atol=1e-3)  # without the mask they do mix


# -- local / global layers ---------------------------------------------------------------------------------

def test_every_nth_layer_is_global_starting_with_the_first():
    cfg = TransformerConfig(vocab_size=VOCAB, layers=7, global_every=3)
    assert [cfg.is_global(i) for i in range(7)] == [True, False, False, True, False, False, True]
    assert [cfg.layer_rope_theta(i) for i in range(3)] == [10000.0] * 3
    local_theta = TransformerConfig(vocab_size=VOCAB, layers=3, global_every=3, rope_local_theta=10.0)
    assert [local_theta.layer_rope_theta(i) for i in range(3)] == [10000.0, 10.0, 10.0]


@pytest.mark.parametrize("global_every,reaches", [(1, True), (2, False)])
def test_a_local_layer_does_not_see_beyond_its_window(global_every, reaches):
    # Two layers; layer 0 is always global, so its attention output is zeroed and only layer 1 mixes
    # positions: local (window 4, |i - j| <= 2) when global_every=2, global when global_every=1.
    lm = modern_lm(layers=2, global_every=global_every, local_window=4, first_attn_norm=True)
    lm.encoder.layers[0].attn.w_O.weight.data.zero_()  # layer 0 mixes nothing: only layer 1 attends
    tokens = torch.randint(SEP + 1, VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    changed = tokens.clone()
    changed[0, 11] = (tokens[0, 11] + 1 - SEP - 1) % (VOCAB - SEP - 1) + SEP + 1
    difference = (lm(tokens) - lm(changed))[0].abs().amax(-1)
    assert bool(difference[11] > 0) and bool(difference[9] > 0)  # itself, and 2 tokens away (half window 2)
    assert bool(difference[5] > 1e-6) == reaches


# -- layers ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,activation", [("geglu", F.gelu), ("swiglu", F.silu)])
def test_gated_feed_forward_is_activation_of_one_half_times_the_other(kind, activation):
    ffn = FeedForward(6, 5, kind, bias=False)
    x = torch.randn(4, 6)
    a, b = (x @ ffn.expansion.weight.t()).chunk(2, dim=-1)
    torch.testing.assert_close(ffn(x), (activation(a) * b) @ ffn.squeeze.weight.t())


def test_bias_free_model_has_no_bias_but_the_configured_output_bias():
    names = [name for name, _ in modern_lm().named_parameters()]
    assert [name for name in names if "bias" in name] == ["output_bias"]


def test_modernbert_layout_skips_the_first_attention_norm_only():
    lm = modern_lm()
    assert isinstance(lm.encoder.layers[0].attn_norm, torch.nn.Identity)
    assert all(isinstance(layer.attn_norm, torch.nn.LayerNorm) for layer in lm.encoder.layers[1:])
    assert isinstance(lm.encoder.embeddings.layer_norm, torch.nn.LayerNorm)


def test_llama_layout_uses_rms_norms_everywhere():
    lm = modern_lm(**LLAMA)
    norms = [m for m in lm.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm))]
    assert norms and all(isinstance(m, torch.nn.RMSNorm) for m in norms)


@pytest.mark.parametrize("variant", [MODERN, LLAMA], ids=["modernbert", "llama"])
def test_every_parameter_of_a_modern_variant_gets_a_gradient(variant):
    lm = modern_lm(**variant).train()
    tokens = torch.cat([random_document(5, 1), random_document(9, 2)])[None]
    lm.logits(lm(tokens, documents=document_ids(tokens, SEP))).logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lm.parameters())


@pytest.mark.parametrize("bad,field", [
    ({"ffn": "relu"}, "model.ffn"),
    ({"norm_layer": "batchnorm"}, "model.norm_layer"),
    ({"rope": True, "d_model": 18, "num_heads": 2}, "even"),
    ({"global_every": 0}, "model.global_every"),
    ({"rope": True, "rpr_k": 2}, "rpr_k"),
    ({"first_attn_norm": False}, "model.norm=pre"),
])
def test_invalid_modern_settings_raise_one_line_user_errors(bad, field):
    with pytest.raises(UserError) as error:
        TransformerConfig(**{"vocab_size": VOCAB, "d_model": 16, "num_heads": 2, **bad})
    assert field in str(error.value) and "\n" not in str(error.value)


# -- MLM: the last layer computed at the targets only ------------------------------------------------------

@pytest.mark.parametrize("variant", ["modern", "modern-padded", "bert", "mead-pre"])
def test_mlm_last_layer_at_the_targets_gives_the_full_model_loss_and_gradients(variant):
    settings = {"modern": {"document_mask": True, "layers": 3, "global_every": 2},
                "modern-padded": {"layers": 2},
                "bert": {**{key: TransformerConfig.__dataclass_fields__[key].default for key in MODERN},
                         "head_transform": True},
                "mead-pre": {"norm": "mead-pre", "first_attn_norm": True, "layers": 2}}[variant]
    lm = modern_lm(dropout=0.0, **settings)
    objective = MaskedLM(lm, mask_rate=0.3, sep_id=SEP)
    tokens = torch.cat([random_document(7, 1), random_document(9, 2), random_document(16, 3),
                        random_document(12, 4), random_document(20, 5)]).view(2, 32)
    targets = torch.tensor([1, 2, 5, 11, 12, 30, 33, 40, 41, 42, 43, 44, 50, 63])  # uneven per row
    batch = {"inputs": tokens, "target_index": targets, "targets": tokens.view(-1)[targets]}
    if variant == "modern-padded":
        batch["padding_mask"] = torch.arange(32) < torch.tensor([[32], [25]])
    out = objective(batch)
    out["losses"]["lm"][0].backward()
    grads = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()
    hidden = lm(tokens, padding_mask=batch.get("padding_mask"), documents=objective.documents(tokens))
    full = token_cross_entropy(lm.logits(hidden.reshape(-1, hidden.shape[-1])[targets]), batch["targets"])
    full["losses"]["lm"][0].backward()
    torch.testing.assert_close(out["losses"]["lm"][0], full["losses"]["lm"][0], atol=1e-5, rtol=1e-5)
    assert out["metrics"]["accuracy"][0] == full["metrics"]["accuracy"][0]
    for grad, param in zip(grads, lm.parameters()):
        torch.testing.assert_close(grad, param.grad, atol=1e-6, rtol=1e-4)


def test_target_slots_lay_each_rows_targets_out_in_order():
    positions, picked = target_slots(torch.tensor([1, 3, 9, 10, 11]), batch=3, length=4)
    assert positions.tolist() == [[1, 3, 0], [0, 0, 0], [1, 2, 3]]  # row 1 has no target; short rows pad with 0
    assert picked.tolist() == [0, 1, 6, 7, 8]
    assert positions.view(-1)[picked].tolist() == [1, 3, 1, 2, 3]  # each target's column, in order
