"""WordPiece over a BERT `vocab.txt`: HF `tokenizers`' BERT pipeline, with a word cache for ASCII text.

An ASCII line is normalised and split here (the BERT rules restricted to ASCII are small: drop control
characters, tab/CR/LF are spaces, lowercase, every punctuation character is a word) and its words go
through a unique-word cache in front of HF's WordPiece model; any other line takes HF's whole pipeline,
so the Unicode tables (accents, CJK, control and punctuation classes) are always HF's own. Either way
the ids equal HF's `encode` (tests compare them on real and adversarial text).

Ids are line numbers of vocab.txt, which must start with `[PAD]` and contain `[UNK]`, `[CLS]`, `[SEP]`
and `[MASK]`. Every bracketed token (`[CLS]`, `[unused7]`, ...) is special: text never produces one (the
pre-tokeniser splits off brackets), so masking must neither pick nor draw them. The special tokens are
deliberately not registered with HF, so a literal "[MASK]" in the corpus stays text.
"""
from __future__ import annotations

import re
import string
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers

from data_pipeline.errors import DataError
from data_pipeline.tokenizer import TokenizerSpec, files_fingerprint, read_vocab_lines, settings_tag, token_flags
from data_pipeline.word_cache import DEFAULT_CACHE_WORDS, WordCache

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
CONTINUATION_PREFIX = "##"
# BertNormalizer on ASCII: control characters are dropped, except tab/LF/CR (and VT/FF are dropped too:
# HF filters controls before it maps whitespace), which become spaces.
_ASCII_CLEAN = {c: None for c in (*range(0x20), 0x7F)} | {ord(c): " " for c in "\t\n\r"}
# BertPreTokenizer on ASCII: split at spaces, and each punctuation character is a word of its own.
_PUNCT = re.escape(string.punctuation)
_ASCII_WORDS = re.compile(rf"[^ {_PUNCT}]+|[{_PUNCT}]")


def hf_wordpiece(vocab: dict[str, int], lowercase: bool) -> HFTokenizer:
    """The HF pipeline BERT uses; vocab learning trains this same pipeline, so both split text alike."""
    hf = hf_wordpiece_model(vocab)
    hf.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    return hf


def hf_wordpiece_model(vocab: dict[str, int]) -> HFTokenizer:
    """HF's WordPiece model alone: each input is one word (longest-match-first, [UNK] over 100 chars)."""
    return HFTokenizer(models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix=CONTINUATION_PREFIX))


def is_reserved(token: str) -> bool:
    """`[CLS]`, `[unused3]`...: tokens the BERT pre-tokeniser can never produce from text."""
    return len(token) > 2 and token.startswith("[") and token.endswith("]")


def read_wordpiece_vocab(path: str) -> list[str]:
    """vocab.txt tokens in id order, checked: one token per line, no duplicates, specials present."""
    tokens = read_vocab_lines(path, "WordPiece vocab")
    if not tokens:
        raise DataError(f"{path}: WordPiece vocab file is empty: learn one with `python -m data_pipeline "
                        f"learn-vocab`")
    first_line: dict[str, int] = {}
    for line_no, token in enumerate(tokens, start=1):
        if not token or token != token.strip() or any(ch.isspace() for ch in token):
            raise DataError(f"{path}:{line_no}: {token!r} is not one token: a BERT vocab.txt has one "
                            f"token per line without spaces (a fastBPE vocab needs --tokenizer bpe)")
        if token in first_line:
            raise DataError(f"{path}:{line_no}: duplicate token {token!r} (first on line "
                            f"{first_line[token]}): remove one of them")
        first_line[token] = line_no
    if tokens[0] != PAD:
        raise DataError(f"{path}:1: first token is {tokens[0]!r}, expected {PAD} (id 0 pads batches): "
                        f"put {PAD} on the first line")
    missing = [t for t in SPECIAL_TOKENS if t not in first_line]
    if missing:
        raise DataError(f"{path}: missing special token(s) {' '.join(missing)}: add them to the vocab")
    return tokens


class WordPieceTokenizer:
    """The Tokenizer protocol for a BERT vocab.txt (cased or lowercased)."""

    kind = "wordpiece"

    def __init__(self, spec: TokenizerSpec, cache_words: int = DEFAULT_CACHE_WORDS) -> None:
        self.spec = spec
        tokens = read_wordpiece_vocab(spec.vocab)
        ids = {token: i for i, token in enumerate(tokens)}
        self._hf = hf_wordpiece(ids, spec.lowercase)
        self._word_model = hf_wordpiece_model(ids)
        self._cache = WordCache(self._segment, cache_words)
        self.vocab_size = len(tokens)
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (ids[t] for t in SPECIAL_TOKENS)
        self._special = token_flags(tokens, is_reserved)
        self.special_ids = frozenset(np.flatnonzero(self._special).tolist())
        self._starts_word = ~token_flags(tokens, lambda t: t.startswith(CONTINUATION_PREFIX)) | self._special
        self.fingerprint = files_fingerprint(spec.vocab, settings=settings_tag(spec.kind, spec.lowercase))

    def __reduce__(self) -> tuple:
        return (WordPieceTokenizer, (self.spec, self._cache.max_words))

    def _segment(self, words: list[str]) -> list[list[int]]:
        """WordPiece ids of each (normalised, pre-tokenised) word, by HF's model."""
        return [enc.ids for enc in _encode_fast(self._word_model, words)]

    def _ascii_words(self, text: str) -> list[str]:
        """BERT normalisation and pre-tokenisation of an ASCII line."""
        text = text.translate(_ASCII_CLEAN)
        return _ASCII_WORDS.findall(text.lower() if self.spec.lowercase else text)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no [CLS]/[SEP] added."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts: ASCII lines through the word cache, the others through HF's pipeline."""
        ids = self._cache.encode([self._ascii_words(text) if text.isascii() else [] for text in texts])
        unicode_rows = [row for row, text in enumerate(texts) if not text.isascii()]
        if unicode_rows:
            encodings = _encode_fast(self._hf, [texts[row] for row in unicode_rows])
            for row, encoding in zip(unicode_rows, encodings):
                ids[row] = encoding.ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Readable text: pieces joined, "##" continuations glued to their word, specials kept."""
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def word_starts(self, ids: np.ndarray) -> np.ndarray:
        """True where a token begins a word: it is not a "##" continuation (specials always begin one)."""
        return self._starts_word[np.asarray(ids)]


def _encode_fast(hf: HFTokenizer, texts: list[str]) -> list:
    """HF encode_batch without special tokens; encode_batch_fast skips the character offsets we never use."""
    encode_batch = getattr(hf, "encode_batch_fast", hf.encode_batch)
    return encode_batch(texts, add_special_tokens=False)
