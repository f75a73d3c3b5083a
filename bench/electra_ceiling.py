"""How well can replaced tokens be told apart on the sample corpus from local statistics, and how far does the
tiny discriminator get on that same task alone? A yardstick for bench/electra_reference.py.

    PYTHONPATH=$PWD .venv/bin/python bench/electra_ceiling.py                      # counts only, ~10 s
    PYTHONPATH=$PWD .venv/bin/python bench/electra_ceiling.py --train-steps 600    # + the discriminator alone

Once the generator has learnt the unigram distribution (in ~100 steps of the tiny preset), a replacement is a
frequent token in the wrong place, and only context gives it away. The counting detector counts the training
shards' bigrams once (add-k smoothed towards the unigram) and scores each validation position, 15% of them
replaced by unigram samples, by how much less likely its two bigrams are than chance. `--train-steps` then
trains the preset's discriminator (the config's `model` section, its head, optimizer and batch shape) on the
same task with no generator: fresh unigram noise on each batch of training blocks, binary cross-entropy at
every position, AUC on the same corrupted validation blocks, and the spread of the encoder's output over
tokens (std per feature, averaged): near 0 when it has collapsed to one constant vector.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from electra_reference import load_recipe, recipe_parser
from torch import nn

from pretrain.discrim import DiscrimConfig
from pretrain.model import TransformerLM
from pretrain.objectives.electra import DiscriminatorHead, roc_auc
from pretrain.optim import build_optimizer, build_scheduler


def parse_args() -> argparse.Namespace:
    parser = recipe_parser(__doc__)
    parser.add_argument("--smoothing", type=float, default=0.1)
    parser.add_argument("--train-steps", type=int, default=0, help="train the discriminator alone this long")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--zero-logit-bias", action="store_true",
                        help="start the head's logit bias at 0 instead of the replaced prior (to see the collapse)")
    return parser.parse_args()


def unigram_noise(tokens: torch.Tensor, unigram: torch.Tensor, rate: float,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens with `rate` of them replaced by unigram samples, which ones now differ)."""
    chosen = torch.rand(tokens.shape, generator=generator) < rate
    samples = torch.multinomial(unigram, tokens.numel(), replacement=True, generator=generator).view_as(tokens)
    corrupted = torch.where(chosen, samples, tokens)
    return corrupted, corrupted != tokens


def bigram_count_auc(train: np.ndarray, corrupted: np.ndarray, replaced: np.ndarray, unigram: np.ndarray,
                     smoothing: float) -> float:
    """AUC of log P_unigram - log P_bigram over each position's two bigrams (the first and last left out)."""
    vocab = len(unigram)
    token_counts = np.bincount(train, minlength=vocab).astype(np.float64)
    pairs, pair_counts = np.unique(train[:-1].astype(np.int64) * vocab + train[1:], return_counts=True)

    def log_bigram(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        where = np.searchsorted(pairs, left.astype(np.int64) * vocab + right).clip(max=len(pairs) - 1)
        counts = np.where(pairs[where] == left.astype(np.int64) * vocab + right, pair_counts[where], 0)
        return np.log((counts + smoothing * vocab * unigram[right] + 1e-12) / (token_counts[left] + smoothing * vocab))

    before, token, after = corrupted[:-2], corrupted[1:-1], corrupted[2:]
    surprise = (np.log(unigram[token] + 1e-12) + np.log(unigram[after] + 1e-12)
                - log_bigram(before, token) - log_bigram(token, after))
    return roc_auc(torch.from_numpy(surprise), torch.from_numpy(replaced[1:-1]))[0].item()


def train_discriminator(cfg: DiscrimConfig, vocab_size: int, train: torch.Tensor,
                        valid: tuple[torch.Tensor, torch.Tensor], unigram: torch.Tensor, steps: int,
                        eval_every: int, zero_logit_bias: bool) -> None:
    """The preset's discriminator and head trained on unigram noise alone; prints validation loss and AUC."""
    torch.manual_seed(cfg.train.seed)
    encoder = TransformerLM(replace(cfg.model, vocab_size=vocab_size))
    model = nn.ModuleDict({"encoder": encoder, "head": DiscriminatorHead(encoder.cfg.d_model, cfg.objective.mask_rate)})
    if zero_logit_bias:
        nn.init.zeros_(model["head"].out.bias)
    optimizer = build_optimizer(model, cfg.optim, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, cfg.optim, steps)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    rate = cfg.objective.mask_rate
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                hidden = torch.cat([encoder(rows) for rows in valid[0].split(cfg.data.batch_size)])
                logits = model["head"](hidden)
            model.train()
            loss = F.binary_cross_entropy_with_logits(logits, valid[1].float()).item()
            print(f"discriminator alone, step {step}: loss {loss:.4f}, "
                  f"AUC {roc_auc(logits.flatten(), valid[1].flatten())[0].item():.3f}, "
                  f"hidden-state spread over tokens {hidden.std(dim=(0, 1)).mean().item():.3f}", flush=True)
        if step == steps:
            break
        rows = train[torch.randint(len(train), (cfg.data.batch_size,), generator=generator)]
        corrupted, replaced = unigram_noise(rows, unigram, rate, generator)
        F.binary_cross_entropy_with_logits(model["head"](encoder(corrupted)), replaced.float()).backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def main() -> None:
    args = parse_args()
    cfg, tokenizer, train, valid = load_recipe(args)
    counts = torch.bincount(train.flatten(), minlength=tokenizer.vocab_size).double()
    counts[sorted(tokenizer.special_ids)] = 0
    unigram = counts / counts.sum()
    corrupted, replaced = unigram_noise(valid, unigram, cfg.objective.mask_rate, torch.Generator().manual_seed(12345))
    auc = bigram_count_auc(train.flatten().numpy(), corrupted.flatten().numpy(), replaced.flatten().numpy(),
                           unigram.numpy(), args.smoothing)
    print(f"{train.numel():,} training tokens, {valid.numel():,} validation tokens, {replaced.float().mean():.1%} "
          f"replaced by unigram samples: bigram-count detector AUC {auc:.3f}", flush=True)
    if args.train_steps:
        train_discriminator(cfg, tokenizer.vocab_size, train, (corrupted, replaced), unigram, args.train_steps,
                            args.eval_every, args.zero_logit_bias)


if __name__ == "__main__":
    main()
