"""fastBPE tokenizer: mead-baseline ids, the pre-tokenisation rule, the word cache, and file validation."""
from __future__ import annotations

import numpy as np
import pytest

from data_pipeline.bpe import BPETokenizer, fastbpe_applier, pretokenize
from data_pipeline.errors import DataError
from data_pipeline.tokenizer import TokenizerSpec, load_tokenizer
from tests.data_pipeline.conftest import one_line_error, write

CODES = "l o 9\nlo w</w> 8\nn e 7\nne w</w> 6\ne r</w> 5\nlo w 4\n"
VOCAB = "low 9\nnew 8\nlow@@ 4\ner 3\nl@@ 1\no@@ 1\nw 1\nn@@ 1\ne@@ 1\nr 1\n. 2\n"


@pytest.fixture
def toy(tmp_path) -> BPETokenizer:
    spec = TokenizerSpec("bpe", str(write(tmp_path / "vocab", VOCAB)), str(write(tmp_path / "codes", CODES)))
    return load_tokenizer(spec)


def pieces(tok: BPETokenizer, ids: list[int]) -> list[str]:
    return [tok.decode([i]) for i in ids]


def test_special_ids_follow_mead_baseline_then_vocab_file_order(toy):
    assert (toy.pad_id, toy.sep_id, toy.unk_id, toy.cls_id, toy.mask_id) == (0, 2, 3, 4, 5)
    assert toy.special_ids == frozenset(range(6))
    assert toy.vocab_size == 6 + len(VOCAB.splitlines())
    assert toy.encode("low new") == [6, 7]


def test_pretokenize_splits_word_runs_and_single_other_characters():
    assert pretokenize("f(x_1),  don't\tstop!!") == ["f", "(", "x_1", ")", ",", "don", "'", "t", "stop", "!", "!"]


def test_encode_marks_continuations_and_decode_glues_them(toy):
    ids = toy.encode("lower.")
    assert pieces(toy, ids) == ["low@@", "er", "."]
    assert toy.decode(ids) == "lower ."


def test_character_never_seen_in_training_is_unk(toy):
    assert toy.encode("low z") == [6, toy.unk_id]


def test_our_ids_are_fastbpe_segmentation_of_held_out_text(bpe_spec, small_corpus):
    tok = load_tokenizer(bpe_spec)
    texts = small_corpus.valid.read_text().splitlines()
    segmented = fastbpe_applier(bpe_spec.codes, bpe_spec.vocab).apply([" ".join(pretokenize(t)) for t in texts])
    assert [pieces(tok, ids) for ids in tok.encode_batch(texts)] == [s.split(" ") for s in segmented]


def test_round_trip_gives_pretokenized_text(bpe_spec, small_corpus):
    tok = load_tokenizer(bpe_spec)
    for text in small_corpus.train.read_text().splitlines()[:50]:
        assert tok.decode(tok.encode(text)) == " ".join(pretokenize(text))


def test_full_cache_is_cleared_and_results_do_not_change(bpe_spec, small_corpus):
    texts = [t for t in small_corpus.train.read_text().splitlines() if len(set(pretokenize(t))) <= 50][:200]
    small_cache = BPETokenizer(bpe_spec, cache_words=50)
    assert [small_cache.encode(t) for t in texts] == load_tokenizer(bpe_spec).encode_batch(texts)
    assert 0 < len(small_cache._cache) <= 50


def test_word_starts_follow_the_previous_token_along_the_last_axis(toy):
    ids = np.array([[6, 8, 9, 16], [8, 0, 8, 9]])  # low | low@@ er | . ; low@@ <PAD> low@@ er
    assert toy.word_starts(ids).tolist() == [[True, True, False, True], [True, True, True, False]]


@pytest.mark.parametrize("codes, message", [
    ("l o 9\nlo w</w>\n", ":2: expected `left right count`"),
    ("l o 9\nlo w</w> many\n", ":2: count 'many' is not a non-negative integer"),
    ("l o 9\nl o 3\n", ":2: merge l + o repeats line 1"),
    ("lo w 9\nl ow 3\n", ":2: merge l + ow repeats line 1"),
    ("l</w> o 9\n", ":1: </w> may only end the right symbol"),
])
def test_malformed_codes_are_one_data_error_naming_the_line(tmp_path, codes, message):
    spec = TokenizerSpec("bpe", str(write(tmp_path / "vocab", VOCAB)), str(write(tmp_path / "codes", codes)))
    with pytest.raises(DataError) as excinfo:
        load_tokenizer(spec)
    assert one_line_error(excinfo).startswith(spec.codes) and message in str(excinfo.value)


@pytest.mark.parametrize("vocab, message", [
    ("", "empty"),
    ("low 9\nnew\n", ":2: expected `token count`"),
    ("low 9\nnew -1\n", ":2: count '-1' is not a non-negative integer"),
    ("low 9\nlow 2\n", ":2: duplicate token 'low' (first on line 1)"),
    ("low 9\n<PAD> 2\n", ":2: '<PAD>' is a reserved special token"),
])
def test_malformed_vocab_is_one_data_error_naming_the_line(tmp_path, vocab, message):
    spec = TokenizerSpec("bpe", str(write(tmp_path / "vocab", vocab)), str(write(tmp_path / "codes", CODES)))
    with pytest.raises(DataError) as excinfo:
        load_tokenizer(spec)
    assert one_line_error(excinfo).startswith(spec.vocab) and message in str(excinfo.value)


def test_bpe_without_codes_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="needs both a codes and a vocab"):
        load_tokenizer(TokenizerSpec("bpe", str(write(tmp_path / "vocab", VOCAB))))
