"""Evaluate an exported dual encoder on held-out context<TAB>response pairs: recall@1 and MRR among N candidates.

    python examples/evaluate_retrieval.py --pretrained runs/tiny_dual_encoder/export/model.pt \\
        --pairs runs/sample/corpus/paired_valid.tsv

The export holds the whole dual encoder (its Transformer, both encoding heads, the learned scale), so
`load_pretrained` gives back the trained model: `encode_context` / `encode_response` are its encodings.
Pairs are cut into groups of `--candidates`; each context must rank its own response first among its
group's responses (a remainder smaller than a group is left out): recall@1 is how often it does, MRR the
mean of 1 / the rank it gives its own response.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from data_pipeline.errors import UserError, run_cli
from data_pipeline.tokenizer import Tokenizer, load_tokenizer
from export import load_pretrained
from pretrain.objectives.dual_encoder import DualEncoder


def read_pairs(path: Path) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"{path}: cannot read the pairs ({err.strerror}); pass a context<TAB>response file") from None
    pairs = [tuple(line.split("\t", 1)) for line in lines if "\t" in line]
    if not pairs:
        raise UserError(f"{path}: no context<TAB>response lines; pass a paired text file")
    return pairs


def padded(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> torch.Tensor:
    """Token ids [N, T] of `texts`, cut to max_len and right-padded, as the paired trainer reads them."""
    rows = [ids[:max_len] for ids in tokenizer.encode_batch(texts)]
    tokens = torch.full((len(rows), max(map(len, rows))), tokenizer.pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens


def ranks(contexts: torch.Tensor, responses: torch.Tensor, candidates: int) -> torch.Tensor:
    """The 1-based rank each context gives its own response among its group's `candidates` responses (groups of
    consecutive pairs, a remainder left out); a tie ranks the earlier response first, as `argmax` does, so
    rank 1 is exactly `recall_at_1`'s hit."""
    groups = contexts.shape[0] // candidates
    shape = (groups, candidates, contexts.shape[-1])
    rows = groups * candidates
    scores = torch.bmm(contexts[:rows].view(shape), responses[:rows].view(shape).transpose(1, 2))
    own = scores.diagonal(dim1=1, dim2=2).unsqueeze(-1)
    earlier = torch.ones(candidates, candidates, dtype=torch.bool).tril(-1)  # [i, j]: j < i
    return (1 + (scores > own).sum(-1) + ((scores == own) & earlier).sum(-1)).flatten()


def evaluate(pretrained: str | Path, pairs_path: str | Path, candidates: int = 100,
             max_len: int = 32) -> dict[str, float]:
    """{"recall@1", "MRR"} of the exported dual encoder on the pairs in `pairs_path`."""
    model, spec = load_pretrained(pretrained)
    if not isinstance(model, DualEncoder):
        raise UserError(f"{pretrained}: holds a {type(model).__name__}, not a dual encoder: export the run "
                        "without --encoder-only")
    pairs = read_pairs(Path(pairs_path))
    if len(pairs) < candidates:
        raise UserError(f"{pairs_path}: {len(pairs)} pairs, fewer than --candidates={candidates}")
    tokenizer = load_tokenizer(spec)
    model.eval()
    with torch.no_grad():
        contexts = model.encode_context(padded(tokenizer, [c for c, _ in pairs], max_len))
        responses = model.encode_response(padded(tokenizer, [r for _, r in pairs], max_len))
    found = ranks(contexts, responses, candidates).double()
    return {"recall@1": (found == 1).double().mean().item(), "MRR": found.reciprocal().mean().item()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", required=True, help="dual-encoder export file (.pt or .npz) or directory")
    parser.add_argument("--pairs", required=True, type=Path, help="held-out context<TAB>response lines")
    parser.add_argument("--candidates", type=int, default=100, help="responses each context is ranked among")
    parser.add_argument("--max-len", type=int, default=32, help="tokens per side (the run's data.nctx)")
    args = parser.parse_args(argv)
    for metric, value in evaluate(args.pretrained, args.pairs, args.candidates, args.max_len).items():
        print(f"{metric} among {args.candidates}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
