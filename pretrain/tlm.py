"""Masked LM (BERT/RoBERTa) and causal LM (GPT) pretraining.

    python -m pretrain.tlm --config configs/tiny_mlm.yaml [section.key=value ...]
    torchrun --nproc_per_node 8 -m pretrain.tlm --config configs/bert_base_mlm.yaml
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from data_pipeline.readers import Transform
from data_pipeline.tokenizer import Tokenizer
from pretrain.config import OptimConfig, TrainConfig
from pretrain.data import DataConfig
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.objectives.language_modeling import CausalLM, MaskedLM
from pretrain.objectives.masking import MaskingConfig, TokenMasker
from pretrain.run import Recipe, main_for


@dataclass(frozen=True)
class LMObjectiveConfig:
    """mlm: predict masked tokens (BERT recipe); clm: predict the next token (labels shifted by one)."""

    name: Literal["mlm", "clm"] = "mlm"
    mask_rate: float = 0.15
    replace_with_mask: float = 0.8
    replace_with_random: float = 0.1
    whole_word: bool = False
    mask_rate_final: float = 0.0        # > 0: the rate decays linearly from mask_rate to this ...
    mask_rate_decay_samples: int = 0    # ... over this many samples (steps x data.batch_size x ranks)
    span_length: float = 0.0            # > 0: mask spans of this mean length (SpanBERT: 3.8)

    def masking(self) -> MaskingConfig:
        return MaskingConfig(self.mask_rate, self.replace_with_mask, self.replace_with_random, self.whole_word,
                             self.mask_rate_final, self.mask_rate_decay_samples, self.span_length)


@dataclass(frozen=True)
class TLMConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: TransformerConfig = field(default_factory=TransformerConfig)
    objective: LMObjectiveConfig = field(default_factory=LMObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_objective(cfg: TLMConfig, tokenizer: Tokenizer) -> tuple[nn.Module, Transform | None]:
    model = TransformerLM(cfg.model)
    if cfg.objective.name == "clm":
        return CausalLM(model, pad_id=tokenizer.pad_id, sep_id=tokenizer.sep_id), None
    masking = cfg.objective.masking()
    masker = TokenMasker(masking, seed=cfg.train.seed, vocab_size=tokenizer.vocab_size,
                         mask_id=tokenizer.mask_id, special_ids=tokenizer.special_ids,
                         word_starts=tokenizer.word_starts if masking.whole_word else None)
    return MaskedLM(model, mask_rate=masking.mask_rate, sep_id=tokenizer.sep_id), masker


RECIPE = Recipe(prog="python -m pretrain.tlm", description=__doc__, schema=TLMConfig,
                paired=lambda cfg: False, build_objective=build_objective)
main = main_for(RECIPE)

if __name__ == "__main__":
    sys.exit(main())
