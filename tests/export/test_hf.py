"""HF exports loaded by transformers itself give our logits; models that do not map are refused."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertForMaskedLM, GPT2LMHeadModel, LlamaForCausalLM, ModernBertForMaskedLM

from data_pipeline.errors import UserError
from data_pipeline.sample_corpus import build_sample_corpus, stdlib_dir
from data_pipeline.vocab_learning import learn_vocab
from data_pipeline.tokenizer import load_tokenizer
from export import check_formats, export_model
from tests.export.helpers import random_model, token_batch

BERT = dict(head_transform=True)
GPT2 = dict(norm="pre", embeddings_layer_norm=False, d_ff=48)
MODERNBERT = dict(embeddings="none", rope=True, rope_theta=160000.0, rope_local_theta=10000.0, ffn="geglu",
                  bias=False, norm="pre", first_attn_norm=False, global_every=3, local_window=4,
                  head_transform=True, layers=4, layer_norm_eps=1e-5)
LLAMA = dict(embeddings="none", embeddings_layer_norm=False, rope=True, rope_theta=500.0, ffn="swiglu",
             bias=False, norm="pre", norm_layer="rmsnorm", layer_norm_eps=1e-5)
MASKED_LMS = {"bert": (BertForMaskedLM, dict(BERT)),
              "bert-biased": (BertForMaskedLM, dict(BERT, output_bias=True, embeddings="learned-bias")),
              "modernbert": (ModernBertForMaskedLM, dict(MODERNBERT)),
              "modernbert-biased": (ModernBertForMaskedLM, dict(MODERNBERT, output_bias=True, bias=True,
                                                                document_mask=True))}
CAUSAL_LMS = {"gpt2": (GPT2LMHeadModel, dict(GPT2)), "llama": (LlamaForCausalLM, dict(LLAMA)),
              "llama-biased": (LlamaForCausalLM, dict(LLAMA, bias=True, document_mask=True))}


def load_hf(model_class, directory):
    hf, info = model_class.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    return hf.eval()


@pytest.mark.parametrize("architecture", MASKED_LMS)
def test_masked_lm_export_gives_our_logits_in_transformers(architecture, vocab_spec, tmp_path):
    model_class, variant = MASKED_LMS[architecture]
    model = random_model(**variant)
    hf = load_hf(model_class, export_model(model, vocab_spec, tmp_path, ["hf"])["hf"])
    tokens = token_batch(length=16)
    padding = torch.ones_like(tokens, dtype=torch.bool)
    padding[0, 8:] = False
    with torch.no_grad():
        theirs = hf(input_ids=tokens, attention_mask=padding.long()).logits
        ours = model.logits(model(tokens, padding_mask=padding))
    torch.testing.assert_close(theirs[padding], ours[padding], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("architecture", CAUSAL_LMS)
def test_causal_lm_export_gives_our_logits_in_transformers(architecture, vocab_spec, tmp_path):
    model_class, variant = CAUSAL_LMS[architecture]
    model = random_model(**variant)
    hf = load_hf(model_class, export_model(model, vocab_spec, tmp_path, ["hf"])["hf"])
    tokens = token_batch(length=16)
    with torch.no_grad():
        theirs = hf(input_ids=tokens).logits
        ours = model.logits(model(tokens, causal=True))
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_hf_directory_tokenizes_like_our_tokenizer(vocab_spec, tmp_path):
    directory = export_model(random_model(**BERT), vocab_spec, tmp_path, ["hf"])["hf"]
    text = "Tok3 tok12 tok5tok7 unknown tok60"
    hf_ids = AutoTokenizer.from_pretrained(directory)(text, add_special_tokens=False)["input_ids"]
    assert hf_ids == load_tokenizer(vocab_spec).encode(text)


@pytest.mark.parametrize("variant, setting", [
    (dict(), "model.head_transform=False"),
    (dict(BERT, rpr_k=2), "model.rpr_k=2"),
    (dict(BERT, embeddings="sinusoidal"), "model.embeddings='sinusoidal'"),
    (dict(GPT2, output_bias=True), "model.output_bias=True"),
    (dict(GPT2, embeddings="learned-bias"), "model.embeddings='learned-bias'"),
    (dict(norm="pre"), "model.embeddings_layer_norm=True"),
], ids=str)
def test_a_model_hf_cannot_hold_is_refused_naming_the_setting(variant, setting, vocab_spec, tmp_path):
    model = random_model(**variant)
    with pytest.raises(UserError, match=f"cannot hold {setting}"):
        check_formats(model, ["npz", "hf"])
    with pytest.raises(UserError, match=f"cannot hold {setting}"):
        export_model(model, vocab_spec, tmp_path, ["npz", "hf"])
    assert not (tmp_path / "model.npz").exists()


@pytest.fixture(scope="module")
def bpe_sample(tmp_path_factory):
    """fastBPE codes and vocab learned on a sample corpus (one stdlib package), and its text files."""
    root = tmp_path_factory.mktemp("bpe")
    corpus = build_sample_corpus(root / "corpus", stdlib_dir() / "email")
    return learn_vocab("bpe", [corpus.train], root / "vocab", 1000), (corpus.train, corpus.valid)


def test_bpe_causal_lm_export_carries_a_tokenizer_json_giving_fastbpes_ids(bpe_sample, tmp_path):
    spec, texts = bpe_sample
    ours = load_tokenizer(spec)
    model = random_model(**GPT2, vocab_size=ours.vocab_size)
    directory = export_model(model, spec, tmp_path, ["hf"])["hf"]
    assert (directory / "tokenizer.json").is_file()
    hf = AutoTokenizer.from_pretrained(directory)
    lines = [line for path in texts for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(lines) > 600
    assert [hf(line)["input_ids"] for line in lines] == [ours.encode(line) for line in lines]  # no [CLS]/[SEP]
    gpt2 = load_hf(GPT2LMHeadModel, directory)
    tokens = torch.tensor([ours.encode(lines[0])[:20]])
    with torch.no_grad():
        torch.testing.assert_close(gpt2(input_ids=tokens).logits, model.logits(model(tokens, causal=True)),
                                   rtol=1e-4, atol=1e-4)


# -- ModernBERT and Llama ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, setting", [
    (dict(MODERNBERT, ffn="swiglu"), "model.ffn='swiglu'"),
    (dict(MODERNBERT, first_attn_norm=True), "model.first_attn_norm=True"),
    (dict(LLAMA, global_every=2), "model.global_every=2"),
    (dict(LLAMA, head_transform=True), "model.head_transform=True"),
], ids=str)
def test_a_modern_model_hf_cannot_hold_is_refused_naming_the_setting(variant, setting, vocab_spec, tmp_path):
    with pytest.raises(UserError, match=f"cannot hold {setting}"):
        check_formats(random_model(**variant), ["torch", "hf"])
