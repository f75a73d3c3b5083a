"""Learn a WordPiece vocab.txt or fastBPE codes + vocab of a given size from text.

Words are counted first, with exactly the pre-tokenisation the tokenizer applies later (BERT's
normaliser + pre-tokeniser for WordPiece, `bpe.pretokenize` for BPE); HF `tokenizers` trainers (fast,
multi-threaded) then learn the merges from those counts. `vocab_size` is the size of the resulting
tokenizer, special tokens included.

Determinism: HF's trainers number the affixed characters ("##e", "e</w>") in hash-map order and break
ties between equally frequent pairs by those numbers, so the same text can give different vocabs
(huggingface/tokenizers#1794). We register every affixed character of the corpus, sorted, as a special
token up front, which fixes all numbers: the same text always gives the same bytes.

BPE output is in fastBPE's format and means the same to fastBPE as to us. codes: `left right count` in
merge order, `</w>` ending a word's last symbol; count is how often the merge applies when the codes are
applied to the training words. vocab: `token count`, a non-final piece marked `@@` (fastBPE's
`getvocab` of the segmented corpus), sorted by count then token. Unlike `getvocab`, every symbol the codes
can produce is listed (count 0 if training text never ends with it), so fastBPE's vocab restriction never
splits a learned piece back into characters.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

from data_pipeline import bpe, wordpiece
from data_pipeline.errors import UserError, describe_os_error
from data_pipeline.text_files import LineCounts, iter_lines
from data_pipeline.tokenizer import TOKENIZER_KINDS, TokenizerSpec
from data_pipeline.atomic_files import atomic_directory, atomic_write_bytes

log = logging.getLogger(__name__)
_REPEATS_PER_STRING = 4096  # how a word's count is fed to HF: bounded strings of the word repeated


def _check_size(kind: str, learned: int, requested: int) -> None:
    if learned > requested:
        raise UserError(f"vocab_size={requested} is too small for this corpus: its characters alone need "
                        f"{learned} {kind} tokens: use a larger --vocab-size")
    if learned < requested:
        log.warning("the corpus supports only %d %s tokens (asked for %d): learned a smaller vocab",
                    learned, kind, requested)


def count_words(lines: Iterable[str], split: Callable[[str], list[str]]) -> Counter:
    """How often each word occurs, words being what `split` (the tokenizer's pre-tokeniser) makes."""
    counts: Counter = Counter()
    for line in lines:
        counts.update(split(line))
    return counts


def _repeated_words(word_counts: Counter) -> Iterator[str]:
    for word, count in word_counts.items():
        for start in range(0, count, _REPEATS_PER_STRING):
            yield " ".join([word] * min(_REPEATS_PER_STRING, count - start))


def _train(model: models.Model, trainer: trainers.Trainer, word_counts: Counter) -> HFTokenizer:
    """Run an HF trainer on counted words (fed whitespace-separated: words contain no whitespace)."""
    hf = HFTokenizer(model)
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.train_from_iterator(_repeated_words(word_counts), trainer)
    return hf


def _wordpiece_words(lowercase: bool) -> Callable[[str], list[str]]:
    hf = wordpiece.hf_wordpiece({}, lowercase)
    normalizer, pre_tokenizer = hf.normalizer, hf.pre_tokenizer
    return lambda line: [word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line))]


def learn_wordpiece(lines: Iterable[str], vocab_path: Path, vocab_size: int, lowercase: bool = True) -> Path:
    """Write a BERT vocab.txt of `vocab_size` tokens: specials, characters, then learned pieces."""
    word_counts = count_words(lines, _wordpiece_words(lowercase))
    prefix = wordpiece.CONTINUATION_PREFIX
    continued = sorted({prefix + ch for word in word_counts for ch in word[1:]})
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, continuing_subword_prefix=prefix,
                                        special_tokens=list(wordpiece.SPECIAL_TOKENS) + continued,
                                        show_progress=False)
    learned = _train(models.WordPiece(unk_token=wordpiece.UNK), trainer, word_counts).get_vocab()
    _check_size("wordpiece", len(learned), vocab_size)
    tokens = sorted(learned, key=learned.__getitem__)
    atomic_write_bytes(Path(vocab_path), "".join(f"{token}\n" for token in tokens).encode())
    return Path(vocab_path)


def _hf_merges(hf: HFTokenizer) -> list[tuple[str, str]]:
    raw = json.loads(hf.to_str())["model"]["merges"]  # ["a", "b"] pairs, or "a b" before tokenizers 0.20
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in raw]


def _segment(words: Sequence[str], codes: list[tuple[str, str]], directory: Path) -> list[list[str]]:
    """fastBPE's own segmentation of `words` under `codes` (no vocab restriction)."""
    codes_file = directory / "codes"
    codes_file.write_text("".join(f"{a} {b} 0\n" for a, b in codes), encoding="utf-8")
    return [pieces.split(" ") for pieces in bpe.fastbpe_applier(str(codes_file)).apply(list(words))]


