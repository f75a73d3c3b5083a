"""BERT-style token masking, seeded per (seed, epoch, sample) so a resumed run masks exactly as an
uninterrupted one would, whatever the world size, worker count or restart point.

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


@dataclass(frozen=True)
class MaskingConfig:
    """Rates of the masking recipe (BERT's defaults)."""

    mask_rate: float = 0.15  # fraction of the non-special tokens chosen as targets
    replace_with_mask: float = 0.8  # of the targets: replaced by [MASK]
    replace_with_random: float = 0.1  # of the targets: replaced by a random non-special token
    whole_word: bool = False  # choose whole words (all their pieces), not single pieces

    def validate(self) -> None:
        if not 0.0 < self.mask_rate < 1.0:
            raise UserError(f"objective.mask_rate={self.mask_rate} must be in (0, 1); BERT uses 0.15")
        if self.replace_with_mask < 0 or self.replace_with_random < 0 or \
                self.replace_with_mask + self.replace_with_random > 1.0:
            raise UserError("objective.replace_with_mask + objective.replace_with_random must be in [0, 1] "
                            "(the rest of the targets keep their token); BERT uses 0.8 and 0.1")


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

    def choose_targets(self, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Sorted positions to predict: mask_rate of the non-special tokens, at least one if any."""
        candidates = np.flatnonzero(~self.is_special[tokens])
        if candidates.size == 0:
            return candidates
        budget = max(1, int(round(self.cfg.mask_rate * candidates.size)))
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

    def mask_sample(self, tokens: np.ndarray, epoch: int, sample_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (corrupted tokens, target positions) for one sample."""
        rng = self.sample_rng(epoch, sample_id)
        targets = self.choose_targets(tokens, rng)
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
        inputs = np.empty_like(tokens)
        flat_index = []
        for row, (sample, epoch, sample_id) in enumerate(
                zip(tokens, batch["epoch"].tolist(), batch["sample_ids"].tolist())):
            inputs[row], positions = self.mask_sample(sample, epoch, sample_id)
            flat_index.append(positions + row * seq_len)
        target_index = np.concatenate(flat_index) if flat_index else np.empty(0, dtype=np.int64)
        batch = dict(batch)
        batch["inputs"] = torch.from_numpy(inputs)
        batch["target_index"] = torch.from_numpy(target_index.astype(np.int64))
        batch["targets"] = torch.from_numpy(tokens.reshape(-1)[target_index].astype(np.int64))
        return batch
