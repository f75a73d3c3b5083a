"""How well can replaced tokens be told apart on the sample corpus from local statistics alone? A yardstick for the
ELECTRA discriminator's AUC (bench/electra_reference.py).

    PYTHONPATH=$PWD .venv/bin/python bench/electra_ceiling.py [--data-dir runs/sample] [--vocab-size 8000]

Once the generator has learnt the unigram distribution (in ~100 steps of the tiny preset), a replacement is a
frequent token in the wrong place, and only context gives it away. This counts the training shards' bigrams
once (add-k smoothed towards the unigram) and scores each validation position, 15% of them replaced by a
unigram sample, by how much less likely its two bigrams are than chance: the ROC AUC of that score is what
a detector that had learnt the corpus's bigrams would reach against a unigram generator.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from hf_parity import blocks

from data_pipeline.sample_corpus import prepare_sample_data
from pretrain.objectives.electra import roc_auc

REPO = Path(__file__).resolve().parents[1]
SPECIAL_IDS = 5  # [PAD] [UNK] [CLS] [SEP] [MASK] lead the WordPiece vocab


def log_bigram(counts: dict[int, float], token_counts: np.ndarray, unigram: np.ndarray, left: np.ndarray,
               right: np.ndarray, smoothing: float) -> np.ndarray:
    """log P(right | left), the bigram counts add-k smoothed towards the unigram."""
    vocab = len(unigram)
    pair_counts = np.array([counts.get(pair, 0.0) for pair in (left * vocab + right).tolist()])
    return np.log((pair_counts + smoothing * vocab * unigram[right] + 1e-12) /
                  (token_counts[left] + smoothing * vocab))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO / "runs/sample")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--mask-rate", type=float, default=0.15)
    parser.add_argument("--smoothing", type=float, default=0.1)
    args = parser.parse_args()
    paths = prepare_sample_data(args.data_dir, vocab_size=args.vocab_size)
    train = blocks(paths["train"], 128).flatten().numpy()
    valid = blocks(paths["valid"], 128).flatten().numpy()
    vocab = args.vocab_size
    token_counts = np.bincount(train, minlength=vocab).astype(np.float64)
    unigram = token_counts.copy()
    unigram[:SPECIAL_IDS] = 0
    unigram /= unigram.sum()
    pairs, pair_counts = np.unique(train[:-1].astype(np.int64) * vocab + train[1:], return_counts=True)
    counts = dict(zip(pairs.tolist(), pair_counts.astype(np.float64).tolist()))

    rng = np.random.default_rng(0)
    chosen = rng.random(valid.size) < args.mask_rate
    chosen[[0, -1]] = False
    corrupted = valid.copy()
    corrupted[chosen] = rng.choice(vocab, size=int(chosen.sum()), p=unigram)
    inner = np.arange(1, valid.size - 1)
    before, token, after = corrupted[inner - 1], corrupted[inner], corrupted[inner + 1]
    surprise = (np.log(unigram[token] + 1e-12) + np.log(unigram[after] + 1e-12)
                - log_bigram(counts, token_counts, unigram, before, token, args.smoothing)
                - log_bigram(counts, token_counts, unigram, token, after, args.smoothing))
    replaced = corrupted[inner] != valid[inner]
    auc = roc_auc(torch.from_numpy(surprise), torch.from_numpy(replaced))[0].item()
    print(f"{len(train):,} training tokens, {len(inner):,} validation positions, {replaced.mean():.1%} replaced by "
          f"unigram samples: bigram-count detector AUC {auc:.3f}")


if __name__ == "__main__":
    main()
