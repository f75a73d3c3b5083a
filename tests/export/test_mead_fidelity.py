"""Models configured the mead way load into mead-baseline's own models and compute our outputs: a dual
encoder (PairedModel), an encoder-decoder (Seq2SeqModel); for language models (pre-LN with
model.norm=mead-pre) see test_npz_mead.py. What mead would compute differently is said once when
exporting."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from export.exporter import export_model
from pretrain.objectives.dual_encoder import DualEncoder, DualEncoderConfig
from pretrain.objectives.seq2seq import Seq2Seq
from tests.export.helpers import VOCAB_SIZE, random_model, token_batch
from tests.export.mead import embeddings as mead_embeddings
from tests.export.mead import layers, seq2seq, serialize
from tests.export.test_npz_mead import mead_model
from tests.export.test_paired import paired_batch, perturbed

PAD = 0
MEAD_EPS = 1e-6  # the LayerNorm epsilon mead's Seq2SeqModel and PairedModel use


def test_mead_pre_ln_npz_exports_without_a_note(vocab_spec, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        export_model(random_model(norm="mead-pre", embeddings_layer_norm=False), vocab_spec, tmp_path, ["npz"])
    assert not caplog.records


def test_standard_pre_ln_npz_says_once_that_mead_computes_another_function(vocab_spec, tmp_path, caplog):
    model = random_model(norm="pre")
    with caplog.at_level(logging.WARNING):
        path = export_model(model, vocab_spec, tmp_path, ["npz", "torch"])["npz"]
    assert [record.getMessage().count("mead's pre-LN block") for record in caplog.records] == [1]
    mead = mead_model(model.cfg)
    serialize.load_tlm_npz(mead, str(path))
    tokens = token_batch()
    with torch.no_grad():
        theirs, _ = mead({"x": tokens}, None)
        assert not torch.allclose(theirs, model.logits(model(tokens)), atol=1e-2)


def mead_dual_encoder() -> DualEncoder:
    """A dual encoder the mead way: mead's TwoHeadConcat pooling, one projection Linear, no embedding LN."""
    heads = DualEncoderConfig(pooling="mead-2ha", reduction_d_k=8, projection_hidden=(), embed_dim=12)
    return perturbed(DualEncoder(random_model(embeddings_layer_norm=False, layer_norm_eps=MEAD_EPS), heads,
                                 pad_id=PAD))


def test_mead_way_dual_encoder_loads_into_meads_paired_model_and_gives_our_encodings(vocab_spec, tmp_path, caplog):
    model = mead_dual_encoder()
    cfg = model.model.cfg
    with caplog.at_level(logging.WARNING):
        path = export_model(model, vocab_spec, tmp_path, ["npz"])["npz"]
    assert not caplog.records
    embeddings = mead_embeddings.LearnedPositionalLookupTableEmbeddings(vsz=VOCAB_SIZE, dsz=cfg.d_model,
                                                                        mxlen=cfg.max_len)
    mead = layers.PairedModel(embeddings, cfg.d_model, cfg.d_ff, 0.0, cfg.num_heads, cfg.layers, d_out=12,
                              reduction_d_k=8, reduction_type="2ha", layer_norms_after=True,
                              layer_norm_eps=cfg.layer_norm_eps, ffn_pdrop=0.0).eval()
    # mead-layers 2.4.2's loader accepts nn.Linear projections but PairedModel builds its own Dense (a Linear
    # with no activation here): its loader refuses its own model, so it gets the Linear inside.
    mead.ff1, mead.ff2 = mead.ff1.layer, mead.ff2.layer
    serialize.load_transformer_de_npz(mead, str(path))
    batch = paired_batch()
    with torch.no_grad():
        contexts, responses = mead(batch["left"], batch["right"])
        torch.testing.assert_close(F.normalize(contexts, dim=-1), model.encode_context(batch["left"]),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(F.normalize(responses, dim=-1), model.encode_response(batch["right"]),
                                   rtol=1e-4, atol=1e-5)


def test_dual_encoder_npz_names_what_mead_would_compute_differently(vocab_spec, tmp_path, caplog):
    model = perturbed(DualEncoder(random_model(), DualEncoderConfig(embed_dim=12, projection_hidden=(20,)),
                                  pad_id=PAD))
    with caplog.at_level(logging.WARNING):
        export_model(model, vocab_spec, tmp_path, ["npz"])
    messages = " ".join(record.getMessage() for record in caplog.records)
    for setting in ("pooling='2ha'", "projection_hidden=[20]", "embeddings_layer_norm=true"):
        assert messages.count(setting) == 1, setting


def test_mead_pre_ln_seq2seq_loads_into_meads_seq2seq_model_and_gives_our_log_probs(vocab_spec, tmp_path):
    model = perturbed(Seq2Seq(random_model(norm="mead-pre", embeddings_layer_norm=False, layer_norm_eps=MEAD_EPS),
                              pad_id=PAD, start_id=2, end_id=3))
    cfg = model.encoder.cfg
    path = export_model(model, vocab_spec, tmp_path, ["npz"])["npz"]

    def table():
        return mead_embeddings.LearnedPositionalLookupTableEmbeddings(vsz=VOCAB_SIZE, dsz=cfg.d_model, mxlen=cfg.max_len)

    mead = seq2seq.Seq2SeqModel({"x": table()}, table(), encoder_type="transformer", decoder_type="transformer",
                                hsz=cfg.d_model, layers=cfg.layers, num_heads=cfg.num_heads, d_ff=cfg.d_ff,
                                dropout=0.0, activation="gelu", gpu=False).eval()
    serialize.load_transformer_seq2seq_npz(mead, str(path))
    batch = paired_batch()
    left, right = batch["left"], batch["right"]
    with torch.no_grad():
        logits, targets = model.teacher_forced_logits(left, right)
        ours = logits.log_softmax(-1)
        decoder_inputs = torch.cat([torch.full_like(right[:, :1], 2), right], dim=1)
        theirs = mead.decode(mead.encode({"x": left}, (left != PAD).sum(1)), decoder_inputs)
    real = targets != -100
    torch.testing.assert_close(theirs[real], ours[real], rtol=1e-4, atol=1e-4)
