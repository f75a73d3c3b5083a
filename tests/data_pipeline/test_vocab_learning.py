"""Vocab learning: requested sizes, determinism, and fastBPE-compatible codes + vocab."""
from __future__ import annotations

import logging
from collections import Counter

import pytest

from data_pipeline.bpe import END_OF_WORD, fastbpe_applier, pretokenize, read_bpe_codes
from data_pipeline.errors import UserError
from data_pipeline.tokenizer import load_tokenizer
from data_pipeline.vocab_learning import learn_vocab
from data_pipeline.wordpiece import SPECIAL_TOKENS
from tests.data_pipeline.conftest import SMALL_VOCAB, write


@pytest.mark.parametrize("spec_name", ["wordpiece_spec", "bpe_spec"])
def test_learned_tokenizer_has_the_requested_size(spec_name, request):
    assert load_tokenizer(request.getfixturevalue(spec_name)).vocab_size == SMALL_VOCAB


def test_wordpiece_vocab_starts_with_the_special_tokens(wordpiece_spec):
    with open(wordpiece_spec.vocab, encoding="utf-8") as handle:
        assert [next(handle).rstrip("\n") for _ in SPECIAL_TOKENS] == list(SPECIAL_TOKENS)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_learning_twice_writes_identical_files(kind, small_corpus, tmp_path):
    first = learn_vocab(kind, [small_corpus.train], tmp_path / "a", 400)
    second = learn_vocab(kind, [small_corpus.train], tmp_path / "b", 400)
    for name in ("vocab", "codes"):
        if getattr(first, name):
            with open(getattr(first, name), "rb") as a, open(getattr(second, name), "rb") as b:
                assert a.read() == b.read()


def test_bpe_vocab_holds_every_piece_fastbpe_makes_of_the_training_text(bpe_spec, small_corpus):
    text = [" ".join(pretokenize(line)) for line in small_corpus.train.read_text().splitlines()]
    pieces = Counter(p for line in fastbpe_applier(bpe_spec.codes).apply(text) for p in line.split(" "))
    vocab = dict(line.split(" ") for line in open(bpe_spec.vocab, encoding="utf-8").read().splitlines())
    assert {token: int(count) for token, count in vocab.items() if int(count)} == dict(pieces)


def test_bpe_first_merge_count_is_its_pair_frequency(bpe_spec, small_corpus):
    words = Counter(w for line in small_corpus.train.read_text().splitlines() for w in pretokenize(line))
    (left, right), count = read_bpe_codes(bpe_spec.codes)[0], int(open(bpe_spec.codes).readline().split()[2])
    pair = left + right.removesuffix(END_OF_WORD)
    at_end = right.endswith(END_OF_WORD)
    expected = sum(n * (w.endswith(pair) if at_end else w[:-1].count(pair)) for w, n in words.items())
    assert count == expected > 0


def test_bpe_learned_codes_apply_to_new_text_without_unknown_letters(bpe_spec, small_corpus):
    tok = load_tokenizer(bpe_spec)
    ids = [i for line in tok.encode_batch(small_corpus.valid.read_text().splitlines()) for i in line]
    assert ids.count(tok.unk_id) / len(ids) < 0.001


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_vocab_size_below_the_alphabet_is_a_user_error(kind, small_corpus, tmp_path):
    with pytest.raises(UserError, match="too small for this corpus"):
        learn_vocab(kind, [small_corpus.train], tmp_path, 40)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_tiny_corpus_learns_a_smaller_vocab_and_warns(kind, tmp_path, caplog):
    text = write(tmp_path / "tiny.txt", "a b ab ba aab\n")
    with caplog.at_level(logging.WARNING):
        spec = learn_vocab(kind, [text], tmp_path / "out", 300)
    assert load_tokenizer(spec).vocab_size < 300 and "supports only" in caplog.text
