"""BPE from fastBPE `codes` + `vocab` files, applied by the `fastBPE` package behind a word cache.

Pre-tokenisation (the same when learning and applying, see `pretokenize`): NFC-normalise, then a word is
a run of letters, digits and underscores, and every other non-space character is a word of its own, so
"f(x)," is `f ( x ) ,`. Case is kept. One-character punctuation words also keep fastBPE's "@@"
continuation marker unambiguous: only multi-character words are ever split, and they contain no "@".

Ids follow mead-baseline: `<PAD>`=0, `<GO>`=1, `<EOS>`=2 (the separator), `<UNK>`=3, `[CLS]`=4,
`[MASK]`=5, then the vocab file's tokens in file order. fastBPE treats a malformed codes or vocab line as
undefined behaviour (an `assert` compiled out), so both files are checked here first.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import unicodedata
from typing import Any, Iterator, Sequence

import numpy as np

from data_pipeline.errors import DataError, UserError
from data_pipeline.tokenizer import TokenizerSpec, files_fingerprint, read_vocab_lines, token_flags
from data_pipeline.word_cache import DEFAULT_CACHE_WORDS, WordCache

SPECIAL_TOKENS = ("<PAD>", "<GO>", "<EOS>", "<UNK>", "[CLS]", "[MASK]")
CONTINUATION = "@@"  # fastBPE's mark on every piece but a word's last
END_OF_WORD = "</w>"  # fastBPE's mark on a word's last symbol inside codes
_WORDS = re.compile(r"\w+|[^\w\s]")


def pretokenize(text: str) -> list[str]:
    """The words BPE segments: word-character runs and single other characters (see module doc)."""
    return _WORDS.findall(unicodedata.normalize("NFC", text))


def symbol_token(symbol: str) -> str:
    """A BPE symbol as fastBPE's output and vocab write it: `x</w>` (a word's end) is `x`, else `x@@`."""
    if symbol.endswith(END_OF_WORD):
        return symbol.removesuffix(END_OF_WORD)
    return symbol + CONTINUATION


def token_symbol(token: str) -> str:
    """The inverse of `symbol_token`: the symbol a vocab token stands for in the codes."""
    if token.endswith(CONTINUATION):
        return token.removesuffix(CONTINUATION)
    return token + END_OF_WORD


def _fields(line: str) -> list[str]:
    # fastBPE splits on single spaces and ignores empty fields; so do we.
    return [field for field in line.split(" ") if field]


def _count(path: str, line_no: int, field: str) -> int:
    if not (field.isascii() and field.isdigit()):
        raise DataError(f"{path}:{line_no}: count {field!r} is not a non-negative integer: each line must "
                        f"end with a count")
    return int(field)


def read_bpe_codes(path: str) -> list[tuple[str, str]]:
    """Merges in priority order from a fastBPE codes file (`left right count` per line), checked."""
    merges: list[tuple[str, str]] = []
    seen_pair: dict[tuple[str, str], int] = {}
    seen_merged: dict[str, int] = {}
    for line_no, line in enumerate(read_vocab_lines(path, "BPE codes"), start=1):
        fields = _fields(line)
        if len(fields) != 3:
            raise DataError(f"{path}:{line_no}: expected `left right count`, got {line!r}: is this the "
                            f"codes file (not the vocab)?")
        left, right, count = fields
        _count(path, line_no, count)
        if END_OF_WORD in left or END_OF_WORD in right.removesuffix(END_OF_WORD):
            raise DataError(f"{path}:{line_no}: {END_OF_WORD} may only end the right symbol, got {line!r}")
        pair, merged = (left, right), left + right
        if pair in seen_pair or merged in seen_merged:
            first = seen_pair.get(pair) or seen_merged[merged]
            raise DataError(f"{path}:{line_no}: merge {left} + {right} repeats line {first} (pair or result "
                            f"already defined): remove the later line")
        seen_pair[pair] = seen_merged[merged] = line_no
        merges.append(pair)
    return merges


def read_bpe_vocab(path: str) -> list[str]:
    """Tokens in file order from a fastBPE vocab file (`token count` per line), checked."""
    lines = read_vocab_lines(path, "BPE vocab")
    if not lines:
        raise DataError(f"{path}: BPE vocab file is empty: learn one with `python -m data_pipeline learn-vocab`")
    tokens: list[str] = []
    first_line: dict[str, int] = {}
    for line_no, line in enumerate(lines, start=1):
        fields = _fields(line)
        if len(fields) != 2:
            raise DataError(f"{path}:{line_no}: expected `token count`, got {line!r}: is this the vocab file "
                            f"(not the codes)?")
        token, count = fields
        _count(path, line_no, count)
        if token in first_line:
            raise DataError(f"{path}:{line_no}: duplicate token {token!r} (first on line {first_line[token]}): "
                            f"remove one of them")
        if token in SPECIAL_TOKENS:
            raise DataError(f"{path}:{line_no}: {token!r} is a reserved special token (ids 0-5 are "
                            f"{' '.join(SPECIAL_TOKENS)}): remove it from the vocab")
        first_line[token] = line_no
        tokens.append(token)
    return tokens


def check_codes_fit_vocab(codes_path: str, merges: Sequence[tuple[str, str]], vocab_path: str,
                          vocab: Sequence[str]) -> None:
    """Every multi-character vocab token is the result of some merge in the codes: true of any codes and
    vocab learned together, false for codes from another model (which would silently split words into
    more, different pieces). DataError naming both files and the first token the codes cannot make."""
    results = {left + right for left, right in merges}
    orphans = [token for token in vocab
               if len(token_symbol(token).removesuffix(END_OF_WORD)) > 1 and token_symbol(token) not in results]
    if orphans:
        raise DataError(f"{codes_path} does not belong to {vocab_path}: {len(orphans)} of {len(vocab)} vocab tokens "
                        f"(e.g. {orphans[0]!r}) are made by no merge in the codes; use the codes learned with "
                        "this vocab")


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """fastBPE prints its progress from C++; we have already validated and counted the files ourselves."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def fastbpe_applier(codes: str, vocab: str = "") -> Any:
    """fastBPE's applier over files already checked; with a vocab, pieces outside it are split back."""
    try:
        import fastBPE
    except ImportError:
        raise UserError("BPE needs the fastBPE package: run `make setup` (or pip install --no-build-isolation "
                        "fastBPE==0.1.0 after installing cython)") from None
    with _stderr_silenced():
        return fastBPE.fastBPE(str(codes), str(vocab))


