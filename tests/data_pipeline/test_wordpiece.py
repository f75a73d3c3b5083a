"""WordPiece over a BERT vocab.txt: ids, round trips, word starts, and one DataError per bad vocab."""
from __future__ import annotations

import numpy as np
import pytest

from data_pipeline.errors import DataError
from data_pipeline.tokenizer import TokenizerSpec, load_tokenizer
from data_pipeline.wordpiece import WordPieceTokenizer, hf_wordpiece, read_wordpiece_vocab
from tests.data_pipeline.conftest import one_line_error, write

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[unused0]", "the", "token", "##izer", "##s", "split",
         "words", ",", ".", "!", "Token", "The"]


@pytest.fixture
def toy(tmp_path):
    path = write(tmp_path / "vocab.txt", "\n".join(VOCAB) + "\n")
    return lambda lowercase=True: load_tokenizer(TokenizerSpec("wordpiece", str(path), lowercase=lowercase))


def test_ids_are_vocab_lines_and_bracketed_tokens_are_special(toy):
    tok = toy()
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == len(VOCAB)
    assert tok.special_ids == frozenset({0, 1, 2, 3, 4, 5})


def test_encode_splits_pieces_and_decode_glues_them(toy):
    tok = toy()
    ids = tok.encode("The tokenizers split words!")
    assert [VOCAB[i] for i in ids] == ["the", "token", "##izer", "##s", "split", "words", "!"]
    assert tok.decode(ids) == "the tokenizers split words!"


def test_cased_vocab_keeps_case(toy):
    assert [VOCAB[i] for i in toy(lowercase=False).encode("The Token")] == ["The", "Token"]


def test_encode_adds_no_special_tokens_and_literal_mask_stays_text(toy):
    tok = toy()
    ids = tok.encode("the [MASK] token")
    assert tok.mask_id not in ids and tok.cls_id not in ids and ids[0] == VOCAB.index("the")


def test_unknown_word_is_unk(toy):
    assert toy().encode("zebra") == [1]


def test_encode_batch_equals_encode(wordpiece_spec, small_corpus):
    tok = load_tokenizer(wordpiece_spec)
    texts = small_corpus.valid.read_text().splitlines()
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_round_trip_on_real_text_gives_normalised_text(wordpiece_spec, small_corpus):
    tok = load_tokenizer(wordpiece_spec)
    texts = small_corpus.train.read_text().splitlines()[:50]
    known = [(text, ids) for text, ids in zip(texts, tok.encode_batch(texts)) if tok.unk_id not in ids]
    assert len(known) > 40
    for text, ids in known:
        assert tok.decode(ids).replace(" ", "") == text.lower().replace(" ", "")


def test_word_starts_are_false_only_on_continuations(toy):
    tok = toy()
    ids = np.array([[2, 7, 8, 9, 10], [7, 9, 0, 0, 0]])
    assert tok.word_starts(ids).tolist() == [[True, True, False, False, True], [True, False, True, True, True]]


@pytest.mark.parametrize("content, message", [
    ("", "empty"),
    ("[UNK]\n[PAD]\n[CLS]\n[SEP]\n[MASK]\n", ":1: first token is '[UNK]'"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n", "missing special token(s) [MASK]"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nthe\n", ":7: duplicate token 'the' (first on line 6)"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe 12\n", ":6: 'the 12' is not one token"),
    ("[PAD]\n[UNK]\n\n[CLS]\n[SEP]\n[MASK]\n", ":3: '' is not one token"),
    (b"[PAD]\n[UNK]\n\xff\xfe\n", ":3: WordPiece vocab file is not UTF-8"),
])
def test_malformed_vocab_is_one_data_error_naming_the_line(tmp_path, content, message):
    path = write(tmp_path / "vocab.txt", content)
    with pytest.raises(DataError) as excinfo:
        load_tokenizer(TokenizerSpec("wordpiece", str(path)))
    assert one_line_error(excinfo).startswith(str(path)) and message in str(excinfo.value)


def test_missing_vocab_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(TokenizerSpec("wordpiece", str(tmp_path / "nope.txt")))


ADVERSARIAL = [
    "Café naïve RÉSUMÉ Ångström façade", "ΣΊΣΥΦΟΣ ΌΔΟΣ σοφός", "İstanbul ǅemal ß ﬁ",  # accents, sigma, İ
    "中文字符和日本語のテキスト、한국어", "emoji 🤖🚀👍🏽 and ZWJ 👨‍👩‍👧 text",
    "control\x00\x01\x07\x0b\x0c\x1c\x1f\x7f\x85 chars\tand\r\nbreaks", "zero\u200bwidth\u00a0nbsp\u3000ideographic",
    "replacement \ufffd char", "«guillemets» „quotes“ — dashes – ‘single’ ¿qué? ¡sí! …", "$5+3=8 <tag> ^_^ `x` |y| ~z",
    "a" * 99, "b" * 100, "c" * 101 + " tail", "x" * 300 + "é", "[MASK] [CLS] [unused0] ## ##izer",
    "", "   ", "\t\n", "tokenizers' split-words, (the) [token].", "A.B.C. e.g. i.e. U.S.A.",
]


def _hf_ids(spec: TokenizerSpec, texts: list[str]) -> list[list[int]]:
    vocab = {token: i for i, token in enumerate(read_wordpiece_vocab(spec.vocab))}
    return [enc.ids for enc in hf_wordpiece(vocab, spec.lowercase).encode_batch(texts, add_special_tokens=False)]


@pytest.mark.parametrize("lowercase", [True, False])
def test_ids_equal_hf_on_the_sample_corpus_and_adversarial_text(wordpiece_spec, full_corpus, lowercase):
    spec = TokenizerSpec("wordpiece", wordpiece_spec.vocab, lowercase=lowercase)
    texts = full_corpus.train.read_text(encoding="utf-8").splitlines() + ADVERSARIAL
    ours = load_tokenizer(spec).encode_batch(texts)
    assert sum(not t.isascii() for t in texts) > 10 and sum(map(len, ours)) > 100_000
    assert ours == _hf_ids(spec, texts)


@pytest.mark.parametrize("lowercase", [True, False])
def test_every_ascii_character_splits_as_hf_splits_it(wordpiece_spec, lowercase):
    spec = TokenizerSpec("wordpiece", wordpiece_spec.vocab, lowercase=lowercase)
    texts = [f"{prefix}{chr(c)}{suffix}" for c in range(128) for prefix, suffix in [("", ""), ("the", "is"),
                                                                                    ("A ", "B"), ("x", " ")]]
    assert [load_tokenizer(spec).encode(t) for t in texts] == _hf_ids(spec, texts)


def test_full_word_cache_is_cleared_and_ids_do_not_change(wordpiece_spec, small_corpus):
    texts = small_corpus.train.read_text().splitlines()[:300]
    small_cache = WordPieceTokenizer(wordpiece_spec, cache_words=40)
    assert [small_cache.encode(t) for t in texts] == load_tokenizer(wordpiece_spec).encode_batch(texts)
    assert 0 < len(small_cache._cache) <= 40
