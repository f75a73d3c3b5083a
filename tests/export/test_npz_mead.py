"""Our NPZ against mead-layers 2.4.2 itself: the keys its writer produces, and the logits its loader gives."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.exporter import export_model
from tests.export.helpers import VOCAB_SIZE, random_model, token_batch
from tests.export.mead import embeddings as mead_embeddings
from tests.export.mead import lm, serialize

MEAD_EMBEDDINGS = {
    "learned": mead_embeddings.LearnedPositionalLookupTableEmbeddings,
    "learned-bias": mead_embeddings.LearnedPositionalLookupTableEmbeddingsWithBias,
    "sinusoidal": mead_embeddings.PositionalLookupTableEmbeddings,
    "none": mead_embeddings.LookupTableEmbeddings,
}
POST_LN_VARIANTS = [
    dict(),
    dict(embeddings="learned-bias"),
    dict(embeddings="sinusoidal", embeddings_layer_norm=False),
    dict(embeddings="none", rpr_k=3, rpr_values=True),
    dict(embeddings="none", rpr_k=2, embeddings_layer_norm=False),
]
MEAD_PRE_LN_VARIANTS = [dict(norm="mead-pre", embeddings_layer_norm=False),
                        dict(norm="mead-pre", embeddings="none", rpr_k=2, rpr_values=True)]
PRE_LN_VARIANTS = [dict(norm="pre"), dict(norm="pre", embeddings="none", rpr_k=2, rpr_values=True)]


def mead_model(cfg) -> torch.nn.Module:
    """mead's TransformerMaskedLanguageModel with the same shape and variant as `cfg`."""
    embeddings = MEAD_EMBEDDINGS[cfg.embeddings](vsz=cfg.vocab_size, dsz=cfg.d_model, mxlen=cfg.max_len)
    model = lm.TransformerMaskedLanguageModel.create(
        {"x": embeddings}, tgt_key="x", gpu=False, d_model=cfg.d_model, num_heads=cfg.num_heads,
        layers=cfg.layers, d_ff=cfg.d_ff, dropout=0.0, layer_norms_after=cfg.norm == "post",
        layer_norm_eps=cfg.layer_norm_eps, rpr_k=cfg.rpr_k or None, rpr_value_on=cfg.rpr_values,
        embeddings_reduction="sum-layer-norm" if cfg.embeddings_layer_norm else "sum", tie_weights=True)
    return model.eval()


def our_tlm_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files if key.startswith("TLM/")}


@pytest.mark.parametrize("variant", POST_LN_VARIANTS + MEAD_PRE_LN_VARIANTS + PRE_LN_VARIANTS, ids=str)
def test_npz_keys_and_shapes_are_what_mead_writes_for_the_same_model(variant, vocab_spec, tmp_path):
    model = random_model(**variant)
    path = export_model(model, vocab_spec, tmp_path, ["npz"])["npz"]
    ours = {key: array.shape for key, array in our_tlm_arrays(path).items()}
    theirs = {key: array.shape for key, array in serialize.to_tlm_array(mead_model(model.cfg)).items()}
    assert ours == theirs


@pytest.mark.parametrize("variant", POST_LN_VARIANTS + MEAD_PRE_LN_VARIANTS, ids=str)
def test_post_ln_and_mead_pre_ln_npz_loaded_by_mead_gives_our_logits(variant, vocab_spec, tmp_path):
    model = random_model(**variant)
    path = export_model(model, vocab_spec, tmp_path, ["npz"])["npz"]
    mead = mead_model(model.cfg)
    serialize.load_tlm_npz(mead, str(path))
    tokens = token_batch()
    with torch.no_grad():
        theirs, _ = mead({"x": tokens}, None)
        ours = model.logits(model(tokens))
    assert theirs.shape == (*tokens.shape, VOCAB_SIZE)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_npz_arrays_are_float32_linear_weights_out_by_in(vocab_spec, tmp_path):
    model = random_model(d_ff=40)
    arrays = our_tlm_arrays(export_model(model, vocab_spec, tmp_path, ["npz"])["npz"])
    assert {array.dtype for array in arrays.values()} == {np.dtype(np.float32)}
    assert arrays["TLM/TransformerEncoderStack/0/ffn/expansion/weights"].shape == (40, 16)
    assert arrays["TLM/TransformerEncoderStack/0/ffn/squeeze/weights"].shape == (16, 40)
    np.testing.assert_array_equal(arrays["TLM/TransformerEncoderStack/1/attn/w_K/weights"],
                                  model.encoder.layers[1].attn.w_QKV.weight[16:32].detach().numpy())
