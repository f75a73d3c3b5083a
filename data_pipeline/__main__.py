"""`python -m data_pipeline` (or `pretrain-data`): sample corpus, vocab learning, preprocessing, inspection."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from data_pipeline.errors import DataError, run_cli
from data_pipeline.preprocess import DEFAULT_SHARD_TOKENS, preprocess
from data_pipeline.sample_corpus import DEFAULT_VOCAB_SIZE, build_sample_corpus, prepare_sample_data
from data_pipeline.shards import Shard, find_shards
from data_pipeline.text_files import ENCODING_ERRORS
from data_pipeline.tokenizer import TOKENIZER_KINDS, Tokenizer, TokenizerSpec, load_tokenizer
from data_pipeline.vocab_learning import learn_vocab

PROG = "python -m data_pipeline"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _command(commands: argparse._SubParsersAction, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=summary, description=summary, epilog=f"example:\n  {example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="text files (.gz too), directories (read recursively) or quoted globs")
    parser.add_argument("--encoding-errors", choices=ENCODING_ERRORS, default="strict",
                        help="invalid UTF-8: stop with file:line (strict, default) or replace the bytes with "
                             "U+FFFD and count the line (replace)")


def _add_tokenizer_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--tokenizer", choices=TOKENIZER_KINDS, required=required,
                        help="tokenizer kind" + ("" if required else " (default: the shards' kind)"))
    parser.add_argument("--vocab", required=required, help="vocab.txt (wordpiece) or fastBPE vocab file (bpe)")
    parser.add_argument("--codes", help="fastBPE codes file (bpe only)")
    parser.add_argument("--cased", action="store_true", help="wordpiece: keep case (default: lowercase)")


def _spec(args: argparse.Namespace) -> TokenizerSpec:
    return TokenizerSpec(args.tokenizer, args.vocab, args.codes, lowercase=not args.cased)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Text -> tokenizer -> token shards for pretraining. Run a command with --help for "
                    "its options and an example.",
        epilog=f"quick start (sample corpus, vocab and shards in one go):\n  {PROG} prepare-sample runs/sample")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cmd = _command(commands, "sample-corpus",
                   "Write a real-text sample corpus (train.txt, valid.txt, paired_train.tsv, paired_valid.tsv) "
                   "from the docstrings and comments of Python's standard library.",
                   f"{PROG} sample-corpus runs/sample/corpus")
    cmd.add_argument("out_dir", type=Path, metavar="OUT_DIR")

    cmd = _command(commands, "learn-vocab",
                   "Learn a WordPiece vocab.txt or fastBPE codes + vocab of a given size from text "
                   "(one document per line).",
                   f"{PROG} learn-vocab corpus/train.txt --tokenizer bpe --vocab-size 16000 --out vocab/bpe")
    _add_input_options(cmd)
    cmd.add_argument("--tokenizer", choices=TOKENIZER_KINDS, default="wordpiece", help="what to learn")
    cmd.add_argument("--vocab-size", type=_positive_int, required=True,
                     help="ids in the resulting tokenizer, special tokens included")
    cmd.add_argument("--out", type=Path, required=True,
                     help="directory for vocab.txt (wordpiece) or codes + vocab (bpe)")
    cmd.add_argument("--cased", action="store_true", help="wordpiece: keep case (default: lowercase)")

    cmd = _command(commands, "preprocess",
                   "Tokenize text into a directory of shards: one document per line (LM) or left<TAB>right "
                   "lines (--paired). Output is byte-identical for any --processes.",
                   f"{PROG} preprocess 'corpus/*.txt.gz' --out shards/train --tokenizer wordpiece "
                   f"--vocab vocab/vocab.txt")
    _add_input_options(cmd)
    cmd.add_argument("--out", required=True,
                     help="new (or empty) directory, or object-store URI (s3://bucket/prefix), for the shards")
    _add_tokenizer_options(cmd, required=True)
    cmd.add_argument("--paired", action="store_true", help="lines are left<TAB>right pairs")
    cmd.add_argument("--processes", type=_positive_int, help="tokenizing processes (default: all CPUs)")
    cmd.add_argument("--shard-tokens", type=_positive_int, default=DEFAULT_SHARD_TOKENS,
                     help=f"start a new shard past this many tokens (default {DEFAULT_SHARD_TOKENS})")

    cmd = _command(commands, "inspect",
                   "Print a shard set's header, counts, most frequent tokens and a sample document "
                   "(decoded when the tokenizer is given).",
                   f"{PROG} inspect shards/train --tokenizer wordpiece --vocab vocab/vocab.txt")
    cmd.add_argument("shards", metavar="SHARDS", help="shard directory, glob or prefix")
    _add_tokenizer_options(cmd, required=False)
    cmd.add_argument("--top", type=_positive_int, default=10, help="most frequent tokens to list")
    cmd.add_argument("--samples", type=_positive_int, default=1, help="documents to show")
    cmd.add_argument("--verify", action="store_true",
                     help="read every byte: check each shard's content digest and that every id is in range")

    cmd = _command(commands, "prepare-sample",
                   "Sample corpus -> vocab -> LM and paired train/valid shards in OUT_DIR; steps whose "
                   "outputs exist are skipped, so re-running is cheap.",
                   f"{PROG} prepare-sample runs/sample --tokenizer bpe --vocab-size 8000")
    cmd.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    cmd.add_argument("--tokenizer", choices=TOKENIZER_KINDS, default="wordpiece", help="tokenizer kind")
    cmd.add_argument("--vocab-size", type=_positive_int, default=DEFAULT_VOCAB_SIZE,
                     help=f"tokenizer size, specials included (default {DEFAULT_VOCAB_SIZE})")
    cmd.add_argument("--processes", type=_positive_int, help="tokenizing processes (default: all CPUs)")
    return parser


def _token_name(tokenizer: Tokenizer | None, token_id: int) -> str:
    return repr(tokenizer.decode([token_id])) if tokenizer else ""


def inspect_shards(path: str, tokenizer: Tokenizer | None, top: int, samples: int, verify: bool = False) -> None:
    """Print what a shard set holds; with a tokenizer (checked against the shards), decode it too; with
    `verify`, first check every shard's content (DataError on the first corrupt one)."""
    shards = [Shard.open(prefix) for prefix in find_shards(path)]
    if verify:
        for shard in shards:
            shard.verify()
        print(f"verified {len(shards)} shard(s): content digests match, every token id < vocab_size")
    header = shards[0].header
    if tokenizer is not None and tokenizer.fingerprint != header.vocab_fingerprint:
        raise DataError(f"{path}: shards were made with tokenizer {header.vocab_fingerprint}, the given "
                        f"vocab is {tokenizer.fingerprint}: pass the vocab used by preprocess")
    print(f"{len(shards)} shard(s) in {path}; first header:")
    print(header.to_json(), end="")
    stats: dict[str, int] = {}
    for shard in shards:
        print(f"  {shard.prefix.name}: {shard.header.num_docs} docs, tokens {shard.header.num_tokens}")
        for key, value in shard.header.stats.items():
            stats[key] = stats.get(key, 0) + value
    streams = header.streams
    tokens = {stream: sum(s.header.num_tokens[stream] for s in shards) for stream in streams}
    print(f"total: {sum(s.header.num_docs for s in shards)} docs, tokens {tokens}")
    print(f"stats (all shards): {stats}")
    counts = sum(np.bincount(s.tokens(st), minlength=header.vocab_size) for s in shards for st in streams)
    if len(counts) > header.vocab_size:
        raise DataError(f"{path}: token id {len(counts) - 1} is >= vocab_size {header.vocab_size}: a shard is "
                        "corrupt; find it with --verify and re-run preprocess")
    total = max(int(counts.sum()), 1)
    print(f"top {top} tokens:")
    for token_id in np.argsort(-counts, kind="stable")[:top].tolist():
        print(f"  {token_id:>7} {counts[token_id]:>12} {100 * counts[token_id] / total:6.2f}%  "
              f"{_token_name(tokenizer, token_id)}")
    first = shards[0]
    for doc in range(min(samples, header.num_docs)):
        for stream in streams:
            offsets = first.offsets(stream)
            ids = first.tokens(stream)[offsets[doc]:offsets[doc + 1]].tolist()
            shown = tokenizer.decode(ids) if tokenizer else " ".join(map(str, ids))
            print(f"doc {doc} {stream}: {shown}")


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if args.command == "sample-corpus":
        corpus = build_sample_corpus(args.out_dir)
        print(f"wrote {corpus.train}, {corpus.valid}, {corpus.paired_train}, {corpus.paired_valid}")
    elif args.command == "learn-vocab":
        spec = learn_vocab(args.tokenizer, args.inputs, args.out, args.vocab_size, lowercase=not args.cased,
                           errors=args.encoding_errors)
        print(f"wrote {' and '.join(p for p in (spec.codes, spec.vocab) if p)}")
    elif args.command == "preprocess":
        result = preprocess(args.inputs, args.out, _spec(args), paired=args.paired, processes=args.processes,
                            max_shard_tokens=args.shard_tokens, errors=args.encoding_errors)
        print(f"wrote {len(result.shards)} shard(s) to {result.out_dir}: {result.totals}")
    elif args.command == "inspect":
        if args.vocab and not args.tokenizer:  # the shards know which kind made them
            args.tokenizer = Shard.open(find_shards(args.shards)[0]).header.tokenizer_kind
        tokenizer = load_tokenizer(_spec(args)) if args.vocab else None
        inspect_shards(args.shards, tokenizer, args.top, args.samples, args.verify)
    elif args.command == "prepare-sample":
        paths = prepare_sample_data(args.out_dir, args.tokenizer, args.vocab_size, args.processes)
        for name, path in paths.items():
            print(f"{name}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: a UserError becomes one `error: ...` line and exit code 2."""
    return run_cli(lambda: _run(argv))


if __name__ == "__main__":
    sys.exit(main())
