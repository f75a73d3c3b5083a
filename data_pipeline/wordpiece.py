"""WordPiece over a BERT `vocab.txt`, run by HF `tokenizers` (BERT normaliser and pre-tokeniser).

Ids are line numbers of vocab.txt, which must start with `[PAD]` and contain `[UNK]`, `[CLS]`, `[SEP]`
and `[MASK]`. Every bracketed token (`[CLS]`, `[unused7]`, ...) is special: text never produces one (the
pre-tokeniser splits off brackets), so masking must neither pick nor draw them. The special tokens are
deliberately not registered with HF, so a literal "[MASK]" in the corpus stays text.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers

from data_pipeline.errors import DataError
from data_pipeline.tokenizer import TokenizerSpec, files_fingerprint, read_vocab_lines, settings_tag, token_flags

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
CONTINUATION_PREFIX = "##"


def hf_wordpiece(vocab: dict[str, int], lowercase: bool) -> HFTokenizer:
    """The HF pipeline BERT uses; vocab learning trains this same pipeline, so both split text alike."""
    hf = HFTokenizer(models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix=CONTINUATION_PREFIX))
    hf.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    return hf


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

    def __init__(self, spec: TokenizerSpec) -> None:
        self.spec = spec
        tokens = read_wordpiece_vocab(spec.vocab)
        ids = {token: i for i, token in enumerate(tokens)}
        self._hf = hf_wordpiece(ids, spec.lowercase)
        # encode_batch_fast skips the character offsets we never use.
        self._encode_batch = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)
        self.vocab_size = len(tokens)
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (ids[t] for t in SPECIAL_TOKENS)
        self._special = token_flags(tokens, is_reserved)
        self.special_ids = frozenset(np.flatnonzero(self._special).tolist())
        self._starts_word = ~token_flags(tokens, lambda t: t.startswith(CONTINUATION_PREFIX)) | self._special
        self.fingerprint = files_fingerprint(spec.vocab, settings=settings_tag(spec.kind, spec.lowercase))

    def __reduce__(self) -> tuple:
        return (WordPieceTokenizer, (self.spec,))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no [CLS]/[SEP] added."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts at once (HF runs them on all cores unless parallelism is off)."""
        return [enc.ids for enc in self._encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Readable text: pieces joined, "##" continuations glued to their word, specials kept."""
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def word_starts(self, ids: np.ndarray) -> np.ndarray:
        """True where a token begins a word: it is not a "##" continuation (specials always begin one)."""
        return self._starts_word[np.asarray(ids)]
