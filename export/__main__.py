"""`python -m export --checkpoint PATH --format npz|torch|hf [...] --out DIR`

PATH is a training checkpoint (runs/NAME/checkpoints/ckpt-*.pt) or an earlier export (.npz, .pt or its
directory), so this both exports a run after the fact and converts between formats.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from data_pipeline.errors import UserError, run_cli
from data_pipeline.tokenizer import TokenizerSpec, load_tokenizer
from export.exporter import export_model
from export.formats import FORMATS
from export.loading import read_model, resolve_tokenizer
from pretrain.adapters import adapter_of, is_training_checkpoint, model_of_run, run_tokenizer


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[1])
    parser.add_argument("--checkpoint", required=True, type=Path, help="training checkpoint or export to read")
    parser.add_argument("--format", required=True, nargs="+", choices=FORMATS, dest="formats",
                        help="one or more formats to write")
    parser.add_argument("--out", required=True, type=Path, help="export directory to write")
    parser.add_argument("--vocab", help="tokenizer vocab, if not the one the checkpoint's config names")
    parser.add_argument("--codes", help="fastBPE codes (with --vocab of a BPE tokenizer)")
    parser.add_argument("--cased", action="store_true", help="with --vocab: a cased WordPiece vocab")
    parser.add_argument("--encoder-only", action="store_true",
                        help="export only the Transformer encoder (of a dual encoder, encoder-decoder, ELECTRA...)")
    parser.add_argument("--model-prefix", help="with a training checkpoint: export the Transformer under this "
                                               "prefix of the objective's state dict (implies --encoder-only)")
    return parser.parse_args(argv)


def read_source(path: Path, tokenizer: TokenizerSpec | None, encoder_only: bool,
                prefix: str | None) -> tuple[torch.nn.Module, TokenizerSpec]:
    """The model (whole, or its encoder) and tokenizer in a training checkpoint or an export."""
    if path.is_file() and path.suffix == ".pt":
        try:  # mmap: peeking at a multi-GB checkpoint must not read it all
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            raise UserError(f"{path}: not a readable torch file ({type(err).__name__}); pass a training "
                            "checkpoint or an export") from None
        if is_training_checkpoint(state):
            spec = tokenizer if tokenizer is not None else run_tokenizer(state, path)
            return model_of_run(state, path, load_tokenizer(spec), encoder_only, prefix), spec
    model, manifest, files, path = read_model(path)
    if encoder_only:
        model = adapter_of(model).encoder(model)
    return model, tokenizer if tokenizer is not None else resolve_tokenizer(manifest, files, path.parent)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    tokenizer = None
    if args.vocab:
        tokenizer = TokenizerSpec(kind="bpe" if args.codes else "wordpiece", vocab=args.vocab, codes=args.codes,
                                  lowercase=not args.cased)
    model, spec = read_source(args.checkpoint, tokenizer, args.encoder_only, args.model_prefix)
    for fmt, path in export_model(model, spec, args.out, args.formats).items():
        print(f"{fmt}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
