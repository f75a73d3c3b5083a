"""Our tokenizers as HF `tokenizers` pipelines (tokenizer.json), for HF and sentence-transformers exports:
AutoTokenizer then gives our ids, with no special tokens added around a text (our models are trained on
plain ids). WordPiece already runs through HF's pipeline (data_pipeline/wordpiece.py).

fastBPE (codes + vocab, data_pipeline/bpe.py) marks a word's last symbol with "</w>" in its codes and writes every other piece with a trailing
"@@"; an HF BPE with end_of_word_suffix "</w>" applies the same merges in the same priority order, so a
vocab token "xy@@" is the HF token "xy" and "xy" is "xy</w>". Pre-tokenisation is ours (NFC, then runs of
word characters and single other characters); ids are ours (the specials, then the vocab file's order).
fastBPE splits a piece that is not in the vocab back into smaller ones; HF cannot, so a merge whose
result is not in the vocab maps to <UNK>, which only words unlike any in the BPE's training text reach.
"""
from __future__ import annotations

import json

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

from data_pipeline import bpe, wordpiece
from data_pipeline.tokenizer import TokenizerSpec

WORD_PATTERN = r"\w+|[^\w\s]"  # bpe.pretokenize's words, within whitespace-separated chunks


def hf_bpe_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    """The HF tokenizer giving our ids for `spec`'s fastBPE codes and vocab."""
    vocab = {token: i for i, token in enumerate(bpe.SPECIAL_TOKENS)}
    for token in bpe.read_bpe_vocab(spec.vocab):
        vocab[bpe.token_symbol(token)] = len(vocab)
    unk = vocab["<UNK>"]
    merges = bpe.read_bpe_codes(spec.codes)
    for left, right in merges:
        vocab.setdefault(left + right, unk)
    symbols = {symbol for pair in merges for symbol in pair}
    for symbol in symbols:
        vocab.setdefault(symbol, unk)
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<UNK>", end_of_word_suffix=bpe.END_OF_WORD))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")])
    tokenizer.add_special_tokens(list(bpe.SPECIAL_TOKENS))
    return tokenizer


def hf_tokenizer_files(spec: TokenizerSpec, max_len: int) -> dict[str, bytes]:
    """tokenizer.json and a tokenizer_config.json for AutoTokenizer (PreTrainedTokenizerFast) giving our ids."""
    if spec.kind == "bpe":
        tokenizer = hf_bpe_tokenizer(spec)
        names = {"unk_token": "<UNK>", "pad_token": "<PAD>", "bos_token": "<GO>", "eos_token": "<EOS>",
                 "cls_token": "[CLS]", "mask_token": "[MASK]", "sep_token": "<EOS>"}
    else:
        tokens = wordpiece.read_wordpiece_vocab(spec.vocab)
        tokenizer = wordpiece.hf_wordpiece({token: i for i, token in enumerate(tokens)}, spec.lowercase)
        names = {"unk_token": wordpiece.UNK, "pad_token": wordpiece.PAD, "cls_token": wordpiece.CLS,
                 "sep_token": wordpiece.SEP, "mask_token": wordpiece.MASK}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len, **names}
    return {"tokenizer.json": tokenizer.to_str().encode(), "tokenizer_config.json": json.dumps(config, indent=2).encode()}