def _merge_counts(codes: list[tuple[str, str]], final: Counter) -> list[int]:
    """How often each merge applies, from how often each symbol survives (`final`).

    A symbol is made only by its merge, and each copy either survives or is eaten by exactly one later
    merge, so made(s) = final(s) + sum of the counts of later merges that use s: one backward pass.
    """
    eaten: Counter = Counter()
    counts = [0] * len(codes)
    for rank in reversed(range(len(codes))):
        left, right = codes[rank]
        counts[rank] = final[left + right] + eaten[left + right]
        eaten[left] += counts[rank]
        eaten[right] += counts[rank]
    return counts


def learn_bpe(lines: Iterable[str], codes_path: Path, vocab_path: Path, vocab_size: int) -> tuple[Path, Path]:
    """Write fastBPE codes + vocab for a tokenizer of `vocab_size` ids (6 specials + the vocab file)."""
    word_counts = count_words(lines, bpe.pretokenize)
    word_ends = sorted({word[-1] + bpe.END_OF_WORD for word in word_counts})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(bpe.SPECIAL_TOKENS), special_tokens=word_ends,
                                  end_of_word_suffix=bpe.END_OF_WORD, show_progress=False)
    hf = _train(models.BPE(end_of_word_suffix=bpe.END_OF_WORD), trainer, word_counts)
    characters = sorted(t for t in hf.get_vocab() if len(t.removesuffix(bpe.END_OF_WORD)) == 1)
    # fastBPE allows one merge per result symbol; HF may reach a symbol twice. Keep the first.
    codes: list[tuple[str, str]] = []
    symbols = list(characters)
    made = set(characters)
    for left, right in _hf_merges(hf):
        if left + right not in made:
            made.add(left + right)
            codes.append((left, right))
            symbols.append(left + right)
    _check_size("bpe", len(symbols) + len(bpe.SPECIAL_TOKENS), vocab_size)

    words = list(word_counts)
    with tempfile.TemporaryDirectory() as scratch:
        segmented = _segment(words, codes, Path(scratch))
    final: Counter = Counter()
    for word, pieces in zip(words, segmented):
        for piece in pieces:
            final[bpe.token_symbol(piece)] += word_counts[word]

    merge_counts = _merge_counts(codes, final)
    atomic_write_bytes(Path(codes_path), "".join(
        f"{left} {right} {count}\n" for (left, right), count in zip(codes, merge_counts)).encode())
    vocab = sorted(((bpe.symbol_token(s), final[s]) for s in symbols), key=lambda tc: (-tc[1], tc[0]))
    atomic_write_bytes(Path(vocab_path), "".join(f"{token} {count}\n" for token, count in vocab).encode())
    return Path(codes_path), Path(vocab_path)


def vocab_files(kind: str, out_dir: str | Path, lowercase: bool = True) -> TokenizerSpec:
    """Where `learn_vocab` puts a tokenizer of `kind` in `out_dir` (vocab.txt, or codes + vocab)."""
    out_dir = Path(out_dir)
    if kind == "wordpiece":
        return TokenizerSpec("wordpiece", str(out_dir / "vocab.txt"), lowercase=lowercase)
    if kind == "bpe":
        return TokenizerSpec("bpe", str(out_dir / "vocab"), codes=str(out_dir / "codes"))
    raise UserError(f"unknown tokenizer kind {kind!r}: use one of {', '.join(TOKENIZER_KINDS)}")


def learn_vocab(kind: str, inputs: Sequence[str | Path], out_dir: str | Path, vocab_size: int,
                lowercase: bool = True, errors: str = "strict") -> TokenizerSpec:
    """Learn a `kind` vocab of `vocab_size` from text files into `out_dir`; returns its spec. The files
    (codes and vocab for BPE) appear together or not at all."""
    spec = vocab_files(kind, out_dir, lowercase)
    if vocab_size <= len(bpe.SPECIAL_TOKENS):
        raise UserError(f"vocab_size={vocab_size} is too small: use at least a few hundred (BERT uses 30522)")
    counts = LineCounts()
    lines = (line.text for line in iter_lines(inputs, counts, errors))
    try:
        with atomic_directory(Path(out_dir)) as staging:
            staged = vocab_files(kind, staging, lowercase)
            if kind == "wordpiece":
                learn_wordpiece(lines, Path(staged.vocab), vocab_size, lowercase)
            else:
                learn_bpe(lines, Path(staged.codes), Path(staged.vocab), vocab_size)
    except OSError as err:
        raise UserError(describe_os_error(err, "use", err.filename or out_dir)) from None
    log.info("learned a %s vocab in %s from %s", kind, out_dir, counts.as_dict())
    return spec
