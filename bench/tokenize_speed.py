"""Tokenization throughput: ours beside HF `tokenizers` encode_batch on the same text and machine.

    .venv/bin/python bench/tokenize_speed.py                          # sample corpus train.txt, all cores
    .venv/bin/python bench/tokenize_speed.py --repeat 4 --processes 2 --runs 5

Text: the sample corpus (built under --data-dir if missing), --repeat times. Tokenizers: WordPiece and
BPE learned from it (--vocab-size), and for each:
  hf_batch        HF Tokenizer.encode_batch over all lines (Rust threads on every core). WordPiece: the
                  same BERT pipeline; BPE: an HF BPE model from the same merges, NFC + our pre-tokenisation
                  rule as a regex split, end-of-word suffix </w> (its segmentation equals fastBPE's).
  ours_batch      our Tokenizer.encode_batch in this one process (BPE: word cache + fastBPE; WordPiece:
                  ASCII lines split here, word cache + HF's WordPiece model; other lines HF's pipeline).
  ours_preprocess preprocess(): read the file, tokenize in --processes processes, write shards.
Every run starts from fresh tokenizers (cold caches); MB/s is input UTF-8 MB over the median of --runs
wall times, and ratio is ours / hf_batch from the same run of this script.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import tokenizers
from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers

from data_pipeline import bpe
from data_pipeline.preprocess import default_processes, preprocess
from data_pipeline.sample_corpus import prepare_sample_data
from data_pipeline.tokenizer import TokenizerSpec, load_tokenizer
from data_pipeline.wordpiece import hf_wordpiece, read_wordpiece_vocab


def hf_bpe(spec: TokenizerSpec) -> HFTokenizer:
    """HF's BPE over our fastBPE codes: same merges, same words, same `</w>` convention."""
    merges = bpe.read_bpe_codes(spec.codes)
    symbols = [bpe.token_symbol(token) for token in bpe.read_bpe_vocab(spec.vocab)]
    vocab = {token: i for i, token in enumerate(list(bpe.SPECIAL_TOKENS) + symbols)}
    hf = HFTokenizer(models.BPE(vocab, merges, unk_token="<UNK>", end_of_word_suffix=bpe.END_OF_WORD))
    hf.normalizer = normalizers.NFC()
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), behavior="isolated")])
    hf.decoder = decoders.BPEDecoder(suffix=bpe.END_OF_WORD)
    return hf


def hf_reference(spec: TokenizerSpec) -> HFTokenizer:
    """The HF tokenizer that produces the same ids as ours for `spec`."""
    if spec.kind == "bpe":
        return hf_bpe(spec)
    return hf_wordpiece({t: i for i, t in enumerate(read_wordpiece_vocab(spec.vocab))}, spec.lowercase)


def median_seconds(setup: Callable[[], Callable[[], object]], runs: int) -> float:
    """Median wall time over `runs` tries of the callable `setup()` returns (`setup` itself untimed)."""
    times = []
    for _ in range(runs):
        timed = setup()
        start = time.perf_counter()
        timed()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_kind(spec: TokenizerSpec, text_file: Path, processes: int, runs: int, scratch: Path) -> dict[str, float]:
    """MB/s of hf_batch, ours_batch and ours_preprocess for one tokenizer, plus how often their ids agree."""
    lines = text_file.read_text(encoding="utf-8").splitlines()
    megabytes = text_file.stat().st_size / 1e6
    agree = sum(hf.ids == ours for hf, ours in zip(hf_reference(spec).encode_batch(lines, add_special_tokens=False),
                                                   load_tokenizer(spec).encode_batch(lines)))
    runs_done = iter(range(runs))

    def hf_batch() -> Callable[[], object]:
        hf = hf_reference(spec)
        return lambda: hf.encode_batch(lines, add_special_tokens=False)

    def ours_batch() -> Callable[[], object]:
        ours = load_tokenizer(spec)
        return lambda: ours.encode_batch(lines)

    def ours_preprocess() -> Callable[[], object]:
        out = scratch / f"{spec.kind}-{next(runs_done)}"
        return lambda: preprocess([text_file], out, spec, processes=processes, progress=False)

    result = {setup.__name__: megabytes / median_seconds(setup, runs) for setup in (hf_batch, ours_batch,
                                                                                  ours_preprocess)}
    result["same_ids"] = agree / len(lines)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("runs/bench-tokenize"),
                        help="where the sample corpus and vocabs are built (kept for the next run)")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--repeat", type=int, default=1, help="times the corpus is repeated")
    parser.add_argument("--processes", type=int, default=default_processes(), help="for ours_preprocess")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    print(f"# {time.strftime('%Y-%m-%d')}  {platform.machine()} x {os.cpu_count()} cores  python "
          f"{platform.python_version()}  tokenizers {tokenizers.__version__}")
    print(f"# median of {args.runs} runs, --processes {args.processes}, vocab {args.vocab_size}, "
          f"corpus x {args.repeat}")
    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        for kind in ("wordpiece", "bpe"):
            paths = prepare_sample_data(args.data_dir, kind, args.vocab_size)
            spec = TokenizerSpec(kind, str(paths["vocab"]), str(paths["codes"]) if "codes" in paths else None)
            text_file = Path(tmp) / "text.txt"
            text_file.write_bytes(paths["train_text"].read_bytes() * args.repeat)
            r = bench_kind(spec, text_file, args.processes, args.runs, Path(tmp))
            print(f"{kind:9s} {text_file.stat().st_size / 1e6:6.1f} MB  hf_batch {r['hf_batch']:6.2f} MB/s  "
                  f"ours_batch {r['ours_batch']:6.2f} MB/s ({r['ours_batch'] / r['hf_batch']:.2f}x)  "
                  f"ours_preprocess {r['ours_preprocess']:6.2f} MB/s ({r['ours_preprocess'] / r['hf_batch']:.2f}x)"
                  f"  same ids on {r['same_ids']:.1%} of lines")


if __name__ == "__main__":
    main()
