"""NPZ and torch exports read back: the same model, the same tokenizer, and clear errors on mismatches."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.errors import UserError
from data_pipeline.tokenizer import files_fingerprint, load_tokenizer
from export import export_model, init_from, load_pretrained
from pretrain.model import TransformerLM
from tests.export.helpers import random_model, tiny_config, token_batch, write_vocab

VARIANTS = [
    dict(head_transform=True, output_bias=True),
    dict(embeddings="learned-bias"),
    dict(norm="pre", embeddings_layer_norm=False),
    dict(embeddings="sinusoidal"),
    dict(embeddings="none", rpr_k=3, rpr_values=True, norm="pre"),
]
FILES = {"npz": "model.npz", "torch": "model.pt"}
MODERNBERT = dict(embeddings="none", rope=True, rope_local_theta=100.0, ffn="geglu", bias=False, norm="pre",
                  first_attn_norm=False, global_every=2, local_window=4, head_transform=True, output_bias=True)
LLAMA = dict(embeddings="none", embeddings_layer_norm=False, rope=True, ffn="swiglu", bias=False, norm="pre",
             norm_layer="rmsnorm", document_mask=True)


def logits(model: TransformerLM, tokens: torch.Tensor, causal: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(model(tokens, causal=causal))


@pytest.mark.parametrize("fmt", FILES)
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_reloaded_export_gives_bit_identical_logits(fmt, variant, vocab_spec, tmp_path):
    model = random_model(**variant)
    path = export_model(model, vocab_spec, tmp_path, [fmt])[fmt]
    loaded, _ = load_pretrained(path)
    tokens = token_batch()
    assert loaded.cfg == model.cfg
    assert torch.equal(logits(loaded.eval(), tokens), logits(model, tokens))
    assert torch.equal(logits(loaded, tokens, causal=True), logits(model, tokens, causal=True))


@pytest.mark.parametrize("variant", [MODERNBERT, LLAMA], ids=["modernbert", "llama"])
def test_modern_model_reloads_from_torch_with_bit_identical_logits(variant, vocab_spec, tmp_path):
    model = random_model(**variant)
    loaded, _ = load_pretrained(export_model(model, vocab_spec, tmp_path, ["torch"])["torch"])
    tokens = token_batch()
    assert loaded.cfg == model.cfg
    assert torch.equal(logits(loaded.eval(), tokens), logits(model, tokens))


@pytest.mark.parametrize("setting,value", [("rope", True), ("ffn", "swiglu"), ("norm_layer", "rmsnorm"),
                                           ("bias", False), ("global_every", 3)])
def test_npz_of_a_model_mead_cannot_express_is_refused_naming_the_setting(setting, value, vocab_spec, tmp_path):
    with pytest.raises(UserError, match=f"model.{setting}=") as error:
        export_model(random_model(**{setting: value}), vocab_spec, tmp_path / "out", ["npz", "torch"])
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_export_directory_loads_and_prefers_the_torch_file(vocab_spec, tmp_path):
    model = random_model()
    export_model(model, vocab_spec, tmp_path, ["npz", "torch"])
    (tmp_path / "model.npz").unlink()
    loaded, _ = load_pretrained(tmp_path)
    assert torch.equal(logits(loaded.eval(), token_batch()), logits(model, token_batch()))


@pytest.mark.parametrize("fmt", FILES)
def test_reloaded_tokenizer_is_the_one_the_model_was_trained_with(fmt, vocab_spec, tmp_path):
    export_model(random_model(), vocab_spec, tmp_path / "out", [fmt])
    _, spec = load_pretrained(tmp_path / "out" / FILES[fmt])
    assert spec.vocab == str(tmp_path / "out" / "vocab.txt")
    assert load_tokenizer(spec).fingerprint == load_tokenizer(vocab_spec).fingerprint


@pytest.mark.parametrize("fmt", FILES)
def test_a_lone_export_file_unpacks_its_embedded_tokenizer(fmt, vocab_spec, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    export_model(random_model(), vocab_spec, tmp_path / "out", [fmt])
    lone = tmp_path / "elsewhere" / FILES[fmt]
    lone.parent.mkdir()
    (tmp_path / "out" / FILES[fmt]).rename(lone)
    _, spec = load_pretrained(lone)
    assert spec.vocab.startswith(str(tmp_path / "tmp"))
    assert files_fingerprint(spec.vocab) == files_fingerprint(vocab_spec.vocab)


def test_torch_export_is_plain_data_with_config_and_vocab(vocab_spec, tmp_path):
    model = random_model(embeddings="learned-bias")
    path = export_model(model, vocab_spec, tmp_path, ["torch"])["torch"]
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["config"] == dataclasses.asdict(model.cfg)
    assert checkpoint["tokenizer_fingerprint"] == load_tokenizer(vocab_spec).fingerprint
    assert bytes(checkpoint["tokenizer_files"]["vocab.txt"].numpy()) == Path(vocab_spec.vocab).read_bytes()
    assert checkpoint["state_dict"].keys() == model.state_dict().keys()


def test_init_from_copies_the_exported_weights(vocab_spec, tmp_path):
    model = random_model()
    path = export_model(model, vocab_spec, tmp_path, ["npz"])["npz"]
    fresh = TransformerLM(dataclasses.replace(model.cfg, dropout=0.1)).eval()
    init_from(fresh, path, expected_fingerprint=load_tokenizer(vocab_spec).fingerprint)
    assert torch.equal(logits(fresh, token_batch()), logits(model, token_batch()))


def test_init_from_a_bert_style_mlm_export_starts_a_headless_model_from_its_encoder(vocab_spec, tmp_path):
    mlm = random_model(head_transform=True, output_bias=True)
    path = export_model(mlm, vocab_spec, tmp_path, ["torch"])["torch"]
    headless = TransformerLM(dataclasses.replace(mlm.cfg, head_transform=False, output_bias=False)).eval()
    init_from(headless, path)
    with torch.no_grad():
        assert torch.equal(headless(token_batch()), mlm(token_batch()))


def test_init_from_an_export_without_the_lm_head_the_model_has_names_the_setting(vocab_spec, tmp_path):
    path = export_model(random_model(), vocab_spec, tmp_path, ["torch"])["torch"]
    with pytest.raises(UserError, match=r"model\.head_transform is True here but False in the export"):
        init_from(TransformerLM(tiny_config(head_transform=True)), path)


def test_init_from_an_export_of_another_architecture_names_the_setting(vocab_spec, tmp_path):
    path = export_model(random_model(embeddings="sinusoidal"), vocab_spec, tmp_path, ["torch"])["torch"]
    with pytest.raises(UserError, match=r"model\.embeddings is 'none' here but 'sinusoidal' in the export"):
        init_from(TransformerLM(tiny_config(embeddings="none", rpr_k=2)), path)


def test_init_from_an_export_with_another_vocab_is_refused(vocab_spec, tmp_path):
    path = export_model(random_model(), vocab_spec, tmp_path, ["torch"])["torch"]
    same_size_other_tokens = load_tokenizer(write_vocab(tmp_path / "other", word="piece"))
    with pytest.raises(UserError, match="trained with tokenizer"):
        init_from(TransformerLM(tiny_config()), path, expected_fingerprint=same_size_other_tokens.fingerprint)


def test_npz_without_an_array_names_the_missing_key(vocab_spec, tmp_path):
    path = export_model(random_model(), vocab_spec, tmp_path, ["npz"])["npz"]
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files if key != "TLM/TransformerEncoderStack/1/ffn/squeeze/bias"}
    np.savez(path, **arrays)
    with pytest.raises(UserError, match="'TLM/TransformerEncoderStack/1/ffn/squeeze/bias'"):
        load_pretrained(path)


def test_torch_export_with_a_wrong_shape_names_the_key(vocab_spec, tmp_path):
    path = export_model(random_model(), vocab_spec, tmp_path, ["torch"])["torch"]
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["encoder.layers.0.ffn.expansion.weight"] = torch.zeros(3, 3)
    torch.save(checkpoint, path)
    with pytest.raises(UserError, match=r"'encoder\.layers\.0\.ffn\.expansion\.weight' has shape \(3, 3\)"):
        load_pretrained(path)


def test_a_file_that_is_not_an_export_is_a_user_error(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(UserError, match="not an export of this project"):
        load_pretrained(path)


def test_exporting_with_a_tokenizer_of_another_size_is_refused(tmp_path):
    small_vocab = write_vocab(tmp_path / "small", size=32)
    with pytest.raises(UserError, match="has 32 tokens but the model's vocab_size is 64"):
        export_model(random_model(), small_vocab, tmp_path / "out", ["npz"])


def test_only_rank_zero_writes(vocab_spec, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    assert export_model(random_model(), vocab_spec, tmp_path / "out", ["npz", "torch"]) == {}
    assert not (tmp_path / "out").exists()
