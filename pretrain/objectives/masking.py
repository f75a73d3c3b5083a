"""BERT-style token masking, seeded per (seed, epoch, sample) so a resumed run masks exactly as an
uninterrupted one would, whatever the world size, worker count or restart point.

Targets are single tokens, whole words, or spans (SpanBERT: lengths drawn from a geometric distribution).
The rate may decay over training (e.g. 30% -> 15%): it is a function of the reader's global cursor (the
samples consumed by every rank together), which depends neither on the world size nor on restarts.

It runs inside the DataLoader workers (as the reader's `transform`), so the training step only sees the
result: masked inputs, the flat indices of the target positions and their original tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from data_pipeline.errors import UserError

IGNORE_INDEX = -100
MAX_SPAN = 10  # SpanBERT's clip on span lengths


@dataclass(frozen=True)
class MaskingConfig:
    """Rates of the masking recipe (BERT's defaults)."""

    mask_rate: float = 0.15  # fraction of the non-special tokens chosen as targets
    replace_with_mask: float = 0.8  # of the targets: replaced by [MASK]
    replace_with_random: float = 0.1  # of the targets: replaced by a random non-special token
    whole_word: bool = False  # choose whole words (all their pieces), not single pieces
    mask_rate_final: float = 0.0  # > 0: mask_rate decays linearly to this rate ...
    mask_rate_decay_samples: int = 0  # ... over this many samples (steps x data.batch_size x ranks)
    span_length: float = 0.0  # > 0: mask spans of mean length this (geometric, at most MAX_SPAN tokens)

    def validate(self) -> None:
        if not 0.0 < self.mask_rate < 1.0:
            raise UserError(f"objective.mask_rate={self.mask_rate} must be in (0, 1); BERT uses 0.15")
        if self.replace_with_mask < 0 or self.replace_with_random < 0 or \
                self.replace_with_mask + self.replace_with_random > 1.0:
            raise UserError("objective.replace_with_mask + objective.replace_with_random must be in [0, 1] "
                            "(the rest of the targets keep their token); BERT uses 0.8 and 0.1")
        if self.mask_rate_final and not (0.0 < self.mask_rate_final < 1.0 and self.mask_rate_decay_samples > 0):
            raise UserError(f"objective.mask_rate_final={self.mask_rate_final} must be in (0, 1) with "
                            f"objective.mask_rate_decay_samples > 0 (got {self.mask_rate_decay_samples}); "
                            "0 keeps the rate constant")
        if self.span_length and not 1.0 <= self.span_length <= MAX_SPAN:
            raise UserError(f"objective.span_length={self.span_length} must be in [1, {MAX_SPAN}] (SpanBERT's mean "
                            "is 3.8); 0 masks single tokens")
        if self.span_length and self.whole_word:
            raise UserError("objective.span_length and objective.whole_word are two ways to choose targets: "
                            "set one of them")

    def rate_at(self, cursor: int) -> float:
        """The mask rate of the global batch that ends at sample position `cursor`."""
        if not self.mask_rate_final:
            return self.mask_rate
        progress = min(1.0, cursor / self.mask_rate_decay_samples)
        return self.mask_rate + (self.mask_rate_final - self.mask_rate) * progress


class TokenMasker:
    """Chooses and corrupts target positions for one batch of token blocks.

    Picklable (plain arrays and numbers) so DataLoader workers can run it.
    """

    def __init__(self, cfg: MaskingConfig, *, seed: int, vocab_size: int, mask_id: int,
                 special_ids: frozenset[int],
                 word_starts: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        cfg.validate()
        if cfg.whole_word and word_starts is None:
            raise UserError("whole-word masking needs a tokenizer that marks word starts")
        self.cfg = cfg
        self.seed = seed
        self.mask_id = mask_id
        self.is_special = np.zeros(vocab_size, dtype=bool)
        self.is_special[sorted(special_ids)] = True
        self.replacement_ids = np.flatnonzero(~self.is_special)
        self.word_starts = word_starts if cfg.whole_word else None

    def sample_rng(self, epoch: int, sample_id: int) -> np.random.Generator:
        """The generator for one sample: a pure function of (seed, epoch, sample)."""
        return np.random.default_rng([self.seed, epoch, sample_id])

    def choose_targets(self, tokens: np.ndarray, rng: np.random.Generator, rate: float) -> np.ndarray:
        """Sorted positions to predict: `rate` of the non-special tokens, at least one if any."""
        candidates = np.flatnonzero(~self.is_special[tokens])
        if candidates.size == 0:
            return candidates
        budget = max(1, int(round(rate * candidates.size)))
        if self.cfg.span_length:
            return candidates[self.choose_spans(candidates.size, budget, rng)]
        if self.word_starts is None:
            return np.sort(rng.choice(candidates, size=budget, replace=False))
        # Whole words: a word is a run of candidates that starts at a word start; take words in a random
        # order until the budget is met (the last word may overshoot by its length, as in BERT's recipe).
        starts = self.word_starts(tokens)[candidates]
        starts[0] = True
        word_of = np.cumsum(starts) - 1
        chosen_words = []
        taken = 0
        sizes = np.bincount(word_of)
        for word in rng.permutation(sizes.size):
            chosen_words.append(word)
            taken += sizes[word]
            if taken >= budget:
                break
        return candidates[np.isin(word_of, chosen_words)]

    def choose_spans(self, size: int, budget: int, rng: np.random.Generator) -> np.ndarray:
        """Sorted indices into `size` candidates: spans of geometric length (mean span_length, clipped to
        MAX_SPAN) at random starts, until `budget` are chosen (the last span is cut to fit)."""
        chosen = np.zeros(size, dtype=bool)
        taken = 0
        while taken < budget:
            length = min(int(rng.geometric(1.0 / self.cfg.span_length)), MAX_SPAN, budget - taken)
            start = int(rng.integers(size))
            span = chosen[start:start + length]
            taken += int((~span).sum())
            span[:] = True
        return np.flatnonzero(chosen)

    def mask_sample(self, tokens: np.ndarray, epoch: int, sample_id: int,
                    rate: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns (corrupted tokens, target positions) for one sample, `rate` of it masked (default: the
        configured initial rate)."""
        rng = self.sample_rng(epoch, sample_id)
        targets = self.choose_targets(tokens, rng, self.cfg.mask_rate if rate is None else rate)
        corrupted = tokens.copy()
        roll = rng.random(targets.size)
        to_mask = roll < self.cfg.replace_with_mask
        to_random = (roll >= self.cfg.replace_with_mask) & \
            (roll < self.cfg.replace_with_mask + self.cfg.replace_with_random)
        corrupted[targets[to_mask]] = self.mask_id
        corrupted[targets[to_random]] = rng.choice(self.replacement_ids, size=int(to_random.sum()))
        return corrupted, targets

    def __call__(self, batch: dict) -> dict:
        """Reader transform: adds `inputs`, `target_index` (flat into [B*T]) and `targets`."""
        tokens = batch["tokens"].numpy()
        seq_len = tokens.shape[1]
        rate = self.cfg.rate_at(int(batch["cursor"]))
        inputs = np.empty_like(tokens)
        flat_index = []
        for row, (sample, epoch, sample_id) in enumerate(
                zip(tokens, batch["epoch"].tolist(), batch["sample_ids"].tolist())):
            inputs[row], positions = self.mask_sample(sample, epoch, sample_id, rate)
            flat_index.append(positions + row * seq_len)
        target_index = np.concatenate(flat_index) if flat_index else np.empty(0, dtype=np.int64)
        batch = dict(batch)
        batch["inputs"] = torch.from_numpy(inputs)
        batch["target_index"] = torch.from_numpy(target_index.astype(np.int64))
        batch["targets"] = torch.from_numpy(tokens.reshape(-1)[target_index].astype(np.int64))
        return batch
