"""Dual-encoder and encoder-decoder exports: every weight written in mead's layouts, and read back exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_pipeline.errors import UserError
from export import export_model, init_from, load_encoder, load_pretrained
from pretrain.model import TransformerLM
from pretrain.objectives.dual_encoder import DualEncoder, DualEncoderConfig
from pretrain.objectives.seq2seq import Seq2Seq
from tests.export.helpers import random_model, tiny_config, token_batch
from tests.export.mead import layers, serialize

PAD = 0


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.2 * torch.randn_like(param))
    return module.eval()


def dual_encoder(**heads) -> DualEncoder:
    return perturbed(DualEncoder(random_model(), DualEncoderConfig(embed_dim=12, **heads), pad_id=PAD))


def seq2seq(**model) -> Seq2Seq:
    return perturbed(Seq2Seq(random_model(**model), pad_id=PAD, start_id=2, end_id=3))


def npz_arrays(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files if not key.startswith("pretrain_service/")}


def paired_batch() -> dict[str, torch.Tensor]:
    left, right = token_batch(seed=4, length=9), token_batch(seed=5, length=6)
    left[0, 6:] = PAD
    right[1, 4:] = PAD
    return {"left": left, "right": right}


def encodings(model: DualEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    batch = paired_batch()
    with torch.no_grad():
        return model.encode(batch["left"], model.context_head), model.encode(batch["right"], model.response_head)


def seq2seq_loss(model: Seq2Seq) -> torch.Tensor:
    with torch.no_grad():
        loss_sum, _ = model(paired_batch())["losses"]["lm"]
    return loss_sum


@pytest.mark.parametrize("fmt", ["npz", "torch"])
@pytest.mark.parametrize("heads", [dict(), dict(pooling="mean", shared_head=True, projection_hidden=(20,))], ids=str)
def test_reloaded_dual_encoder_gives_bit_identical_encodings(fmt, heads, vocab_spec, tmp_path):
    model = dual_encoder(**heads)
    loaded, _ = load_pretrained(export_model(model, vocab_spec, tmp_path, [fmt])[fmt])
    for ours, theirs in zip(encodings(model), encodings(loaded.eval())):
        assert torch.equal(ours, theirs)
    assert torch.equal(loaded.log_scale, model.log_scale)


@pytest.mark.parametrize("fmt", ["npz", "torch"])
@pytest.mark.parametrize("variant", [dict(), dict(norm="pre", embeddings="learned-bias", rpr_k=2)], ids=str)
def test_reloaded_seq2seq_gives_the_bit_identical_loss(fmt, variant, vocab_spec, tmp_path):
    model = seq2seq(**variant)
    loaded, _ = load_pretrained(export_model(model, vocab_spec, tmp_path, [fmt])[fmt])
    assert torch.equal(seq2seq_loss(loaded.eval()), seq2seq_loss(model))


def test_dual_encoder_npz_has_mead_keys_with_each_attention_head_in_its_own_reduction(vocab_spec, tmp_path):
    model = dual_encoder()
    arrays = npz_arrays(export_model(model, vocab_spec, tmp_path, ["npz"])["npz"])
    cfg = model.model.cfg
    mead_stack = layers.TransformerEncoderStack(cfg.num_heads, cfg.d_model, 0.0, layers=cfg.layers, d_ff=cfg.d_ff,
                                         layer_norms_after=True)
    mead_pool = layers.TwoHeadConcat(cfg.d_model, 0.0, d_k=cfg.d_model // 2)
    mead = {**serialize.to_encoder_stack_array(mead_stack, "TLM/TransformerEncoderStack"),
            **serialize.to_attn_pool_array(mead_pool, "TLM/ReductionLayer")}
    assert {key: arrays[key].shape for key in mead} == {key: array.shape for key, array in mead.items()}
    query_rows = model.context_head.pooling.attn.w_QKV.weight.detach()[: cfg.d_model].numpy()
    np.testing.assert_array_equal(arrays["TLM/ReductionLayer/reduction1/w_Q/weights"], query_rows[:8])
    np.testing.assert_array_equal(arrays["TLM/ReductionLayer/reduction2/w_Q/weights"], query_rows[8:])
    np.testing.assert_array_equal(arrays["TLM/ff2/weights"], model.response_head.projection[0].weight.detach())


def test_seq2seq_npz_stacks_loaded_by_mead_compute_our_encoder_and_decoder(vocab_spec, tmp_path):
    model = seq2seq()
    cfg = model.encoder.cfg
    arrays = npz_arrays(export_model(model, vocab_spec, tmp_path, ["npz"])["npz"])
    mead_args = dict(num_heads=cfg.num_heads, d_model=cfg.d_model, pdrop=0.0, layers=cfg.layers, d_ff=cfg.d_ff,
                     layer_norms_after=True, layer_norm_eps=cfg.layer_norm_eps)
    encoder = layers.TransformerEncoderStack(activation="gelu", **mead_args).eval()
    decoder = layers.TransformerDecoderStack(activation_type="gelu", **mead_args).eval()
    mead = {**serialize.to_encoder_stack_array(encoder, "Seq2Seq/TransformerEncoderStack"),
            **serialize.to_decoder_stack_array(decoder, "Seq2Seq/TransformerDecoderStack")}
    assert {key: arrays[key].shape for key in mead} == {key: array.shape for key, array in mead.items()}
    serialize.from_encoder_stack_array(encoder, arrays, "Seq2Seq/TransformerEncoderStack")
    serialize.from_decoder_stack_array(decoder, arrays, "Seq2Seq/TransformerDecoderStack")
    np.testing.assert_array_equal(arrays["Seq2Seq/TgtEmbedding/y/weights"], arrays["Seq2Seq/SrcEmbeddings/x/weights"])
    batch = paired_batch()
    source_mask = batch["left"] != PAD
    with torch.no_grad():
        embedded = model.encoder.encoder.embeddings(batch["left"])
        memory = encoder((embedded, source_mask[:, None, None, :]))
        target = model.decoder.embeddings(batch["right"])
        causal = torch.ones(target.shape[1], target.shape[1], dtype=torch.bool).tril()[None, None]
        theirs = decoder((target, memory, source_mask[:, None, None, :], causal))
        our_memory = model.encoder(batch["left"], padding_mask=source_mask)
        ours = model.decoder(batch["right"], our_memory, source_mask)
    torch.testing.assert_close(memory[source_mask], our_memory[source_mask], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_training_can_start_from_a_dual_encoders_encoder(vocab_spec, tmp_path):
    model = dual_encoder()
    path = export_model(model, vocab_spec, tmp_path, ["npz"])["npz"]
    fresh = TransformerLM(tiny_config())
    init_from(fresh, path)
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in model.model.state_dict().items())


def test_load_encoder_gives_the_encoder_of_a_seq2seq_export(vocab_spec, tmp_path):
    model = seq2seq()
    encoder, _ = load_encoder(export_model(model, vocab_spec, tmp_path, ["torch"])["torch"])
    tokens = token_batch()
    with torch.no_grad():
        assert torch.equal(encoder.eval()(tokens), model.encoder(tokens))


def test_hf_export_of_a_dual_encoder_is_refused(vocab_spec, tmp_path):
    with pytest.raises(UserError, match="--format hf holds language models"):
        export_model(dual_encoder(), vocab_spec, tmp_path, ["hf"])
