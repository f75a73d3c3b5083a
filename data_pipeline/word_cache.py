"""A per-process cache of each distinct word's token ids, in front of a slower segmenter.

Text is Zipfian: after the first batches almost every word is a dict lookup, so a tokenizer pays its
segmenter (fastBPE, HF's WordPiece model) once per new word instead of once per occurrence.
"""
from __future__ import annotations

from itertools import chain
from typing import Callable, Iterable, Sequence

# Cleared when full (Zipf: the frequent words are back within a batch).
DEFAULT_CACHE_WORDS = 1 << 19


class WordCache:
    """Ids of word lists; `segment(words)` is called once per batch with the words not cached yet."""

    def __init__(self, segment: Callable[[list[str]], Iterable[Sequence[int]]],
                 max_words: int = DEFAULT_CACHE_WORDS) -> None:
        self._segment = segment
        self._ids: dict[str, tuple[int, ...]] = {}
        self.max_words = max_words

    def __len__(self) -> int:
        return len(self._ids)

    def encode(self, word_lists: Sequence[list[str]]) -> list[list[int]]:
        """The concatenated ids of each list's words, segmenting (once) the words not seen before."""
        words = set().union(*word_lists)
        missing = words - self._ids.keys()
        if len(self._ids) + len(missing) > self.max_words:
            self._ids.clear()
            missing = words
        if missing:
            missing_list = list(missing)
            self._ids.update(zip(missing_list, map(tuple, self._segment(missing_list))))
        lookup = self._ids.__getitem__
        return [list(chain.from_iterable(map(lookup, words))) for words in word_lists]