class BPETokenizer:
    """The Tokenizer protocol for fastBPE codes + vocab, with a unique-word cache in front of fastBPE.

    fastBPE has no cache and holds the GIL while it works, so each distinct word is segmented once (per
    process) and every later occurrence is a dict lookup.
    """

    kind = "bpe"

    def __init__(self, spec: TokenizerSpec, cache_words: int = DEFAULT_CACHE_WORDS) -> None:
        if not spec.codes:
            raise DataError("a BPE tokenizer needs both a codes and a vocab file: pass --codes (or set codes)")
        self.spec = spec
        vocab = read_bpe_vocab(spec.vocab)
        check_codes_fit_vocab(spec.codes, read_bpe_codes(spec.codes), spec.vocab, vocab)
        self._tokens = list(SPECIAL_TOKENS) + vocab
        self._ids = {token: i for i, token in enumerate(self._tokens)}
        self._bpe = fastbpe_applier(spec.codes, spec.vocab)
        self._cache = WordCache(self._segment, cache_words)
        self.vocab_size = len(self._tokens)
        self.pad_id, self.sep_id, self.unk_id, self.cls_id, self.mask_id = (
            self._ids[t] for t in ("<PAD>", "<EOS>", "<UNK>", "[CLS]", "[MASK]"))
        self.special_ids = frozenset(range(len(SPECIAL_TOKENS)))
        self._special = np.zeros(self.vocab_size, dtype=bool)
        self._special[: len(SPECIAL_TOKENS)] = True
        self._continues = token_flags(self._tokens, lambda t: t.endswith(CONTINUATION)) & ~self._special
        self.fingerprint = files_fingerprint(spec.vocab, spec.codes)

    def __reduce__(self) -> tuple:
        return (BPETokenizer, (self.spec, self._cache.max_words))

    def _segment(self, words: list[str]) -> list[tuple[int, ...]]:
        """Ids of each word's fastBPE pieces (pieces outside the vocab are <UNK>)."""
        ids, unk = self._ids, self.unk_id
        return [tuple(ids.get(piece, unk) for piece in pieces.split(" ")) for pieces in self._bpe.apply(words)]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added; characters never seen in training are <UNK>."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts: one fastBPE call for all their new words, then cache lookups."""
        return self._cache.encode([pretokenize(text) for text in texts])

    def decode(self, ids: Sequence[int]) -> str:
        """The pre-tokenised text: words separated by single spaces, pieces glued back together.

        A final piece that continues (a cut-off word) keeps its "@@"; so one id decodes to its token.
        """
        return " ".join(self._tokens[int(i)] for i in ids).replace(CONTINUATION + " ", "")

    def word_starts(self, ids: np.ndarray) -> np.ndarray:
        """True where a token begins a word: the token before it (same last axis) does not end in "@@"."""
        ids = np.asarray(ids)
        starts = np.ones(ids.shape, dtype=bool)
        starts[..., 1:] = ~self._continues[ids[..., :-1]]
        return starts | self._special[ids]
